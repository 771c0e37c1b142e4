// Dropout (paper section 4.2): keep a unit with probability 1 - p while training, and multiply the
// kept units by `scale`: 1 / (1 - p) for inverted dropout (inference is then the identity), 1 for
// the paper's own variant (whose inference multiplies every output by 1 - p: dropout_scale).
//
// The mask is never stored: it is a pure function of (seed, step, i), a counter-based hash (two
// rounds of the splitmix64 finalizer), so the backward regenerates exactly the forward's mask,
// the same seed and step give the same mask on every device and on the CPU harness, and the
// layer's `step` counter (one per training forward) gives every batch a fresh mask.
// u = the top 24 bits of the hash / 2^24 is exact in float32; the unit is kept when u >= p.
// A dropped unit is multiplied by 0, not replaced by 0, as on the NumPy path: a NaN or an
// infinity stays NaN whether or not its unit is dropped, so a mask never hides one from the checks.
//
// i is the unit's index in the tensor one process would see at batch B, not in this launch's own
// tensor: a data-parallel rank holds rows (samples) of it, a tower of the split model columns
// (units), and both must draw the units' own bits. Element e of the launch's (rows, width) tensor
// is unit i = base + (e / width) * stride + e % width of the (B, stride) one; base = 0 and
// width = stride = n is the whole tensor (i = e).
//
// The step is read from device memory (`step`, one unsigned long long), not passed by value: a
// training step captured once as a CUDA graph (engine/graphs.py) replays the same launches with
// the same arguments, and only memory can change between replays. The layer writes its mask
// counter there before the step (layers/dropout.py).
//
// Both kernels: one thread per element of the flattened tensor, grid-stride loop. The thread splits
// its first element and the grid stride into (row, column) = (e / width, e % width) once, before
// the loop, and the loop adds the stride's pair with a carry, as in written addition: an integer
// division by a run-time value costs ~20 instructions on a GPU (docs/kernels.md). Launched with
// 256 threads per block (kernels/ops.py); untuned; timed per layer on an H200 (docs/benchmarks.md).
// T is the storage (float, or bf16: kernels/include/precision.h); the product is float32.
#include "precision.h"

__device__ __forceinline__ unsigned long long dropout_mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The unit of the element in row `row`, column `col` of the launch's (rows, width) tensor.
__device__ __forceinline__ unsigned long long dropout_unit(int row, int col, unsigned long long base,
                                                         unsigned long long stride) {
    return base + (unsigned long long)row * stride + (unsigned long long)col;
}

// The same splitmix64 stream construction twice: (seed, step) picks a stream, i the element in it.
__device__ __forceinline__ bool dropout_keep(unsigned long long seed, unsigned long long step,
                                             unsigned long long i, float p) {
    const unsigned long long golden = 0x9E3779B97F4A7C15ull;
    const unsigned long long stream = dropout_mix(seed + (step + 1ull) * golden);
    const unsigned long long h = dropout_mix(stream + (i + 1ull) * golden);
    return (float)(h >> 40) * (1.0f / 16777216.0f) >= p;
}

// out = x * (kept ? scale : 0) over the launch's elements; the backward is the same with dout.
template <class T>
__device__ void dropout_apply(const T* __restrict__ x, T* __restrict__ out, int n, unsigned long long base,
                              int width, unsigned long long stride, unsigned long long seed,
                              const unsigned long long* __restrict__ step, float p, float scale) {
    const unsigned long long mask_step = *step;
    const int threads = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int row = i / width, col = i % width;
    const int s_row = threads / width, s_col = threads % width;
    for (; i < n; i += threads) {
        const bool keep = dropout_keep(seed, mask_step, dropout_unit(row, col, base, stride), p);
        store(out, i, (keep ? scale : 0.0f) * to_f32(x[i]));
        row += s_row;
        col += s_col;
        if (col >= width) {
            col -= width;
            ++row;
        }
    }
}

// out = x * scale: the inference forward of the paper's variant (scale = 1 - p) and the backward of
// any inference forward (dx = dout * the same scale). One thread per element, grid-stride.
template <class T>
__device__ void dropout_scale_body(const T* __restrict__ x, T* __restrict__ out, int n, float scale) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        store(out, i, to_f32(x[i]) * scale);
    }
}

extern "C" __global__ void dropout_forward(const float* __restrict__ x, float* __restrict__ out, int n,
                                           unsigned long long base, int width, unsigned long long stride,
                                           unsigned long long seed, const unsigned long long* __restrict__ step, float p,
                                           float scale) {
    dropout_apply(x, out, n, base, width, stride, seed, step, p, scale);
}

extern "C" __global__ void dropout_backward(const float* __restrict__ dout, float* __restrict__ dx, int n,
                                            unsigned long long base, int width, unsigned long long stride,
                                            unsigned long long seed, const unsigned long long* __restrict__ step, float p,
                                            float scale) {
    dropout_apply(dout, dx, n, base, width, stride, seed, step, p, scale);
}

extern "C" __global__ void dropout_scale(const float* __restrict__ x, float* __restrict__ out, int n, float scale) {
    dropout_scale_body(x, out, n, scale);
}

extern "C" __global__ void dropout_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ out, int n,
                                                unsigned long long base, int width, unsigned long long stride,
                                                unsigned long long seed, const unsigned long long* __restrict__ step, float p,
                                                float scale) {
    dropout_apply(x, out, n, base, width, stride, seed, step, p, scale);
}

extern "C" __global__ void dropout_backward_bf16(const bf16* __restrict__ dout, bf16* __restrict__ dx, int n,
                                                 unsigned long long base, int width, unsigned long long stride,
                                                 unsigned long long seed, const unsigned long long* __restrict__ step, float p,
                                                 float scale) {
    dropout_apply(dout, dx, n, base, width, stride, seed, step, p, scale);
}

extern "C" __global__ void dropout_scale_bf16(const bf16* __restrict__ x, bf16* __restrict__ out, int n,
                                              float scale) {
    dropout_scale_body(x, out, n, scale);
}
