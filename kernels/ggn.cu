// ggn family (twin of shaders/ggn.wgsl): the per-sample block weights of the Full-GGN
// accumulation — the accumulation itself is the gemm kernel with these weights over the k ≤ l
// blocks — the Kronecker rows of factored curvatures, and the column mixing that lifts a
// reduced-basis matrix back to all classes.

// flags (GgnFlag in src/device/registry.rs): no basis, R is the identity.
#define GGN_IDENTITY_BASIS 1u

struct GgnParams {
    double complement;
    u32 n, k, kr, d;
    u32 rank, flags, row0;
};

// R[k, a], or the identity when flag 1 (no basis) is set.
template <typename T>
__device__ __forceinline__ T basis_at(const GgnParams& p, const T* r, u32 k, u32 a) {
    if (p.flags & GGN_IDENTITY_BASIS) return k == a ? T(1) : T(0);
    return r[k * p.kr + a];
}

// out[n, a·K' + b] = (Rᵀ Λ_n R)[a, b], Λ_n = diag(p_n) − p_n p_nᵀ, p_n = probs[row0 + n, :].
template <typename T>
__device__ void ggn_weights_body(const GgnParams& p, const T* probs, const T* r, T* out) {
    const u32 i = linear_index(), per = p.kr * p.kr;
    if (i >= p.n * per) return;
    const u32 n = i / per, a = (i % per) / p.kr, b = i % p.kr;
    T diag = 0, ra = 0, rb = 0;
    for (u32 k = 0; k < p.k; k++) {
        const T pk = probs[(p.row0 + n) * p.k + k];
        const T rka = basis_at(p, r, k, a), rkb = basis_at(p, r, k, b);
        diag += rka * pk * rkb;
        ra += rka * pk;
        rb += rkb * pk;
    }
    out[i] = diag - ra * rb;
}

// out[r, a·D + x] = S[r, a] φ[⌊r / rank⌋, x].
template <typename T>
__device__ void kron_rows_body(const GgnParams& p, const T* s, const T* phi, T* out) {
    const u32 i = linear_index(), width = p.k * p.d;
    if (i >= p.n * p.rank * width) return;
    const u32 r = i / width, a = (i % width) / p.d, x = i % p.d;
    out[i] = s[r * p.k + a] * phi[(r / p.rank) * p.d + x];
}

// Y = Z (Rᵀ ⊗ I) + c (I − RRᵀ) ⊗ I for Z (K·D × K'·D) and R (K × K').
template <typename T>
__device__ void kron_mix_columns_body(const GgnParams& p, const T* z, const T* r, T* out) {
    const u32 i = linear_index(), size = p.k * p.d;
    if (i >= size * size) return;
    const u32 row = i / size, k = row / p.d, x = row % p.d, l = (i % size) / p.d, y = i % p.d;
    const u32 zw = p.kr * p.d;
    T acc = 0, rr = 0;
    for (u32 b = 0; b < p.kr; b++) {
        acc += r[l * p.kr + b] * z[row * zw + b * p.d + y];
        rr += r[k * p.kr + b] * r[l * p.kr + b];
    }
    if (x == y) acc += (T)p.complement * ((k == l ? T(1) : T(0)) - rr);
    out[i] = acc;
}

#define GGN_WEIGHTS(T) (PARAMS w, const T* probs, const T* r, T* out) { ggn_weights_body<T>(params<GgnParams>(w), probs, r, out); }
#define KRON_ROWS(T) (PARAMS w, const T* s, const T* phi, T* out) { kron_rows_body<T>(params<GgnParams>(w), s, phi, out); }
#define KRON_MIX_COLUMNS(T) (PARAMS w, const T* z, const T* r, T* out) { kron_mix_columns_body<T>(params<GgnParams>(w), z, r, out); }
ENTRY_F32_F64(ggn_weights, 256, GGN_WEIGHTS)
ENTRY_F32_F64(kron_rows, 256, KRON_ROWS)
ENTRY_F32_F64(kron_mix_columns, 256, KRON_MIX_COLUMNS)
