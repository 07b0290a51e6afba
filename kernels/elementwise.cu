// elementwise family (twin of shaders/elementwise.wgsl): memory-bound, one thread per element,
// 256 per block, the grid folded into (x, y). Every kernel takes the slots (x, y[, result]) of
// the WGSL bindings, unused ones included, so both backends launch with one argument list.

// flags (ElementwiseFlag in src/device/registry.rs): scale_rows and scale_columns scale by √x;
// feature_rows appends a column of ones.
#define ELEM_SQRT 1u
#define ELEM_APPEND_ONES 1u

struct ElemParams {
    double alpha;
    u32 len, rows, cols, flags, start;
};

#define ELEM_INDEX                                                                              \
    const ElemParams& p = params<ElemParams>(w);                                                \
    const u32 i = linear_index();                                                               \
    if (i >= p.len) return;

template <typename T>
__device__ __forceinline__ T factor(const ElemParams& p, T v) {
    return (p.flags & ELEM_SQRT) ? sqrt(v) : v;
}

#define AXPY(T) (PARAMS w, const T* x, T* y, T* no_result) { ELEM_INDEX y[i] += (T)p.alpha * x[i]; }
#define HADAMARD(T) (PARAMS w, const T* x, T* y, T* no_result) { ELEM_INDEX y[i] *= x[i]; }
#define ADD_ROW(T) (PARAMS w, const T* x, T* y, T* no_result) { ELEM_INDEX y[i] += x[i % p.cols]; }
#define SCALE_ROWS(T) (PARAMS w, const T* x, T* y, T* no_result) { ELEM_INDEX y[i] *= factor(p, x[i / p.cols]); }
#define SCALE_COLUMNS(T) (PARAMS w, const T* x, T* y, T* no_result) { ELEM_INDEX y[i] *= factor(p, x[i % p.cols]); }
#define ADD_DIAGONAL(T) (PARAMS w, const T* x, T* y, T* no_result) { ELEM_INDEX y[(u64)i * p.cols + i] += (T)p.alpha; }
#define MIRROR_LOWER(T)                                                                         \
    (PARAMS w, const T* x, T* y, T* no_result) {                                                               \
        ELEM_INDEX const u32 r = i / p.cols, c = i % p.cols;                                    \
        if (c > r) y[i] = y[(u64)c * p.cols + r];                                               \
    }
#define ZERO_UPPER(T) (PARAMS w, const T* x, T* y, T* no_result) { ELEM_INDEX if (i % p.cols > i / p.cols) y[i] = T(0); }
#define SYMMETRIZE(T)                                                                           \
    (PARAMS w, const T* x, T* y, T* no_result) {                                                                           \
        ELEM_INDEX const u32 r = i / p.cols, c = i % p.cols;                                    \
        if (c > r) {                                                                            \
            const u64 j = (u64)c * p.cols + r;                                                  \
            const T v = T(0.5) * (y[i] + y[j]);                                                 \
            y[i] = v;                                                                           \
            y[j] = v;                                                                           \
        }                                                                                       \
    }
// y (rows × cols) ← rows `start..start + rows` of x (cols − 1 columns with ELEM_APPEND_ONES,
// which appends a column of ones; else cols): the chunk Φ_aug every posterior kernel reads.
#define FEATURE_ROWS(T)                                                                         \
    (PARAMS w, const T* x, T* y, T* no_result) {                                                \
        ELEM_INDEX const u32 r = i / p.cols, c = i % p.cols;                                    \
        const u32 d = p.cols - ((p.flags & ELEM_APPEND_ONES) ? 1u : 0u);                        \
        y[i] = c < d ? x[((u64)p.start + r) * d + c] : T(1);                                    \
    }
#define TRANSPOSE(T) (PARAMS w, const T* x, T* y, T* no_result) { ELEM_INDEX y[i] = x[(u64)(i % p.rows) * p.cols + i / p.rows]; }

ENTRY_F32_F64(axpy, 256, AXPY)
ENTRY_F32_F64(hadamard, 256, HADAMARD)
ENTRY_F32_F64(add_row, 256, ADD_ROW)
ENTRY_F32_F64(scale_rows, 256, SCALE_ROWS)
ENTRY_F32_F64(scale_columns, 256, SCALE_COLUMNS)
ENTRY_F32_F64(add_diagonal, 256, ADD_DIAGONAL)
ENTRY_F32_F64(mirror_lower, 256, MIRROR_LOWER)
ENTRY_F32_F64(zero_upper, 256, ZERO_UPPER)
ENTRY_F32_F64(symmetrize, 256, SYMMETRIZE)
ENTRY_F32_F64(transpose, 256, TRANSPOSE)
ENTRY_F32_F64(feature_rows, 256, FEATURE_ROWS)

// result ← max(result, max_i |x_i|) on the IEEE bits (non-negative floats order like their
// bits, and NaN's bits exceed +Inf's, so NaN wins): a shuffle reduction within each warp, the
// warps' maxima through shared memory, then one atomic per block.
template <typename T> struct AbsBits;
template <> struct AbsBits<float> { typedef unsigned int type; };
template <> struct AbsBits<double> { typedef unsigned long long type; };
__device__ __forceinline__ unsigned int abs_bits(float v) { return __float_as_uint(fabsf(v)); }
__device__ __forceinline__ unsigned long long abs_bits(double v) { return __double_as_longlong(fabs(v)); }

template <typename T>
__device__ void max_abs_body(const ElemParams& p, const T* x, typename AbsBits<T>::type* result) {
    typedef typename AbsBits<T>::type U;
    __shared__ U partial[256 / 32];
    const u32 i = linear_index(), t = threadIdx.x, lane = t % 32, warp = t / 32;
    U v = i < p.len ? abs_bits(x[i]) : U(0);
    for (u32 s = 16; s > 0; s >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, s));
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < blockDim.x / 32 ? partial[lane] : U(0);
        for (u32 s = 16; s > 0; s >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, s));
        if (lane == 0) atomicMax(result, v);
    }
}

#define MAX_ABS(T) (PARAMS w, const T* x, T* unused, AbsBits<T>::type* result) { max_abs_body<T>(params<ElemParams>(w), x, result); }
ENTRY_F32_F64(max_abs, 256, MAX_ABS)
