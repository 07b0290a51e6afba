// predictive family (twin of shaders/predictive.wgsl; every kernel takes the WGSL binding slots
// mean, cov, eps, out, scratch, unused ones included): the contraction of the gemm products
// T_a = Φ Σ[aD.., :] with φ_n into Σ_f[n, a, b] = φ_nᵀ Σ_ab φ_n, and the links from logit mean
// and covariance to probabilities, one thread per input row over its K classes.
// Covariance layouts: 0 = n × K² full, 1 = n × 1 isotropic, 2 = n × K diagonal.

// flags (PredictiveFlag in src/device/registry.rs): the first Monte Carlo launch factors Σ_f
// and clears the sums, the last divides by the samples.
#define PRED_FIRST_LAUNCH 1u
#define PRED_LAST_LAUNCH 2u

struct PredParams {
    double lambda;
    u32 n, k, d, cov_layout;
    u32 samples, in_off, out_off, flags;
    u32 first, last;
};

template <typename T>
__device__ __forceinline__ T sigma_at(const PredParams& p, const T* cov, u32 i, u32 a, u32 b) {
    if (p.cov_layout == 0) return cov[(i * p.k + a) * p.k + b];
    if (a != b) return T(0);
    return p.cov_layout == 1 ? cov[i] : cov[i * p.k + a];
}

template <typename T>
__device__ void softmax_at(T* row, u32 k) {
    T m = row[0];
    for (u32 c = 1; c < k; c++) m = max(m, row[c]);
    T total = 0;
    for (u32 c = 0; c < k; c++) {
        row[c] = exp(row[c] - m);
        total += row[c];
    }
    for (u32 c = 0; c < k; c++) row[c] /= total;
}

template <typename T>
__device__ void row_dot_body(const PredParams& p, const T* t, const T* phi, T* out) {
    const u32 idx = linear_index(), per = p.k * p.k;
    if (idx >= p.n * per) return;
    const u32 i = idx / per, a = (idx % per) / p.k, b = idx % p.k, width = p.k * p.d;
    const T* tr = t + (u64)(a * p.n + i) * width + b * p.d;
    const T* x = phi + p.in_off + i * p.d;
    T acc = 0;
    for (u32 c = 0; c < p.d; c++) acc += tr[c] * x[c];
    out[p.out_off + idx] = acc;
}

template <typename T>
__device__ void softmax_rows_body(const PredParams& p, T* logits) {
    const u32 i = linear_index();
    if (i < p.n && p.k > 0) softmax_at(logits + i * p.k, p.k);
}

template <typename T>
__device__ void probit_body(const PredParams& p, const T* mean, const T* cov, T* out) {
    const u32 i = linear_index();
    if (i >= p.n) return;
    for (u32 a = 0; a < p.k; a++) {
        const T v = max(sigma_at(p, cov, i, a, a), T(0));
        out[i * p.k + a] = mean[i * p.k + a] / sqrt(T(1) + (T)p.lambda * v);
    }
    softmax_at(out + i * p.k, p.k);
}

// Samples first..last of p_i = (1/S) Σ_s softmax(f_i + L_i ε_s); flag 1 (first launch)
// factors Σ_f[i] (pivots at rounding level count as zero) and clears the sums, flag 2 (last)
// divides by S. scratch per row: L (K²), z (K), the launch's partial sum (K).
template <typename T>
__device__ void monte_carlo_body(const PredParams& p, const T* mean, const T* cov, const T* eps, T* out, T* scratch) {
    const u32 i = linear_index();
    if (i >= p.n) return;
    const u32 k = p.k;
    T* l = scratch + (u64)i * (k * k + 2 * k);
    T* z = l + k * k;
    T* part = z + k;
    T* o = out + i * k;
    if (p.flags & PRED_FIRST_LAUNCH) {
        T dmax = 0;
        for (u32 a = 0; a < k; a++) dmax = max(dmax, sigma_at(p, cov, i, a, a));
        const T eps_t = sizeof(T) == 4 ? T(1.1920929e-7) : T(2.220446049250313e-16);
        // The zero-pivot rule of src/numerics.rs: PIVOT_ULPS · ε · K · max variance.
        const T floor_v = T(64) * eps_t * dmax * T(k);
        for (u32 j = 0; j < k; j++) {
            T dj = sigma_at(p, cov, i, j, j);
            for (u32 q = 0; q < j; q++) dj -= l[j * k + q] * l[j * k + q];
            const T root = dj > floor_v ? sqrt(dj) : T(0);
            l[j * k + j] = root;
            for (u32 r = j + 1; r < k; r++) {
                T s = sigma_at(p, cov, i, r, j);
                for (u32 q = 0; q < j; q++) s -= l[r * k + q] * l[j * k + q];
                l[r * k + j] = root > T(0) ? s / root : T(0);
            }
            for (u32 r = 0; r < j; r++) l[r * k + j] = 0;
        }
        for (u32 a = 0; a < k; a++) o[a] = 0;
    }
    for (u32 a = 0; a < k; a++) part[a] = 0;
    for (u32 s = p.first; s < p.last; s++) {
        for (u32 a = 0; a < k; a++) {
            T v = mean[i * k + a];
            for (u32 b = 0; b <= a; b++) v += l[a * k + b] * eps[(u64)s * k + b];
            z[a] = v;
        }
        softmax_at(z, k);
        for (u32 a = 0; a < k; a++) part[a] += z[a];
    }
    for (u32 a = 0; a < k; a++) {
        o[a] += part[a];
        if (p.flags & PRED_LAST_LAUNCH) o[a] /= T(p.samples);
    }
}

