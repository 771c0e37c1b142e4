// cuda_cpu.h: just enough of CUDA for the kernels in kernels/*.cu to compile with g++ -std=c++20
// and run on the CPU, so every kernel is tested on machines without a GPU (DESIGN.md section 5).
//
// kernels/harness.py includes this header, then the .cu file, then a table of its kernels
// (HARNESS_KERNELS at the bottom). Execution model:
//   - a grid runs block after block; a block runs its CUDA threads either one after another on the
//     calling thread ("sequential": kernels with no barrier, shared memory or warp intrinsic), or
//     as one std::thread each ("cooperative"), with std::barrier for __syncthreads and per-warp
//     exchange slots plus a per-warp barrier for the shuffles;
//   - threadIdx/blockIdx/blockDim/gridDim are thread_local;
//   - denormals are flushed (FTZ/DAZ) to match CuPy's -ftz=true;
//   - dynamic shared memory is filled with 0xFF bytes (a float NaN) before each block, so a read
//     of a slot nobody wrote shows up in the results instead of reading a stale zero.
// A sequential kernel that reaches __syncthreads or a shuffle aborts with a message: running it
// without threads would silently compute something else.
#pragma once

#include <math.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// Function-local statics are shared by the threads of the block; blocks never run concurrently.
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}

namespace harness {

struct Warp {
    explicit Warp(int lanes) : size(lanes), barrier(lanes) {}
    int size;
    std::barrier<> barrier;
    std::uint64_t slots[32];
};

struct Block {
    std::barrier<>* barrier = nullptr;  // null while the kernel runs sequentially
    std::vector<std::unique_ptr<Warp>> warps;
    unsigned char* shared = nullptr;
};

inline thread_local Block* block = nullptr;
inline thread_local const char* kernel_name = "";

[[noreturn]] inline void die(const char* what) {
    std::fprintf(stderr, "cuda_cpu harness: kernel %s %s\n", kernel_name, what);
    std::abort();
}

inline unsigned thread_rank() { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }

inline unsigned char* dynamic_shared() { return block->shared; }

// Every lane publishes v, reads lane `src` (its own value when src is -1 or outside the warp),
// and waits again so that no lane overwrites its slot before the others have read it.
template <class T>
T shuffle(T v, int src) {
    static_assert(sizeof(T) <= sizeof(std::uint64_t), "shuffle of a type wider than 8 bytes");
    if (block->barrier == nullptr) die("uses a warp shuffle but the harness runs it sequentially");
    Warp& warp = *block->warps[thread_rank() / 32];
    std::memcpy(&warp.slots[thread_rank() % 32], &v, sizeof(T));
    warp.barrier.arrive_and_wait();
    T r = v;
    if (src >= 0 && src < warp.size) std::memcpy(&r, &warp.slots[src], sizeof(T));
    warp.barrier.arrive_and_wait();
    return r;
}

inline int lane() { return static_cast<int>(thread_rank() % 32); }

}  // namespace harness

inline void __syncthreads() {
    if (harness::block->barrier == nullptr) harness::die("calls __syncthreads but the harness runs it sequentially");
    harness::block->barrier->arrive_and_wait();
}

template <class T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
    return harness::shuffle(v, harness::lane() / width * width + src % width);
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    const int l = harness::lane(), src = l + static_cast<int>(delta);
    return harness::shuffle(v, src / width == l / width ? src : -1);
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    const int l = harness::lane(), src = l ^ mask;
    return harness::shuffle(v, src / width == l / width ? src : -1);
}

template <class T>
T atomicAdd(T* address, T v) {
    return std::atomic_ref<T>(*address).fetch_add(v);
}

namespace harness {

struct Kernel {
    const char* name;
    void (*call)(void* const* args);
    int nargs;
    const std::size_t* arg_sizes;
    bool cooperative;
};

template <class F>
struct Signature;
template <class... A>
struct Signature<void (*)(A...)> {
    static constexpr int nargs = sizeof...(A);
    static constexpr std::size_t sizes[sizeof...(A) + 1] = {sizeof(A)..., 0};  // + 1: no zero-length array
    template <auto fn, std::size_t... I>
    static void call(void* const* args, std::index_sequence<I...>) {
        fn(*static_cast<A*>(args[I])...);
    }
};

template <auto fn>
void call(void* const* args) {
    using S = Signature<decltype(fn)>;
    S::template call<fn>(args, std::make_index_sequence<S::nargs>{});
}

template <auto fn>
constexpr Kernel kernel(const char* name, bool cooperative) {
    using S = Signature<decltype(fn)>;
    return {name, &call<fn>, S::nargs, S::sizes, cooperative};
}

// Flush-to-zero and denormals-are-zero for this OS thread (MXCSR is per thread).
inline unsigned enter_ftz() {
#if defined(__x86_64__)
    const unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);
    return old;
#else
    return 0;
#endif
}
inline void leave_ftz([[maybe_unused]] unsigned old) {
#if defined(__x86_64__)
    _mm_setcsr(old);
#endif
}

