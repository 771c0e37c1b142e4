// The paper's SGD rule (section 5) for every parameter tensor in ONE launch:
//
//   v <- momentum * v - decay_mult * weight_decay * lr * w - lr_mult * lr * g
//   w <- w + v
//
// The tensors stay where the layers keep them; a small device table describes them:
//   tensors (T, 3) uint64  device addresses of w, g, v (float32, contiguous, same size)
//   offsets (T + 1) int64  prefix sums of the sizes, offsets[T] = total element count
//   mults   (T, 2) float32 lr_mult, decay_mult
// One thread per element of the virtual concatenation of all tensors, grid-stride; a binary
// search over `offsets` finds the tensor (AlexNet has 16, so 4 steps). lr, momentum and
// weight_decay are launch arguments, so an LR schedule never rewrites the table.
// 64-bit indices: AlexNet has 61M parameters, and the table must not limit bigger models.
// 256 threads per block (kernels/ops.py), untuned; timed per layer on an H200 (docs/benchmarks.md).

extern "C" __global__ void sgd_update(const unsigned long long* __restrict__ tensors,
                                      const long long* __restrict__ offsets, const float* __restrict__ mults,
                                      int T, float lr, float momentum, float weight_decay) {
    const long long total = offsets[T];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int lo = 0, hi = T - 1;  // the last t with offsets[t] <= i
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (offsets[mid] <= i) lo = mid; else hi = mid - 1;
        }
        float* w = (float*)tensors[3 * lo];
        const float* g = (const float*)tensors[3 * lo + 1];
        float* v = (float*)tensors[3 * lo + 2];
        const long long j = i - offsets[lo];
        const float decay = mults[2 * lo + 1] * weight_decay * lr, step = mults[2 * lo] * lr;
        // a term whose coefficient is 0 is left out, not multiplied by 0 (as on the NumPy path):
        // a frozen tensor stays put whatever its gradient holds, and an infinite weight without
        // decay gets no 0 * inf = NaN velocity
        float vj = momentum * v[j];
        if (decay != 0.0f) vj -= decay * w[j];
        if (step != 0.0f) vj -= step * g[j];
        v[j] = vj;
        w[j] += vj;
    }
}
