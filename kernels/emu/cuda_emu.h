// A CPU execution model for the CUDA constructs kernels/*.cu use, so that the host C++ compiler
// builds those files unchanged and the library runs them (the `cuda-emu` feature).
//
// Threads of a block are fibers on one OS thread. A fiber runs until it reaches `__syncthreads`
// (all live threads of the block), a warp collective (all live lanes of its 32-lane warp) or its
// end; the scheduler then releases whichever barrier is complete, running the fibers forward in
// even phases and backward in odd ones. A missing barrier therefore reads shared memory that
// the other threads have not written yet, and changes the result. Blocks run concurrently on OS
// threads, `__shared__` memory is per block (thread-local to the OS thread that runs it), and
// atomics are real atomics. A worker runs its block to the end, so a grid-wide barrier would make
// progress only among as many blocks as there are workers: the co-residency a persistent kernel
// must also respect on a GPU. See kernels/emu/runtime.cpp.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};

// Set by the scheduler for the running fiber (thread) and its block.
extern __thread uint3 emu_thread_idx;
extern __thread uint3 emu_block_idx;
extern __thread dim3 emu_block_dim;
extern __thread dim3 emu_grid_dim;
#define threadIdx emu_thread_idx
#define blockIdx emu_block_idx
#define blockDim emu_block_dim
#define gridDim emu_grid_dim

extern "C" {
// Suspends the calling thread until every live thread of its block has called it.
void emu_syncthreads(void);
// Deposits `value`, waits for every live lane of the warp, and returns the value of lane
// `source` (the caller's own when that lane is outside `width`'s segment or has exited);
// mode 0 = index, 1 = up, 2 = down, 3 = xor, as the four `__shfl_*_sync`.
uint64_t emu_shuffle(uint64_t value, int mode, int lane_arg, int width);
}

__forceinline__ void __syncthreads() { emu_syncthreads(); }
__forceinline__ void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
__forceinline__ void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
__forceinline__ void __syncwarp(unsigned = 0xffffffffu) { (void)emu_shuffle(0, 0, 0, 32); }

namespace emu {
template <typename T>
__forceinline__ uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 64 bits");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <typename T>
__forceinline__ T from_bits(uint64_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}
template <typename T>
__forceinline__ T shuffle(T v, int mode, int arg, int width) {
    return from_bits<T>(emu_shuffle(to_bits(v), mode, arg, width));
}
}  // namespace emu

template <typename T>
__forceinline__ T __shfl_sync(unsigned, T v, int lane, int width = 32) { return emu::shuffle(v, 0, lane, width); }
template <typename T>
__forceinline__ T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) { return emu::shuffle(v, 1, (int)delta, width); }
template <typename T>
__forceinline__ T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) { return emu::shuffle(v, 2, (int)delta, width); }
template <typename T>
__forceinline__ T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) { return emu::shuffle(v, 3, mask, width); }

