// tanh, the saturating unit the paper compares ReLU against (section 3.1, Figure 1):
// out = tanh(x); dx = dout * (1 - out^2).
//
// Both kernels: one thread per element of the flattened tensor (elementwise, so any layout works),
// grid-stride loop, so the grid size changes speed only. The backward reads the forward's output,
// as the derivative is a function of it, so the layer caches `out` only. Launched with 256 threads
// per block (kernels/ops.py); untuned; run on an H200 by the checks, not timed.

extern "C" __global__ void tanh_forward(const float* __restrict__ x, float* __restrict__ out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        out[i] = tanhf(x[i]);
    }
}

extern "C" __global__ void tanh_backward(const float* __restrict__ out, const float* __restrict__ dout,
                                         float* __restrict__ dx, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        dx[i] = dout[i] * (1.0f - out[i] * out[i]);
    }
}
