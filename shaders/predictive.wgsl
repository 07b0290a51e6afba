// predictive family: the logit covariance reduction and the links from logit mean and
// covariance to probabilities. The heavy part of Σ_f[n, a, b] = φ_nᵀ Σ_ab φ_n, the products
// T_a = Φ Σ[aD.., :], runs on the gemm kernel; `row_dot` contracts them with φ_n. The links are
// one invocation per input row over its K classes (K is small), in f32 with the same stable
// forms as the CPU reference.
//
// Covariance layouts (`cov_layout`): 0 = n × K² full, 1 = n × 1 isotropic v I, 2 = n × K diagonal.

// flags (PredictiveFlag in src/device/registry.rs): the first Monte Carlo launch factors Σ_f
// and clears the sums, the last divides by the samples.
const PRED_FIRST_LAUNCH: u32 = 1u;
const PRED_LAST_LAUNCH: u32 = 2u;

struct Params {
    n: u32, k: u32, d: u32, cov_layout: u32,
    samples: u32, in_off: u32, out_off: u32, flags: u32,
    first: u32, last: u32, lambda: f32, _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> mean: array<f32>;
@group(0) @binding(2) var<storage, read> cov: array<f32>;
@group(0) @binding(3) var<storage, read> eps: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<f32>;

const SIZE: u32 = 256u;

fn linear(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * groups.y) * groups.x * SIZE;
}

fn sigma(i: u32, a: u32, b: u32) -> f32 {
    if (p.cov_layout == 0u) {
        return cov[(i * p.k + a) * p.k + b];
    }
    if (a != b) {
        return 0.0;
    }
    if (p.cov_layout == 1u) {
        return cov[i];
    }
    return cov[i * p.k + a];
}

// In-place stable softmax of out[base .. base + K].
fn softmax_at(base: u32) {
    var m = out[base];
    for (var c = 1u; c < p.k; c++) {
        m = max(m, out[base + c]);
    }
    var total = 0.0;
    for (var c = 0u; c < p.k; c++) {
        let e = exp(out[base + c] - m);
        out[base + c] = e;
        total += e;
    }
    for (var c = 0u; c < p.k; c++) {
        out[base + c] /= total;
    }
}

// Whether x > 0 (+Inf included, NaN not), tested on its bits: a driver that assumes no NaN may
// fold a comparison such as `!(x > 0.0)` away, but not integer arithmetic.
fn positive(x: f32) -> bool {
    let bits = bitcast<u32>(x);
    return bits != 0u && bits <= 0x7f800000u;
}

// out[out_off + (i·K + a)·K + b] = Σ_x T[a, i, b·D + x] φ[in_off + i·D + x], T = mean
// (K × n × K·D), Φ = cov.
@compute @workgroup_size(256)
fn row_dot(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = linear(gid, groups);
    let per = p.k * p.k;
    if (idx >= p.n * per) {
        return;
    }
    let i = idx / per;
    let a = (idx % per) / p.k;
    let b = idx % p.k;
    let width = p.k * p.d;
    let t = (a * p.n + i) * width + b * p.d;
    let x = p.in_off + i * p.d;
    var acc = 0.0;
    for (var c = 0u; c < p.d; c++) {
        acc += mean[t + c] * cov[x + c];
    }
    out[p.out_off + idx] = acc;
}

@compute @workgroup_size(256)
fn softmax_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.n && p.k > 0u) {
        softmax_at(i * p.k);
    }
}

// p_ia = softmax_a(f_ia / √(1 + λ Σ_f[i, a, a]))
@compute @workgroup_size(256)
fn probit(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i >= p.n) {
        return;
    }
    for (var a = 0u; a < p.k; a++) {
        out[i * p.k + a] = mean[i * p.k + a] / sqrt(1.0 + p.lambda * max(sigma(i, a, a), 0.0));
    }
    softmax_at(i * p.k);
}

