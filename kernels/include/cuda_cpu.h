// cuda_cpu.h: just enough of CUDA for the kernels in kernels/*.cu to compile with g++ -std=c++20
// and run on the CPU, so every kernel is tested on machines without a GPU (docs/kernels.md).
//
// kernels/harness.py includes this header, then the .cu file, then a table of its kernels
// (HARNESS_KERNELS at the bottom). Execution model:
//   - a grid runs block after block; a block runs its CUDA threads either one after another on the
//     calling thread ("sequential": kernels with no barrier, shared memory or warp intrinsic), or
//     as one std::thread each ("cooperative", the threads kept from block to block), with
//     std::barrier for __syncthreads and per-warp exchange slots plus a per-warp barrier for the
//     shuffles;
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

inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, sizeof i);
    return i;
}

// The vector types the SGD kernel loads four floats (or stores four BF16) at a time with; on a GPU
// they are builtins with 16- and 8-byte alignment, one load or store instruction each.
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) ushort4 {
    unsigned short x, y, z, w;
};

namespace harness {

struct Warp {
    explicit Warp(int lanes) : size(lanes), barrier(lanes) {}
    int size;
    std::barrier<> barrier;
    std::uint64_t slots[2][32];  // two sets, used in turn: see shuffle()
};

struct Block {
    std::barrier<>* barrier = nullptr;  // null while the kernel runs sequentially
    std::vector<std::unique_ptr<Warp>> warps;
    unsigned char* shared = nullptr;
};

inline thread_local Block* block = nullptr;
inline thread_local const char* kernel_name = "";
inline thread_local unsigned shuffle_count = 0;  // this CUDA thread's shuffles so far in the launch

[[noreturn]] inline void die(const char* what) {
    std::fprintf(stderr, "cuda_cpu harness: kernel %s %s\n", kernel_name, what);
    std::abort();
}

inline unsigned thread_rank() { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }

inline unsigned char* dynamic_shared() { return block->shared; }

// Every lane publishes v, waits for the warp, then reads lane `src` (its own value when src is -1
// or outside the warp). Shuffles alternate between two slot sets, so one barrier per shuffle is
// enough: a lane can only write a set again two shuffles later, after the next shuffle's barrier,
// which every lane reaches only once it has read this one.
template <class T>
T shuffle(T v, int src) {
    static_assert(sizeof(T) <= sizeof(std::uint64_t), "shuffle of a type wider than 8 bytes");
    if (block->barrier == nullptr) die("uses a warp shuffle but the harness runs it sequentially");
    Warp& warp = *block->warps[thread_rank() / 32];
    std::uint64_t* slots = warp.slots[shuffle_count++ % 2];
    std::memcpy(&slots[thread_rank() % 32], &v, sizeof(T));
    warp.barrier.arrive_and_wait();
    T r = v;
    if (src >= 0 && src < warp.size) std::memcpy(&r, &slots[src], sizeof(T));
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

// Dynamic shared memory starts every block as 0xFF bytes (a float NaN): on a GPU it holds whatever
// the previous block left, and a read before any write must show.
struct Poison {
    std::vector<unsigned char>* shared;
    void operator()() noexcept { std::fill(shared->begin(), shared->end(), 0xFF); }
};

inline dim3 unflatten(unsigned i, dim3 d) { return dim3{i % d.x, i / d.x % d.y, i / (d.x * d.y)}; }

// Sequential: the CUDA threads of each block run one after another on the calling thread.
inline void run_sequential(const Kernel& k, void* const* args, dim3 grid, dim3 blk, std::vector<unsigned char>& shared) {
    Block b;
    b.shared = shared.data();
    for (unsigned i = 0; i < grid.x * grid.y * grid.z; ++i) {
        Poison{&shared}();
        for (unsigned t = 0; t < blk.x * blk.y * blk.z; ++t) {
            set_indices(k, &b, grid, blk, unflatten(i, grid), unflatten(t, blk));
            k.call(args);
        }
    }
}

// Cooperative: one OS thread per CUDA thread, kept for every block of the launch (creating a
// thread costs ~20x a barrier). A boundary barrier between blocks, whose completion step poisons
// the shared memory, keeps the blocks apart as the GPU's scheduler would.
inline void run_cooperative(const Kernel& k, void* const* args, dim3 grid, dim3 blk, std::vector<unsigned char>& shared) {
    const unsigned nthreads = blk.x * blk.y * blk.z;
    std::barrier<> barrier(nthreads);
    std::barrier<Poison> boundary(nthreads, Poison{&shared});
    Block b;
    b.shared = shared.data();
    b.barrier = &barrier;
    for (unsigned w = 0; w * 32 < nthreads; ++w) b.warps.push_back(std::make_unique<Warp>(std::min(32u, nthreads - w * 32)));
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    try {
        for (unsigned t = 0; t < nthreads; ++t) {
            threads.emplace_back([&, t] {
                const unsigned csr = enter_ftz();
                shuffle_count = 0;
                for (unsigned i = 0; i < grid.x * grid.y * grid.z; ++i) {
                    boundary.arrive_and_wait();
                    set_indices(k, &b, grid, blk, unflatten(i, grid), unflatten(t, blk));
                    k.call(args);
                }
                leave_ftz(csr);
            });
        }
    } catch (const std::system_error&) {
        // the threads already started wait at a barrier that can never fill: they cannot be
        // stopped, so this launch cannot return
        die("could not start one OS thread per CUDA thread");
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
    kernel_name = k->name;
    std::vector<unsigned char> shared(shared_bytes);
    const unsigned csr = enter_ftz();
    (k->cooperative ? run_cooperative : run_sequential)(*k, args, grid, blk, shared);
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
