// gemm family: C ← β·C + α·op(A)·diag(w)·op(B), strided and batched — the CUDA twin of
// shaders/gemm.wgsl, and the one kernel behind gemm, weighted SYRK, the Full-GGN blocks, the
// Cholesky trailing update and the predictive products.
//
// Tiles: a 256-thread block computes a 64 × 64 tile of C; thread (tx, ty) holds a 4 × 4
// register block (rows ty + 16r, columns tx + 16q) and the block walks the contraction in
// 16-deep slices staged in shared memory (2 × 16 × 64 elements: 8 KiB in f32, 16 KiB in f64).
// Where an operand is contiguous along its loaded dimension and 4-aligned, each thread loads
// its 4 elements with one vector load (float4, or two double2).
//
// flags (GemmFlag in src/device/registry.rs): GEMM_LOWER: skip tiles strictly above the
// diagonal; GEMM_WEIGHTED; GEMM_OVERWRITE (C not read); GEMM_LOWER_BLOCKS: skip batch entries
// with inner > outer; GEMM_LOWER_DIAGONAL_TILES: lower tiles on the diagonal blocks
// (inner == outer) only — the GGN's symmetry: k ≤ l blocks, upper triangles skipped inside
// the diagonal ones.
#define GEMM_LOWER 1u
#define GEMM_WEIGHTED 2u
#define GEMM_OVERWRITE 4u
#define GEMM_LOWER_BLOCKS 8u
#define GEMM_LOWER_DIAGONAL_TILES 16u

struct GemmParams {
    double alpha, beta;
    u32 m, n, k, flags;
    u32 a_off, a_rs, a_cs, b_off;
    u32 b_rs, b_cs, c_off, c_rs;
    u32 w_off, w_s, inner, a_bo;
    u32 a_bi, b_bo, b_bi, c_bo;
    u32 c_bi, w_bo, w_bi, x0;
    u32 y0, z0;
};

#define TILE 64
#define DEPTH 16

template <typename T>
__device__ __forceinline__ void load4(const T* src, u32 idx, u32 stride, bool vector, T out[4]) {
    if (vector) {
        if (sizeof(T) == 4) {
            float4 v = *reinterpret_cast<const float4*>(src + idx);
            out[0] = (T)v.x; out[1] = (T)v.y; out[2] = (T)v.z; out[3] = (T)v.w;
        } else {
            double2 v0 = *reinterpret_cast<const double2*>(src + idx);
            double2 v1 = *reinterpret_cast<const double2*>(src + idx + 2);
            out[0] = (T)v0.x; out[1] = (T)v0.y; out[2] = (T)v1.x; out[3] = (T)v1.y;
        }
    } else {
        for (int t = 0; t < 4; t++) out[t] = src[idx + t * stride];
    }
}

