// ReLU: out = max(0, x); dx = dout * [out > 0].
//
// Both kernels: one thread per element of the flattened tensor (the op is elementwise, so any
// layout works), grid-stride loop, so the grid size changes speed only. Launched with 256 threads
// per block (kernels/ops.py); untuned; timed per layer on an H200 (docs/benchmarks.md).

extern "C" __global__ void relu_forward(const float* __restrict__ x, float* __restrict__ out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        out[i] = x[i] > 0.0f ? x[i] : 0.0f;
    }
}

// Reads the forward output rather than the input: out > 0 exactly where x > 0, and the layer
// caches `out` because the next layer keeps it alive anyway.
extern "C" __global__ void relu_backward(const float* __restrict__ out, const float* __restrict__ dout,
                                         float* __restrict__ dx, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        dx[i] = out[i] > 0.0f ? dout[i] : 0.0f;
    }
}
