// tanh, the saturating unit the paper compares ReLU against (section 3.1, Figure 1):
// out = tanh(x); dx = dout * (1 - out^2).
//
// Both kernels: one thread per element of the flattened tensor (elementwise, so any layout works),
// grid-stride loop, so the grid size changes speed only. The backward reads the forward's output,
// as the derivative is a function of it, so the layer caches `out` only. T is the storage (float,
// or bf16: kernels/include/precision.h); the arithmetic is float32. Launched with 256 threads
// per block (kernels/ops.py); untuned; run on an H200 by the checks, not timed.
#include "precision.h"

template <class T>
__device__ void tanh_forward_body(const T* __restrict__ x, T* __restrict__ out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        store(out, i, tanhf(to_f32(x[i])));
    }
}

template <class T>
__device__ void tanh_backward_body(const T* __restrict__ out, const T* __restrict__ dout, T* __restrict__ dx,
                                   int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const float o = to_f32(out[i]);
        store(dx, i, to_f32(dout[i]) * (1.0f - o * o));
    }
}

extern "C" __global__ void tanh_forward(const float* __restrict__ x, float* __restrict__ out, int n) {
    tanh_forward_body(x, out, n);
}

extern "C" __global__ void tanh_backward(const float* __restrict__ out, const float* __restrict__ dout,
                                         float* __restrict__ dx, int n) {
    tanh_backward_body(out, dout, dx, n);
}

extern "C" __global__ void tanh_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ out, int n) {
    tanh_forward_body(x, out, n);
}

extern "C" __global__ void tanh_backward_bf16(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                              bf16* __restrict__ dx, int n) {
    tanh_backward_body(out, dout, dx, n);
}