// p_i = (1/S) Σ_s softmax(f_i + L_i ε_s), L_i the Cholesky factor of Σ_f[i] with pivots at
// rounding level counted as zero (semidefinite covariances are fine). One dispatch handles the
// samples first..last: flag 1 (first launch) factors Σ_f and clears the sums, flag 2 (last) divides
// by S. The host splits the samples so that no invocation runs more than about 16,000 loop
// iterations (llvmpipe cuts one invocation's loops short at 65,535). scratch per row: L (K²),
// z (K), the chunk's sum (K).
@compute @workgroup_size(256)
fn monte_carlo(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i >= p.n) {
        return;
    }
    let k = p.k;
    let lb = i * (k * k + 2u * k);
    let zb = lb + k * k;
    let blk = zb + k;
    if ((p.flags & PRED_FIRST_LAUNCH) != 0u) {
        var dmax = 0.0;
        for (var a = 0u; a < k; a++) {
            dmax = max(dmax, sigma(i, a, a));
        }
        // The zero-pivot rule of src/numerics.rs: PIVOT_ULPS · ε · K · max variance.
        let pivot_floor = 64.0 * 1.1920929e-7 * dmax * f32(k);
        for (var j = 0u; j < k; j++) {
            var dj = sigma(i, j, j);
            for (var q = 0u; q < j; q++) {
                dj -= scratch[lb + j * k + q] * scratch[lb + j * k + q];
            }
            var root = 0.0;
            if (dj > pivot_floor) {
                root = sqrt(dj);
            }
            scratch[lb + j * k + j] = root;
            for (var r = j + 1u; r < k; r++) {
                var s = sigma(i, r, j);
                for (var q = 0u; q < j; q++) {
                    s -= scratch[lb + r * k + q] * scratch[lb + j * k + q];
                }
                var v = 0.0;
                if (root > 0.0) {
                    v = s / root;
                }
                scratch[lb + r * k + j] = v;
            }
            for (var r = 0u; r < j; r++) {
                scratch[lb + r * k + j] = 0.0;
            }
        }
        for (var a = 0u; a < k; a++) {
            out[i * k + a] = 0.0;
        }
    }
    for (var a = 0u; a < k; a++) {
        scratch[blk + a] = 0.0;
    }
    for (var s = p.first; s < p.last; s++) {
        var zmax = -3.4028235e38;
        for (var a = 0u; a < k; a++) {
            var z = mean[i * k + a];
            for (var b = 0u; b <= a; b++) {
                z += scratch[lb + a * k + b] * eps[s * k + b];
            }
            scratch[zb + a] = z;
            zmax = max(zmax, z);
        }
        var total = 0.0;
        for (var a = 0u; a < k; a++) {
            let e = exp(scratch[zb + a] - zmax);
            scratch[zb + a] = e;
            total += e;
        }
        for (var a = 0u; a < k; a++) {
            scratch[blk + a] += scratch[zb + a] / total;
        }
    }
    for (var a = 0u; a < k; a++) {
        out[i * k + a] += scratch[blk + a];
        if ((p.flags & PRED_LAST_LAUNCH) != 0u) {
            out[i * k + a] /= f32(p.samples);
        }
    }
}

// The normalised Laplace bridge (Device::bridge_dirichlet), returning the Dirichlet mean; the
// Dirichlet parameters are handled in log space. scratch: corrected mean μ (K), variances d (K).
@compute @workgroup_size(256)
fn bridge(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i >= p.n) {
        return;
    }
    let k = p.k;
    let kf = f32(k);
    let mu = i * 2u * k;
    let dg = mu + k;
    var total = 0.0;
    var f_sum = 0.0;
    for (var a = 0u; a < k; a++) {
        var row = 0.0;
        for (var b = 0u; b < k; b++) {
            row += sigma(i, a, b);
        }
        scratch[dg + a] = row;
        total += row;
        f_sum += mean[i * k + a];
    }
    var mean_diag = 0.0;
    var degenerate = false;
    for (var a = 0u; a < k; a++) {
        let row = scratch[dg + a];
        var m = mean[i * k + a];
        var d = sigma(i, a, a);
        if (total > 0.0) {
            m -= row * f_sum / total;
            d -= row * row / total;
        }
        scratch[mu + a] = m;
        scratch[dg + a] = d;
        mean_diag += d;
        if (!positive(d)) {
            degenerate = true;
        }
    }
    mean_diag = mean_diag / kf / sqrt(kf / 2.0);
    if (degenerate || !positive(mean_diag)) {
        for (var a = 0u; a < k; a++) {
            out[i * k + a] = mean[i * k + a];
        }
        softmax_at(i * k);
        return;
    }
    var max_neg = -3.4028235e38;
    for (var a = 0u; a < k; a++) {
        scratch[mu + a] /= sqrt(mean_diag);
        scratch[dg + a] /= mean_diag;
        max_neg = max(max_neg, -scratch[mu + a]);
    }
    var sum_neg = 0.0;
    for (var a = 0u; a < k; a++) {
        sum_neg += exp(-scratch[mu + a] - max_neg);
    }
    let lse_neg = max_neg + log(sum_neg);
    let base = 1.0 - 2.0 / kf;
    for (var a = 0u; a < k; a++) {
        let t = scratch[mu + a] + lse_neg - 2.0 * log(kf);
        var log_num = t;
        if (base > 0.0) {
            let lb = log(base);
            log_num = max(t, lb) + log(1.0 + exp(-abs(t - lb)));
        }
        out[i * k + a] = log_num - log(scratch[dg + a]);
    }
    softmax_at(i * k);
}

// out[i] = p_max (1 − p_max) over row i of the probabilities `mean`.
@compute @workgroup_size(256)
fn categorical_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i >= p.n) {
        return;
    }
    var pmax = 0.0;
    for (var a = 0u; a < p.k; a++) {
        pmax = max(pmax, mean[i * p.k + a]);
    }
    out[i] = pmax * (1.0 - pmax);
}