// The normalised Laplace bridge (Device::bridge_dirichlet); scratch per row: μ (K), d (K).
template <typename T>
__device__ void bridge_body(const PredParams& p, const T* mean, const T* cov, T* out, T* scratch) {
    const u32 i = linear_index();
    if (i >= p.n) return;
    const u32 k = p.k;
    const T kf = T(k);
    T* mu = scratch + (u64)i * 2 * k;
    T* dg = mu + k;
    T* o = out + i * k;
    T total = 0, f_sum = 0;
    for (u32 a = 0; a < k; a++) {
        T row = 0;
        for (u32 b = 0; b < k; b++) row += sigma_at(p, cov, i, a, b);
        dg[a] = row;
        total += row;
        f_sum += mean[i * k + a];
    }
    T mean_diag = 0;
    bool degenerate = false;
    for (u32 a = 0; a < k; a++) {
        const T row = dg[a];
        T m = mean[i * k + a], d = sigma_at(p, cov, i, a, a);
        if (total > T(0)) {
            m -= row * f_sum / total;
            d -= row * row / total;
        }
        mu[a] = m;
        dg[a] = d;
        mean_diag += d;
        if (!(d > T(0))) degenerate = true;
    }
    mean_diag = mean_diag / kf / sqrt(kf / T(2));
    if (degenerate || !(mean_diag > T(0))) {
        for (u32 a = 0; a < k; a++) o[a] = mean[i * k + a];
        softmax_at(o, k);
        return;
    }
    T max_neg = T(-__int_as_float(0x7f800000));  // −∞
    for (u32 a = 0; a < k; a++) {
        mu[a] /= sqrt(mean_diag);
        dg[a] /= mean_diag;
        max_neg = max(max_neg, -mu[a]);
    }
    T sum_neg = 0;
    for (u32 a = 0; a < k; a++) sum_neg += exp(-mu[a] - max_neg);
    const T lse_neg = max_neg + log(sum_neg);
    const T base = T(1) - T(2) / kf;
    for (u32 a = 0; a < k; a++) {
        const T t = mu[a] + lse_neg - T(2) * log(kf);
        T log_num = t;
        if (base > T(0)) {
            const T lb = log(base);
            log_num = max(t, lb) + log1p(exp(-fabs(t - lb)));
        }
        o[a] = log_num - log(dg[a]);
    }
    softmax_at(o, k);
}

template <typename T>
__device__ void categorical_weights_body(const PredParams& p, const T* probs, T* out) {
    const u32 i = linear_index();
    if (i >= p.n) return;
    T pmax = 0;
    for (u32 a = 0; a < p.k; a++) pmax = max(pmax, probs[i * p.k + a]);
    out[i] = pmax * (T(1) - pmax);
}

#define ROW_DOT(T) (PARAMS w, const T* t, const T* phi, const T* unused, T* out, T* no_scratch) { row_dot_body<T>(params<PredParams>(w), t, phi, out); }
#define SOFTMAX_ROWS(T) (PARAMS w, const T* u0, const T* u1, const T* u2, T* logits, T* no_scratch) { softmax_rows_body<T>(params<PredParams>(w), logits); }
#define PROBIT(T) (PARAMS w, const T* mean, const T* cov, const T* unused, T* out, T* no_scratch) { probit_body<T>(params<PredParams>(w), mean, cov, out); }
#define MONTE_CARLO(T) (PARAMS w, const T* mean, const T* cov, const T* eps, T* out, T* scratch) { monte_carlo_body<T>(params<PredParams>(w), mean, cov, eps, out, scratch); }
#define BRIDGE(T) (PARAMS w, const T* mean, const T* cov, const T* unused, T* out, T* scratch) { bridge_body<T>(params<PredParams>(w), mean, cov, out, scratch); }
#define CATEGORICAL_WEIGHTS(T) (PARAMS w, const T* probs, const T* u1, const T* u2, T* out, T* no_scratch) { categorical_weights_body<T>(params<PredParams>(w), probs, out); }
ENTRY_F32_F64(row_dot, 256, ROW_DOT)
ENTRY_F32_F64(softmax_rows, 256, SOFTMAX_ROWS)
ENTRY_F32_F64(probit, 256, PROBIT)
ENTRY_F32_F64(monte_carlo, 256, MONTE_CARLO)
ENTRY_F32_F64(bridge, 256, BRIDGE)
ENTRY_F32_F64(categorical_weights, 256, CATEGORICAL_WEIGHTS)
