// The scheduler behind cuda_emu.h: fibers for the threads of a block, OS threads for blocks.
//
// laplace_emu_launch runs one grid to completion. Workers (OS threads) take blocks from a shared
// counter; each runs its block's threads as fibers, round by round: every runnable fiber runs
// until it blocks (a barrier, a warp collective) or ends, forward in even rounds and backward
// in odd ones; then the complete warp collectives are exchanged, or, when every live thread
// waits at __syncthreads, the barrier is released. Anything else (a barrier some threads never
// reach while others wait in a collective) is a divergence error, reported, never a hang.

#include "cuda_emu.h"

#include <atomic>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

__thread uint3 emu_thread_idx;
__thread uint3 emu_block_idx;
__thread dim3 emu_block_dim;
__thread dim3 emu_grid_dim;

namespace {

// ---- context switching -------------------------------------------------------------------

#if defined(__x86_64__)
// emu_switch(save, next): pushes the callee-saved registers, stores the stack pointer in
// *save, loads `next` and pops the registers saved there (System V x86-64).
extern "C" void emu_switch(void** save, void* next);
asm(R"(
    .text
    .p2align 4
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
    .p2align 4
    .type emu_fiber_start, @function
emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_start, .-emu_fiber_start
)");
extern "C" void emu_fiber_start();
#elif defined(__aarch64__)
extern "C" void emu_switch(void** save, void* next);
asm(R"(
    .text
    .p2align 4
    .type emu_switch, %function
emu_switch:
    sub sp, sp, #176
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #176
    ret
    .size emu_switch, .-emu_switch
    .p2align 4
    .type emu_fiber_start, %function
emu_fiber_start:
    mov x0, x19
    blr x20
    brk #0
    .size emu_fiber_start, .-emu_fiber_start
)");
extern "C" void emu_fiber_start();
#else
#error "cuda_emu: context switching is written for x86-64 and AArch64"
#endif

constexpr size_t kStackBytes = 64 * 1024;
// The lowest bytes of each fiber stack hold this pattern; a thread whose frames reach them has
// overflowed its stack, reported as an error after its block.
constexpr size_t kCanaryBytes = 256;
constexpr unsigned char kCanary = 0x5c;
constexpr unsigned kWarp = 32;

enum class State { Ready, Barrier, Collective, Done };

struct Block;

struct Fiber {
    void* sp = nullptr;
    uint3 tid{};
    unsigned linear = 0;
    State state = State::Done;
    // A pending warp collective: the deposited value, its mode and lane argument, its width;
    // `result` is what the exchange returns.
    uint64_t value = 0, result = 0;
    int mode = 0, lane_arg = 0, width = 32;
    Block* block = nullptr;
    char* stack = nullptr;
};

struct Launch {
    emu::Thunk thunk;
    const void* words;
    void* const* slots;
    dim3 grid, block;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex error_lock;
    std::string error;

    void fail(const std::string& message) {
        std::lock_guard<std::mutex> guard(error_lock);
        if (!failed.exchange(true)) error = message;
    }
};

// Fiber stacks, kept between launches: a launch's workers take one arena each.
class StackPool {
   public:
    std::unique_ptr<char[]> take(size_t bytes) {
        std::lock_guard<std::mutex> guard(lock_);
        for (size_t i = 0; i < free_.size(); i++) {
            if (free_[i].second >= bytes) {
                auto arena = std::move(free_[i].first);
                free_.erase(free_.begin() + (long)i);
                return arena;
            }
        }
        return std::unique_ptr<char[]>(new char[bytes]);
    }
    void give(std::unique_ptr<char[]> arena, size_t bytes) {
        std::lock_guard<std::mutex> guard(lock_);
        if (free_.size() < 16) free_.emplace_back(std::move(arena), bytes);
    }