inline void set_indices(const Kernel& k, Block* b, dim3 grid, dim3 blk, dim3 bid, dim3 tid) {
    kernel_name = k.name;
    block = b;
    gridDim = grid;
    blockDim = blk;
    blockIdx = bid;
    threadIdx = tid;
}

inline void run_block(const Kernel& k, void* const* args, dim3 grid, dim3 blk, dim3 bid,
                      std::vector<unsigned char>& shared) {
    std::fill(shared.begin(), shared.end(), 0xFF);
    const unsigned nthreads = blk.x * blk.y * blk.z;
    Block b;
    b.shared = shared.data();
    auto tid_of = [&](unsigned t) { return dim3{t % blk.x, t / blk.x % blk.y, t / (blk.x * blk.y)}; };
    if (!k.cooperative) {
        for (unsigned t = 0; t < nthreads; ++t) {
            set_indices(k, &b, grid, blk, bid, tid_of(t));
            k.call(args);
        }
        return;
    }
    std::barrier<> barrier(nthreads);
    b.barrier = &barrier;
    for (unsigned w = 0; w * 32 < nthreads; ++w) b.warps.push_back(std::make_unique<Warp>(std::min(32u, nthreads - w * 32)));
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (unsigned t = 0; t < nthreads; ++t) {
        threads.emplace_back([&, t] {
            const unsigned csr = enter_ftz();
            set_indices(k, &b, grid, blk, bid, tid_of(t));
            k.call(args);
            leave_ftz(csr);
        });
    }
    for (auto& th : threads) th.join();
}

// Checks the launch against the kernel's signature, then runs it. Returns 0, or 1 with `err` set.
inline int launch(const Kernel* table, int count, const char* name, const unsigned* grid3, const unsigned* block3,
                  std::size_t shared_bytes, void* const* args, const std::size_t* arg_sizes, int nargs, char* err,
                  std::size_t errlen) {
    const Kernel* k = nullptr;
    for (int i = 0; i < count; ++i)
        if (std::strcmp(table[i].name, name) == 0) k = &table[i];
    if (k == nullptr) return std::snprintf(err, errlen, "no kernel named %s in this module", name), 1;
    if (nargs != k->nargs) return std::snprintf(err, errlen, "%s takes %d arguments, got %d", name, k->nargs, nargs), 1;
    for (int i = 0; i < nargs; ++i)
        if (arg_sizes[i] != k->arg_sizes[i])
            return std::snprintf(err, errlen, "%s: argument %d is %zu bytes in the kernel's signature, got %zu bytes",
                                 name, i, k->arg_sizes[i], arg_sizes[i]),
                   1;
    const dim3 grid{grid3[0], grid3[1], grid3[2]}, blk{block3[0], block3[1], block3[2]};
    const unsigned long long nthreads = 1ull * blk.x * blk.y * blk.z;
    if (grid.x * grid.y * grid.z == 0 || nthreads == 0 || nthreads > 1024)
        return std::snprintf(err, errlen, "%s: empty grid or block, or more than 1024 threads per block", name), 1;
    std::vector<unsigned char> shared(shared_bytes);
    const unsigned csr = enter_ftz();
    try {
        for (unsigned z = 0; z < grid.z; ++z)
            for (unsigned y = 0; y < grid.y; ++y)
                for (unsigned x = 0; x < grid.x; ++x) run_block(*k, args, grid, blk, dim3{x, y, z}, shared);
    } catch (const std::system_error& e) {  // thread creation failed
        leave_ftz(csr);
        return std::snprintf(err, errlen, "%s: %s", name, e.what()), 1;
    }
    leave_ftz(csr);
    return 0;
}

}  // namespace harness

#define HARNESS_KERNEL(fn, cooperative) harness::kernel<fn>(#fn, cooperative)
#define HARNESS_KERNELS(...)                                                                                      \
    static const harness::Kernel harness_table[] = {__VA_ARGS__};                                                 \
    extern "C" int harness_launch(const char* name, const unsigned* grid, const unsigned* block,                  \
                                  std::size_t shared_bytes, void* const* args, const std::size_t* arg_sizes,      \
                                  int nargs, char* err, std::size_t errlen) {                                     \
        return harness::launch(harness_table, sizeof harness_table / sizeof harness_table[0], name, grid, block,  \
                               shared_bytes, args, arg_sizes, nargs, err, errlen);                                \
    }
