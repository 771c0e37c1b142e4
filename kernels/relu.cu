// ReLU: out = max(0, x); dx = dout * [out > 0].
//
// A NaN input stays NaN (as np.maximum and PyTorch give it), so a diverging net shows NaN all the
// way to the loss instead of a ReLU turning it into 0. The backward multiplies by the derivative,
// zero included, as the NumPy path does: a NaN or infinite dout at a unit that is off gives NaN.
//
// Inside a Sequential on the GPU a ReLU that follows a Conv2d or Dense never launches these: the
// layer's bias kernel applies it (conv_bias_forward / conv_bias_backward, kernels/conv.cu), the same
// arithmetic on the same values. These serve a ReLU anywhere else.
//
// Both kernels: one thread per element of the flattened tensor (the op is elementwise, so any
// layout works), grid-stride loop, so the grid size changes speed only. T is the storage (float,
// or bf16 under --precision bf16: kernels/include/precision.h); the arithmetic is float32.
// Launched with 256 threads per block (kernels/ops.py); untuned; timed per layer on an H200
// (docs/benchmarks.md).
#include "precision.h"

template <class T>
__device__ void relu_forward_body(const T* __restrict__ x, T* __restrict__ out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const float v = to_f32(x[i]);
        store(out, i, v <= 0.0f ? 0.0f : v);  // not v > 0 ? v : 0, which maps NaN to 0
    }
}

// Reads the forward output rather than the input: out > 0 exactly where x > 0, and the layer
// caches `out` because the next layer keeps it alive anyway.
template <class T>
__device__ void relu_backward_body(const T* __restrict__ out, const T* __restrict__ dout, T* __restrict__ dx,
                                   int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        store(dx, i, to_f32(dout[i]) * (to_f32(out[i]) > 0.0f ? 1.0f : 0.0f));
    }
}

extern "C" __global__ void relu_forward(const float* __restrict__ x, float* __restrict__ out, int n) {
    relu_forward_body(x, out, n);
}

extern "C" __global__ void relu_backward(const float* __restrict__ out, const float* __restrict__ dout,
                                         float* __restrict__ dx, int n) {
    relu_backward_body(out, dout, dx, n);
}

extern "C" __global__ void relu_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ out, int n) {
    relu_forward_body(x, out, n);
}

extern "C" __global__ void relu_backward_bf16(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                              bf16* __restrict__ dx, int n) {
    relu_backward_body(out, dout, dx, n);
}
