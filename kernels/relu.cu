// ReLU: out = max(0, x); dx = dout * [out > 0].
//
// A NaN input stays NaN (as np.maximum and PyTorch give it), so a diverging net shows NaN all the
// way to the loss instead of a ReLU turning it into 0. The backward multiplies by the derivative,
// zero included, as the NumPy path does: a NaN or infinite dout at a unit that is off gives NaN.
//
// Both kernels: one thread per element of the flattened tensor (the op is elementwise, so any
// layout works), grid-stride loop, so the grid size changes speed only. Launched with 256 threads
// per block (kernels/ops.py); untuned; timed per layer on an H200 (docs/benchmarks.md).

extern "C" __global__ void relu_forward(const float* __restrict__ x, float* __restrict__ out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        out[i] = x[i] <= 0.0f ? 0.0f : x[i];  // not x > 0 ? x : 0, which maps NaN to 0
    }
}

// Reads the forward output rather than the input: out > 0 exactly where x > 0, and the layer
// caches `out` because the next layer keeps it alive anyway.
extern "C" __global__ void relu_backward(const float* __restrict__ out, const float* __restrict__ dout,
                                         float* __restrict__ dx, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        dx[i] = dout[i] * (out[i] > 0.0f ? 1.0f : 0.0f);
    }
}
