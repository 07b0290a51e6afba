// low_rank family, sequential part: the seed paper's per-sample Sherman–Morrison loop for the
// Shared structure as one persistent cooperative kernel over all m samples — no launch and no
// host round trip per sample (the dense low-rank update Σ ± U C⁻¹ Uᵀ runs on the cholesky and
// gemm kernels). Per sample j, separated by grid-wide barriers:
//   1. u = Σ φ_j and f = W φ_j + b, one warp per row of [Σ; W];
//   2. block 0: s = φ_jᵀ u, p = softmax(f), m_j, 1 + m_j s, γ (t_j − p);
//   3. Σ ← Σ − m_j u uᵀ / (1 + m_j s),  W ← W + γ (t_j − p) uᵀ / (1 + m_j s), grid-strided.
// The barrier is a sense-reversing counter in global memory; the cooperative launch guarantees
// that all blocks are resident. A failing 1 + m_j s ≤ 0 stores j in status[0] and stops.
// state: u (D) | f (K) | γ(t − p) (K) | m/(1 + ms) | 1/(1 + ms) | stop flag.

struct SmParams {
    double gamma;
    u32 d, k, m, flags;
};

#define HAS_BIAS 1u
#define CATEGORICAL 2u

// status: [first failure, barrier count, barrier generation]
__device__ void grid_barrier(u32* status) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile u32* generation = status + 2;
        const u32 gen = *generation;
        __threadfence();
        if (atomicAdd(status + 1, 1u) == gridDim.x - 1) {
            status[1] = 0;
            __threadfence();
            atomicAdd(status + 2, 1u);
        } else {
            while (*generation == gen) {
            }
        }
        __threadfence();
    }
    __syncthreads();
}

template <typename T>
__device__ T block_sum(T v, T* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    T total = 0;
    if (threadIdx.x == 0)
        for (u32 w = 0; w < blockDim.x / 32; w++) total += shared[w];
    __syncthreads();
    return total;
}

template <typename T>
__device__ void sm_sequence_body(const SmParams& p, T* sigma, T* head, const T* bias, const T* phi,
                                 const T* targets, T* state, T* used, u32* status) {
    __shared__ T shared[32];
    const u32 d = p.d, k = p.k;
    const u32 lane = threadIdx.x % 32;
    const u32 warps = gridDim.x * blockDim.x / 32;
    const u32 warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const u32 thread = blockIdx.x * blockDim.x + threadIdx.x, threads = gridDim.x * blockDim.x;
    T* u = state;
    T* f = state + d;
    T* r = state + d + k;
    T* coef = state + d + 2 * k;
    for (u32 j = 0; j < p.m; j++) {
        const T* x = phi + (u64)j * d;
        for (u32 row = warp; row < d + k; row += warps) {
            const T* src = row < d ? sigma + (u64)row * d : head + (u64)(row - d) * d;
            T acc = 0;
            for (u32 c = lane; c < d; c += 32) acc += src[c] * x[c];
            for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
            if (lane == 0) {
                if (row < d) u[row] = acc;
                else f[row - d] = acc + ((p.flags & HAS_BIAS) ? bias[row - d] : T(0));
            }
        }
        grid_barrier(status);
        if (blockIdx.x == 0) {
            T acc = 0;
            for (u32 c = threadIdx.x; c < d; c += blockDim.x) acc += x[c] * u[c];
            const T s = block_sum(acc, shared);
            if (threadIdx.x == 0) {
                T fmax = f[0];
                for (u32 c = 1; c < k; c++) fmax = max(fmax, f[c]);
                T total = 0, pmax = 0;
                for (u32 c = 0; c < k; c++) total += exp(f[c] - fmax);
                for (u32 c = 0; c < k; c++) pmax = max(pmax, exp(f[c] - fmax) / total);
                const T mj = (p.flags & CATEGORICAL) ? pmax * (T(1) - pmax) : T(1);
                const T denom = T(1) + mj * s;
                if (!(denom > T(0)) || isinf(denom)) {
                    atomicMin(status, j);
                    coef[2] = T(1);
                } else {
                    for (u32 c = 0; c < k; c++)
                        r[c] = (T)p.gamma * (targets[(u64)j * k + c] - exp(f[c] - fmax) / total);
                    coef[0] = mj / denom;
                    coef[1] = T(1) / denom;
                    coef[2] = T(0);
                    used[j] = mj;
                }
            }
        }
        grid_barrier(status);
        if (coef[2] != T(0)) return;  // every block reads the same flag after the barrier
        const u64 total = (u64)(d + k) * d;
        for (u64 e = thread; e < total; e += threads) {
            const u32 row = e / d, col = e % d;
            if (row < d) sigma[e] -= coef[0] * (u[row] * u[col]);
            else head[(u64)(row - d) * d + col] += r[row - d] * u[col] * coef[1];
        }
        grid_barrier(status);
    }
}

#define SM_SEQUENCE(T)                                                                          \
    (PARAMS w, T* sigma, T* head, const T* bias, const T* phi, const T* targets, T* state, T* used, \
     u32* status) {                                                                             \
        sm_sequence_body<T>(params<SmParams>(w), sigma, head, bias, phi, targets, state, used, status); \
    }
ENTRY_F32_F64(sm_sequence, 256, SM_SEQUENCE)