// Atomics: device-wide, since blocks run on concurrent OS threads.
template <typename T>
__forceinline__ T emu_atomic_update(T* address, T (*op)(T, T), T value) {
    T old = __atomic_load_n(address, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(address, &old, op(old, value), true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <typename T>
__forceinline__ T emu_min(T a, T b) { return b < a ? b : a; }
template <typename T>
__forceinline__ T emu_max(T a, T b) { return b > a ? b : a; }
template <typename T>
__forceinline__ T emu_add(T a, T b) { return a + b; }
__forceinline__ unsigned int atomicMin(unsigned int* a, unsigned int v) { return emu_atomic_update(a, emu_min<unsigned int>, v); }
__forceinline__ unsigned int atomicMax(unsigned int* a, unsigned int v) { return emu_atomic_update(a, emu_max<unsigned int>, v); }
__forceinline__ unsigned long long atomicMax(unsigned long long* a, unsigned long long v) {
    return emu_atomic_update(a, emu_max<unsigned long long>, v);
}
__forceinline__ unsigned long long atomicMin(unsigned long long* a, unsigned long long v) {
    return emu_atomic_update(a, emu_min<unsigned long long>, v);
}
__forceinline__ unsigned int atomicAdd(unsigned int* a, unsigned int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
__forceinline__ int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
template <typename F, typename U>
__forceinline__ F emu_atomic_add_float(F* address, F value) {
    U* bits = reinterpret_cast<U*>(address);
    U old = __atomic_load_n(bits, __ATOMIC_RELAXED);
    for (;;) {
        F sum;
        std::memcpy(&sum, &old, sizeof(F));
        const F previous = sum;
        sum += value;
        U next;
        std::memcpy(&next, &sum, sizeof(F));
        if (__atomic_compare_exchange_n(bits, &old, next, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return previous;
    }
}
__forceinline__ float atomicAdd(float* a, float v) { return emu_atomic_add_float<float, uint32_t>(a, v); }
__forceinline__ double atomicAdd(double* a, double v) { return emu_atomic_add_float<double, uint64_t>(a, v); }

// Math: CUDA's overloads for float and double; min/max follow fminf/fmaxf (a NaN operand loses).
using std::exp;
using std::fabs;
using std::fma;
using std::log;
using std::log1p;
using std::sqrt;
__forceinline__ float max(float a, float b) { return std::fmax(a, b); }
__forceinline__ double max(double a, double b) { return std::fmax(a, b); }
__forceinline__ float min(float a, float b) { return std::fmin(a, b); }
__forceinline__ double min(double a, double b) { return std::fmin(a, b); }
__forceinline__ unsigned int max(unsigned int a, unsigned int b) { return emu_max(a, b); }
__forceinline__ unsigned int min(unsigned int a, unsigned int b) { return emu_min(a, b); }
__forceinline__ unsigned long long max(unsigned long long a, unsigned long long b) { return emu_max(a, b); }
__forceinline__ unsigned long long min(unsigned long long a, unsigned long long b) { return emu_min(a, b); }
__forceinline__ int max(int a, int b) { return emu_max(a, b); }
__forceinline__ int min(int a, int b) { return emu_min(a, b); }
__forceinline__ unsigned int __float_as_uint(float v) { return emu::from_bits<unsigned int>(emu::to_bits(v)); }
__forceinline__ float __uint_as_float(unsigned int v) { return emu::from_bits<float>(emu::to_bits(v)); }
__forceinline__ float __int_as_float(int v) { return emu::from_bits<float>(emu::to_bits(v)); }
__forceinline__ long long __double_as_longlong(double v) { return emu::from_bits<long long>(emu::to_bits(v)); }
__forceinline__ double __longlong_as_double(long long v) { return emu::from_bits<double>(emu::to_bits(v)); }

// A type-erased entry point: the parameter block, then one pointer per buffer slot.
namespace emu {
typedef void (*Thunk)(const void* words, void* const* slots);

template <typename W, typename... P>
constexpr unsigned arity(void (*)(W, P...)) {
    return sizeof...(P);
}

template <auto F, typename W, typename... P, std::size_t... I>
void call(const void* words, void* const* slots, void (*)(W, P...), std::index_sequence<I...>) {
    static_assert((std::is_pointer_v<P> && ...), "every kernel argument after the parameter block is a pointer");
    F(*static_cast<const std::remove_cv_t<W>*>(words), static_cast<P>(slots[I])...);
}

template <auto F>
void thunk(const void* words, void* const* slots) {
    call<F>(words, slots, F, std::make_index_sequence<arity(F)>{});
}
}  // namespace emu

// One row of a family's entry table (generated by build.rs after the family's source).
struct EmuEntry {
    const char* name;
    emu::Thunk thunk;
    unsigned slots;
};
#define EMU_ENTRY(fn) EmuEntry{#fn, &emu::thunk<&fn>, emu::arity(&fn)}
