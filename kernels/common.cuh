// Shared by every kernel family; NVRTC compiles it in front of each family's source.
//
// Kernels take their scalar parameters as one `Words` value (16 × 64-bit) that each family
// reinterprets as its own `Params` struct; the host fills the words in the struct's field order
// with C alignment. Entry points are `extern "C"` and dtype-suffixed: `gemm_f32`, `gemm_f64`.

typedef unsigned int u32;
typedef unsigned long long u64;

struct Words {
    u64 w[16];
};

// The parameter block of every entry point, by value. `__grid_constant__` (sm_70 and later)
// keeps it in the constant bank instead of copying it to each thread's local memory.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
#define PARAMS __grid_constant__ const Words
#else
#define PARAMS const Words
#endif

template <typename P>
__device__ __forceinline__ const P& params(const Words& words) {
    return *reinterpret_cast<const P*>(&words);
}

// Linear index of a 1-D launch folded into (x, y, z) blocks (`launch::fold_threads`).
__device__ __forceinline__ u32 linear_index() {
    return blockIdx.x * blockDim.x + threadIdx.x + (blockIdx.y + blockIdx.z * gridDim.y) * gridDim.x * blockDim.x;
}

#define FAILED_NONE 0xffffffffu

// Entry points for both element types from one template body.
#define ENTRY_F32_F64(name, bounds, body)                                                       \
    extern "C" __global__ void __launch_bounds__(bounds) name##_f32 body(float)                 \
    extern "C" __global__ void __launch_bounds__(bounds) name##_f64 body(double)