   private:
    std::mutex lock_;
    std::vector<std::pair<std::unique_ptr<char[]>, size_t>> free_;
};

StackPool& stack_pool() {
    static StackPool* pool = new StackPool();  // never destroyed: workers may outlive statics
    return *pool;
}

struct Block {
    Launch* launch = nullptr;
    void* scheduler_sp = nullptr;
    std::vector<Fiber> fibers;
    char* stacks = nullptr;
};

__thread Fiber* current = nullptr;

extern "C" void emu_fiber_main(Fiber* f) {
    f->block->launch->thunk(f->block->launch->words, f->block->launch->slots);
    f->state = State::Done;
    void* unused;
    emu_switch(&unused, f->block->scheduler_sp);
    std::abort();  // a finished fiber is never resumed
}

// Back to the scheduler; returns when the scheduler resumes this fiber (having set `current`
// and `emu_thread_idx` for it).
void yield_to_scheduler(Fiber* f) { emu_switch(&f->sp, f->block->scheduler_sp); }

void prepare(Fiber& f) {
    std::memset(f.stack, kCanary, kCanaryBytes);
    // The initial frame emu_switch pops: six callee-saved registers (x86-64) or the 176-byte
    // frame (AArch64), then emu_fiber_start as the return address. The stack top is 16-aligned.
    auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t(15);
#if defined(__x86_64__)
    // Popped in order: r15, r14, r13, r12, rbx, rbp, then `ret` to emu_fiber_start, which starts
    // with rsp 16-aligned, so its call enters emu_fiber_main as the ABI requires.
    auto* frame = reinterpret_cast<uint64_t*>(top) - 9;
    frame[0] = 0;
    frame[1] = 0;
    frame[2] = reinterpret_cast<uint64_t>(&emu_fiber_main);  // r13
    frame[3] = reinterpret_cast<uint64_t>(&f);               // r12
    frame[4] = 0;
    frame[5] = 0;
    frame[6] = reinterpret_cast<uint64_t>(&emu_fiber_start);
    frame[7] = 0;
    frame[8] = 0;
    f.sp = frame;
#else
    auto* frame = reinterpret_cast<uint64_t*>(top - 176);
    std::memset(frame, 0, 176);
    frame[0] = reinterpret_cast<uint64_t>(&f);               // x19
    frame[1] = reinterpret_cast<uint64_t>(&emu_fiber_main);  // x20
    frame[11] = reinterpret_cast<uint64_t>(&emu_fiber_start); // x30
    f.sp = frame;
#endif
}

// The lane a collective of `f` reads, or -1 for its own value.
int source_lane(const Fiber& f) {
    const int lane = (int)(f.linear % kWarp);
    const int width = f.width > 0 && f.width <= (int)kWarp ? f.width : (int)kWarp;
    const int segment = lane - lane % width;
    int src = lane;
    switch (f.mode) {
        case 0: src = segment + ((f.lane_arg % width) + width) % width; break;
        case 1: src = lane - f.lane_arg; if (src < segment) src = lane; break;
        case 2: src = lane + f.lane_arg; if (src >= segment + width) src = lane; break;
        case 3: src = lane ^ f.lane_arg; if (src < segment || src >= segment + width) src = lane; break;
        default: break;
    }
    return src;
}

void run_block(Block& b, uint3 idx) {
    Launch& l = *b.launch;
    emu_block_idx = idx;
    emu_block_dim = l.block;
    emu_grid_dim = l.grid;
    const unsigned n = l.block.x * l.block.y * l.block.z;
    for (unsigned t = 0; t < n; t++) {
        Fiber& f = b.fibers[t];
        f.linear = t;
        f.tid = uint3{t % l.block.x, (t / l.block.x) % l.block.y, t / (l.block.x * l.block.y)};
        f.state = State::Ready;
        f.block = &b;
        f.stack = b.stacks + (size_t)t * kStackBytes;
        prepare(f);
    }
    for (unsigned round = 0;; round++) {
        for (unsigned s = 0; s < n; s++) {
            Fiber& f = b.fibers[round % 2 == 0 ? s : n - 1 - s];
            if (f.state != State::Ready) continue;
            current = &f;
            emu_thread_idx = f.tid;
            emu_switch(&b.scheduler_sp, f.sp);
        }
        bool released = false, live = false, all_at_barrier = true;
        for (unsigned w = 0; w < n; w += kWarp) {
            const unsigned end = w + kWarp < n ? w + kWarp : n;
            bool complete = false, blocked = false;
            for (unsigned t = w; t < end; t++) {
                const State s = b.fibers[t].state;
                if (s == State::Done) continue;
                live = true;
                if (s != State::Barrier) all_at_barrier = false;
                if (s == State::Collective) complete = true;
                else blocked = true;
            }
            if (!complete || blocked) continue;
            for (unsigned t = w; t < end; t++) {
                Fiber& f = b.fibers[t];
                if (f.state != State::Collective) continue;
                const int src = source_lane(f);
                const Fiber& from = b.fibers[w + (unsigned)src];
                f.result = (w + (unsigned)src < end && from.state == State::Collective) ? from.value : f.value;
            }
            for (unsigned t = w; t < end; t++)
                if (b.fibers[t].state == State::Collective) b.fibers[t].state = State::Ready;
            released = true;
        }
        if (!live) {
            for (unsigned t = 0; t < n; t++) {
                const char* low = b.fibers[t].stack;
                for (size_t i = 0; i < kCanaryBytes; i++) {
                    if ((unsigned char)low[i] != kCanary) {
                        l.fail("thread " + std::to_string(t) + " of block (" + std::to_string(idx.x) + ", " +
                               std::to_string(idx.y) + ", " + std::to_string(idx.z) + ") overflowed its " +
                               std::to_string(kStackBytes / 1024) + " KiB stack");
                        return;
                    }
                }
            }
            return;
        }
        if (released) continue;
        if (all_at_barrier) {
            for (unsigned t = 0; t < n; t++)
                if (b.fibers[t].state == State::Barrier) b.fibers[t].state = State::Ready;
            continue;
        }
        unsigned at_barrier = 0, in_collective = 0;
        for (unsigned t = 0; t < n; t++) {
            at_barrier += b.fibers[t].state == State::Barrier;
            in_collective += b.fibers[t].state == State::Collective;
        }
        l.fail("block (" + std::to_string(idx.x) + ", " + std::to_string(idx.y) + ", " + std::to_string(idx.z) +
               ") diverged: " + std::to_string(at_barrier) + " threads wait at __syncthreads while " +
               std::to_string(in_collective) + " wait in a warp collective whose warp never completes");
        // Abandon the block: its fibers' stacks are discarded without resuming them.
        return;
    }
}

void worker(Launch& l) {
    Block b;
    b.launch = &l;
    const unsigned n = l.block.x * l.block.y * l.block.z;
    b.fibers.resize(n);
    const size_t bytes = (size_t)n * kStackBytes;
    std::unique_ptr<char[]> arena = stack_pool().take(bytes);
    b.stacks = arena.get();
    const uint64_t blocks = (uint64_t)l.grid.x * l.grid.y * l.grid.z;
    while (!l.failed.load()) {
        const uint64_t i = l.next.fetch_add(1);
        if (i >= blocks) break;
        const uint3 idx{(unsigned)(i % l.grid.x), (unsigned)((i / l.grid.x) % l.grid.y),
                        (unsigned)(i / ((uint64_t)l.grid.x * l.grid.y))};
        run_block(b, idx);
    }
    stack_pool().give(std::move(arena), bytes);
}

}  // namespace