template <typename T>
__device__ void gemm_tile(const GemmParams& p, const T* __restrict__ a, const T* __restrict__ b,
                          const T* __restrict__ w, T* __restrict__ c) {
    __shared__ T a_tile[DEPTH][TILE];
    __shared__ T b_tile[DEPTH][TILE];
    // A grid too large for one launch is split; (x0, y0, z0) is this launch's first tile and
    // batch entry.
    const u32 entry = blockIdx.z + p.z0;
    const u32 outer = entry / p.inner, inner = entry % p.inner;
    if ((p.flags & GEMM_LOWER_BLOCKS) && inner > outer) return;
    const u32 row0 = (blockIdx.y + p.y0) * TILE, col0 = (blockIdx.x + p.x0) * TILE;
    const bool lower = (p.flags & GEMM_LOWER) || ((p.flags & GEMM_LOWER_DIAGONAL_TILES) && inner == outer);
    if (lower && col0 > row0 + TILE - 1) return;
    const u32 a_base = p.a_off + outer * p.a_bo + inner * p.a_bi;
    const u32 b_base = p.b_off + outer * p.b_bo + inner * p.b_bi;
    const u32 c_base = p.c_off + outer * p.c_bo + inner * p.c_bi;
    const u32 w_base = p.w_off + outer * p.w_bo + inner * p.w_bi;
    const bool weighted = p.flags & GEMM_WEIGHTED;
    const u32 tx = threadIdx.x, ty = threadIdx.y, li = ty * 16 + tx;
    // Each thread stages 4 elements of each tile: along k when A is k-contiguous (row li/4,
    // k 4(li%4)..), else along i (k li/16, rows 4(li%16)..); the same for B along j or k.
    const bool a_along_k = p.a_cs == 1, b_along_j = p.b_cs == 1;
    T acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) acc[r][q] = T(0);
    for (u32 k0 = 0; k0 < p.k; k0 += DEPTH) {
        {
            u32 ii, kk, step;
            if (a_along_k) { ii = li / 4; kk = (li % 4) * 4; step = p.a_cs; }
            else { kk = li / 16; ii = (li % 16) * 4; step = p.a_rs; }
            const u32 gi = row0 + ii, gk = k0 + kk;
            const u32 idx = a_base + gi * p.a_rs + gk * p.a_cs;
            const bool full = a_along_k ? (gi < p.m && gk + 3 < p.k) : (gi + 3 < p.m && gk < p.k);
            const bool vector = full && step == 1 && idx % 4 == 0;
            T v[4];
            if (full) {
                load4(a, idx, step, vector, v);
            } else {
                for (int t = 0; t < 4; t++) {
                    const u32 i = a_along_k ? gi : gi + t, k = a_along_k ? gk + t : gk;
                    v[t] = (i < p.m && k < p.k) ? a[a_base + i * p.a_rs + k * p.a_cs] : T(0);
                }
            }
            for (int t = 0; t < 4; t++) {
                const u32 i = a_along_k ? ii : ii + t, k = a_along_k ? kk + t : kk;
                T x = v[t];
                if (weighted && k0 + k < p.k) x *= w[w_base + (k0 + k) * p.w_s];
                a_tile[k][i] = x;
            }
        }
        {
            u32 jj, kk, step;
            if (b_along_j) { kk = li / 16; jj = (li % 16) * 4; step = p.b_cs; }
            else { jj = li / 4; kk = (li % 4) * 4; step = p.b_rs; }
            const u32 gj = col0 + jj, gk = k0 + kk;
            const u32 idx = b_base + gk * p.b_rs + gj * p.b_cs;
            const bool full = b_along_j ? (gj + 3 < p.n && gk < p.k) : (gj < p.n && gk + 3 < p.k);
            const bool vector = full && step == 1 && idx % 4 == 0;
            T v[4];
            if (full) {
                load4(b, idx, step, vector, v);
            } else {
                for (int t = 0; t < 4; t++) {
                    const u32 j = b_along_j ? gj + t : gj, k = b_along_j ? gk : gk + t;
                    v[t] = (j < p.n && k < p.k) ? b[b_base + k * p.b_rs + j * p.b_cs] : T(0);
                }
            }
            for (int t = 0; t < 4; t++) {
                const u32 j = b_along_j ? jj + t : jj, k = b_along_j ? kk : kk + t;
                b_tile[k][j] = v[t];
            }
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < DEPTH; kk++) {
            T av[4], bv[4];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                av[r] = a_tile[kk][ty + 16 * r];
                bv[r] = b_tile[kk][tx + 16 * r];
            }
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int q = 0; q < 4; q++) acc[r][q] = fma(av[r], bv[q], acc[r][q]);
        }
        __syncthreads();
    }
    const bool overwrite = p.flags & GEMM_OVERWRITE;
    const T alpha = (T)p.alpha, beta = (T)p.beta;
    for (int r = 0; r < 4; r++) {
        const u32 gi = row0 + ty + 16 * r;
        for (int q = 0; q < 4; q++) {
            const u32 gj = col0 + tx + 16 * q;
            if (gi < p.m && gj < p.n) {
                const u32 idx = c_base + gi * p.c_rs + gj;
                T v = alpha * acc[r][q];
                if (!overwrite) v += beta * c[idx];
                c[idx] = v;
            }
        }
    }
}

#define GEMM_BODY(T)                                                                            \
    (PARAMS words, const T* a, const T* b, const T* w, T* c) {                                   \
        gemm_tile<T>(params<GemmParams>(words), a, b, w, c);                                    \
    }
ENTRY_F32_F64(gemm, 256, GEMM_BODY)
