// cholesky family (twin of shaders/cholesky.wgsl): blocked right-looking Cholesky (diagonal
// block in shared memory, panel solve, gemm trailing update on the lower tiles) and the blocked
// triangular solve. NB = 32: the diagonal block fits shared memory in f64 (8 KiB), and each
// thread keeps one 32-element row or column in registers. The first failing pivot (≤ 0 or NaN)
// is recorded in status[0] with atomicMin. Every kernel takes the family's slots (l, a, out,
// status), unused ones included, so both backends launch with one argument list.

#define NB 32

// flags (CholeskyFlag in src/device/registry.rs): trsm_block solves with Lᵀ.
#define CHOL_TRANSPOSED 1u

struct CholParams {
    u32 n, j0, nb, rows;
    u32 cols, flags;
};

template <typename T>
__device__ void potrf_diagonal_body(const CholParams& p, T* a, T* out, u32* status) {
    __shared__ T block[NB][NB + 1];
    const u32 t = threadIdx.x, base = p.j0 * p.n + p.j0;
    if (t < p.nb)
        for (u32 c = 0; c < p.nb; c++) block[t][c] = a[base + t * p.n + c];
    __syncthreads();
    for (u32 j = 0; j < p.nb; j++) {
        const T pivot = block[j][j];
        const T d = sqrt(pivot);
        __syncthreads();
        if (t == j) {
            block[j][j] = d;
            if (!(pivot > T(0))) atomicMin(status, p.j0 + j);
        }
        if (t > j && t < p.nb) block[t][j] = block[t][j] / d;
        __syncthreads();
        if (t > j && t < p.nb) {
            const T ltj = block[t][j];
            for (u32 c = j + 1; c <= t; c++) block[t][c] -= ltj * block[c][j];
        }
        __syncthreads();
    }
    if (t < p.nb) {
        for (u32 c = 0; c < NB; c++) {
            const T v = c <= t ? block[t][c] : T(0);
            if (c < p.nb) a[base + t * p.n + c] = v;
            out[t * NB + c] = v;
        }
    }
}

template <typename T>
__device__ void trsm_panel_body(const CholParams& p, const T* l, T* a, T* out) {
    __shared__ T block[NB][NB + 1];
    for (u32 e = threadIdx.x; e < NB * NB; e += blockDim.x) block[e / NB][e % NB] = l[e];
    __syncthreads();
    const u32 r = linear_index();
    if (r >= p.rows) return;
    const u32 row = (p.j0 + p.nb + r) * p.n + p.j0;
    T x[NB];
    for (u32 c = 0; c < p.nb; c++) {
        T v = a[row + c];
        for (u32 q = 0; q < c; q++) v -= x[q] * block[c][q];
        x[c] = v / block[c][c];
        a[row + c] = x[c];
        out[r * p.nb + c] = x[c];
    }
}

template <typename T>
__device__ void trsm_block_body(const CholParams& p, const T* l, T* b, T* out) {
    __shared__ T block[NB][NB + 1];
    for (u32 e = threadIdx.x; e < NB * NB; e += blockDim.x) {
        const u32 r = e / NB, c = e % NB;
        block[r][c] = (r < p.nb && c < p.nb) ? l[(p.j0 + r) * p.n + p.j0 + c] : T(0);
    }
    __syncthreads();
    const u32 col = linear_index();
    if (col >= p.cols) return;
    T x[NB];
    for (u32 r = 0; r < p.nb; r++) x[r] = b[(p.j0 + r) * p.cols + col];
    if ((p.flags & CHOL_TRANSPOSED) == 0) {
        for (u32 r = 0; r < p.nb; r++) {
            T v = x[r];
            for (u32 q = 0; q < r; q++) v -= block[r][q] * x[q];
            x[r] = v / block[r][r];
        }
    } else {
        for (u32 rr = 0; rr < p.nb; rr++) {
            const u32 r = p.nb - 1 - rr;
            T v = x[r];
            for (u32 q = r + 1; q < p.nb; q++) v -= block[q][r] * x[q];
            x[r] = v / block[r][r];
        }
    }
    for (u32 r = 0; r < p.nb; r++) {
        b[(p.j0 + r) * p.cols + col] = x[r];
        out[r * p.cols + col] = x[r];
    }
}

#define POTRF_DIAGONAL(T) (PARAMS w, const T* unused, T* a, T* out, u32* status) { potrf_diagonal_body<T>(params<CholParams>(w), a, out, status); }
#define TRSM_PANEL(T) (PARAMS w, const T* l, T* a, T* out, u32* no_status) { trsm_panel_body<T>(params<CholParams>(w), l, a, out); }
#define TRSM_BLOCK(T) (PARAMS w, const T* l, T* b, T* out, u32* no_status) { trsm_block_body<T>(params<CholParams>(w), l, b, out); }
ENTRY_F32_F64(potrf_diagonal, 32, POTRF_DIAGONAL)
ENTRY_F32_F64(trsm_panel, 64, TRSM_PANEL)
ENTRY_F32_F64(trsm_block, 64, TRSM_BLOCK)