extern "C" void emu_syncthreads(void) {
    Fiber* f = current;
    if (!f) std::abort();
    f->state = State::Barrier;
    yield_to_scheduler(f);
}

extern "C" uint64_t emu_shuffle(uint64_t value, int mode, int lane_arg, int width) {
    Fiber* f = current;
    if (!f) std::abort();
    f->value = value;
    f->mode = mode;
    f->lane_arg = lane_arg;
    f->width = width;
    f->state = State::Collective;
    yield_to_scheduler(f);
    return f->result;
}

// Runs `thunk` over a grid of blocks of `block` threads, on up to `workers` OS threads.
// 0 on success; otherwise 1, with the reason in `error` (NUL-terminated, truncated to `len`).
extern "C" int laplace_emu_launch(emu::Thunk thunk, const void* words, void* const* slots, const unsigned grid[3],
                                  const unsigned block[3], unsigned workers, char* error, size_t len) {
    Launch l;
    l.thunk = thunk;
    l.words = words;
    l.slots = slots;
    l.grid = dim3{grid[0], grid[1], grid[2]};
    l.block = dim3{block[0], block[1], block[2]};
    const uint64_t blocks = (uint64_t)grid[0] * grid[1] * grid[2];
    const uint64_t threads = (uint64_t)block[0] * block[1] * block[2];
    auto report = [&](const std::string& message) {
        if (len > 0) {
            std::snprintf(error, len, "%s", message.c_str());
        }
        return 1;
    };
    if (threads == 0 || threads > 1024) return report("a block of " + std::to_string(threads) + " threads (CUDA allows 1 to 1,024)");
    if (blocks == 0) return 0;
    const unsigned count = (unsigned)std::min<uint64_t>(blocks, workers > 0 ? workers : 1);
    std::vector<std::thread> helpers;
    for (unsigned w = 1; w < count; w++) helpers.emplace_back([&l] { worker(l); });
    // The caller's thread is a worker too; its own fiber state is saved and restored around it.
    const uint3 saved_tid = emu_thread_idx, saved_bid = emu_block_idx;
    Fiber* const saved = current;
    worker(l);
    current = saved;
    emu_thread_idx = saved_tid;
    emu_block_idx = saved_bid;
    for (auto& h : helpers) h.join();
    if (l.failed.load()) return report(l.error);
    return 0;
}
