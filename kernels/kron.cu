// kron family (twin of shaders/kron.wgsl): the per-sample factors S_j = diag(√p_j) − p_j √p_jᵀ
// of the Full-GGN low-rank factor B, applied between the two gemm products T = Σ (I ⊗ Φᵀ) and
// Y_a = Φ U_a, so that U = Σ B and G = Bᵀ Σ B are formed without B.

struct KronParams {
    u32 m, k, d, rows;
};

template <typename T>
__device__ void kron_factors_body(const KronParams& p, const T* probs, T* s) {
    const u32 i = linear_index(), per = p.k * p.k;
    if (i >= p.m * per) return;
    const u32 j = i / per, a = (i % per) / p.k, c = i % p.k;
    const T pa = probs[j * p.k + a];
    s[i] = (a == c ? sqrt(pa) : T(0)) - pa * sqrt(probs[j * p.k + c]);
}

// U[r, (j, c)] = Σ_a T[(r, a), j] S_j[a, c].
template <typename T>
__device__ void kron_mix_u_body(const KronParams& p, const T* t, const T* s, T* u) {
    const u32 i = linear_index(), width = p.m * p.k;
    if (i >= p.rows * width) return;
    const u32 r = i / width, j = (i % width) / p.k, c = i % p.k;
    T acc = 0;
    for (u32 a = 0; a < p.k; a++) acc += t[(r * p.k + a) * p.m + j] * s[(j * p.k + a) * p.k + c];
    u[i] = acc;
}

// G[(j, c), col] = Σ_a S_j[a, c] Y_a[j, col].
template <typename T>
__device__ void kron_mix_g_body(const KronParams& p, const T* y, const T* s, T* g) {
    const u32 i = linear_index(), width = p.m * p.k;
    if (i >= width * width) return;
    const u32 row = i / width, col = i % width, j = row / p.k, c = row % p.k;
    T acc = 0;
    for (u32 a = 0; a < p.k; a++) acc += s[(j * p.k + a) * p.k + c] * y[(a * p.m + j) * width + col];
    g[i] = acc;
}

#define KRON_FACTORS(T) (PARAMS w, const T* probs, const T* unused, T* s) { kron_factors_body<T>(params<KronParams>(w), probs, s); }
#define KRON_MIX_U(T) (PARAMS w, const T* t, const T* s, T* u) { kron_mix_u_body<T>(params<KronParams>(w), t, s, u); }
#define KRON_MIX_G(T) (PARAMS w, const T* y, const T* s, T* g) { kron_mix_g_body<T>(params<KronParams>(w), y, s, g); }
ENTRY_F32_F64(kron_factors, 256, KRON_FACTORS)
ENTRY_F32_F64(kron_mix_u, 256, KRON_MIX_U)
ENTRY_F32_F64(kron_mix_g, 256, KRON_MIX_G)
