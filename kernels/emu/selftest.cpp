// Kernels that test the emulator itself (src/device/cuda/emu.rs's unit tests): shuffles in
// every mode and width, atomics across concurrent blocks, and a barrier that part of a block
// never reaches. Each takes the parameter block (w[0] its argument) and one u32 buffer.

#include "emu/cuda_emu.h"
#include "common.cuh"

// out[4·t + m] = the value (100 + source lane) that lane t of a warp receives in mode m (index,
// up, down, xor) with argument w[0] and width w[1].
extern "C" __global__ void emu_test_shuffles(PARAMS w, u32* out) {
    const u32 t = threadIdx.x, lane = t % 32, arg = (u32)w.w[0];
    const int width = (int)w.w[1];
    const u32 v = 100 + lane;
    out[4 * t + 0] = __shfl_sync(0xffffffffu, v, (int)arg, width);
    out[4 * t + 1] = __shfl_up_sync(0xffffffffu, v, arg, width);
    out[4 * t + 2] = __shfl_down_sync(0xffffffffu, v, arg, width);
    out[4 * t + 3] = __shfl_xor_sync(0xffffffffu, v, (int)arg, width);
}

// out[0] += 1 per thread, out[1] = max block index, out[2] = min over threads of (w[0] + thread).
extern "C" __global__ void emu_test_atomics(PARAMS w, u32* out) {
    const u32 b = blockIdx.x + blockIdx.y * gridDim.x;
    atomicAdd(out, 1u);
    atomicMax(out + 1, b);
    atomicMin(out + 2, (u32)w.w[0] + threadIdx.x + b);
}

// Reverses each block's slice of out through shared memory: wrong without the barrier.
extern "C" __global__ void emu_test_shared_reverse(PARAMS w, u32* out) {
    __shared__ u32 slice[256];
    const u32 t = threadIdx.x, base = blockIdx.x * blockDim.x;
    slice[t] = out[base + t];
    if (w.w[0] == 0) __syncthreads();
    out[base + t] = slice[blockDim.x - 1 - t];
}

// Threads below w[0] wait at __syncthreads, the others in a shuffle: a deadlock on a GPU, an
// error here.
extern "C" __global__ void emu_test_divergent_barrier(PARAMS w, u32* out) {
    if (threadIdx.x < (u32)w.w[0]) {
        __syncthreads();
    } else {
        out[threadIdx.x] = __shfl_down_sync(0xffffffffu, threadIdx.x, 1);
    }
}

static const EmuEntry emu_test_entries[] = {
    EMU_ENTRY(emu_test_shuffles),
    EMU_ENTRY(emu_test_atomics),
    EMU_ENTRY(emu_test_shared_reverse),
    EMU_ENTRY(emu_test_divergent_barrier),
};

extern "C" const EmuEntry* laplace_emu_test_entries(size_t* len) {
    *len = sizeof(emu_test_entries) / sizeof(emu_test_entries[0]);
    return emu_test_entries;
}
