// Softmax cross-entropy over logits z (N, K) row-major, integer labels y (N,) int32:
//
//   p[n, k] = exp(z[n, k] - m_n) / sum_j exp(z[n, j] - m_n),   m_n = max_j z[n, j]
//   loss    = (1/N) sum_n (log sum_j exp(z[n, j] - m_n) - (z[n, y_n] - m_n))
//   dz      = (p - onehot(y)) / N
//
// The row loss subtracts the shifted logit z[y] - m, never adds m itself: log(sum) + m - z[y]
// rounds at m's scale first, so at logits of 1e4 it was 2.4e-4 off a loss of 0.44 (half an ulp
// of 1e4), while the shifted form is as accurate as log(sum) itself, whatever m is.
// A label outside [0, K) makes that row's loss NaN (no host round trip to validate labels), so
// the trainer's NaN check stops the run.

// Sum (is_max = false) or maximum (is_max = true) of v over the block, returned to every thread.
// Butterfly shuffles reduce each warp, lane 0 stores the warp's partial in shared memory, and
// every thread then folds the partials itself (at most 32, broadcast reads). Needs blockDim.x a
// multiple of 32 and blockDim.x / 32 floats of dynamic shared memory. The trailing barrier lets
// the caller reuse `partials` for the next reduction.
__device__ float softmax_block_reduce(float v, bool is_max, float* partials) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    if ((threadIdx.x & 31) == 0) partials[threadIdx.x >> 5] = v;
    __syncthreads();
    v = partials[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) v = is_max ? fmaxf(v, partials[w]) : v + partials[w];
    __syncthreads();
    return v;
}

// One block per row n (grid-stride over rows), threads stride over the K classes: a row max, a
// row sum of exponentials, then p written in one more sweep, and the row's loss in row_loss[n].
// 256 threads per block (kernels/ops.py), untuned; timed per layer on an H200 (docs/benchmarks.md).
extern "C" __global__ void softmax_xent_forward(const float* __restrict__ logits, const int* __restrict__ labels,
                                                float* __restrict__ probs, float* __restrict__ row_loss,
                                                int N, int K) {
    extern __shared__ float partials[];
    for (int n = blockIdx.x; n < N; n += gridDim.x) {
        const float* z = logits + (long long)n * K;
        float* p = probs + (long long)n * K;
        float m = -3.402823466e+38f;  // -FLT_MAX: NVRTC has neither <cfloat> nor INFINITY
        for (int k = threadIdx.x; k < K; k += blockDim.x) m = fmaxf(m, z[k]);
        m = softmax_block_reduce(m, true, partials);
        float sum = 0.0f;
        for (int k = threadIdx.x; k < K; k += blockDim.x) sum += expf(z[k] - m);
        sum = softmax_block_reduce(sum, false, partials);
        const float inv_sum = 1.0f / sum;
        for (int k = threadIdx.x; k < K; k += blockDim.x) p[k] = expf(z[k] - m) * inv_sum;
        if (threadIdx.x == 0) {
            const int y = labels[n];
            row_loss[n] = (y >= 0 && y < K) ? logf(sum) - (z[y] - m) : __int_as_float(0x7fc00000);
        }
    }
}

// loss = (1/N) sum_n row_loss[n], by ONE block (launched with a grid of 1): its threads stride over
// the rows and the block sum folds them in an order fixed by the block size alone, so the loss is
// bit-reproducible (an atomicAdd per row would add in whatever order the blocks finish).
extern "C" __global__ void softmax_xent_mean(const float* __restrict__ row_loss, float* __restrict__ loss, int N) {
    extern __shared__ float partials[];
    float sum = 0.0f;
    for (int n = threadIdx.x; n < N; n += blockDim.x) sum += row_loss[n];
    sum = softmax_block_reduce(sum, false, partials);
    if (blockIdx.x == 0 && threadIdx.x == 0) loss[0] = sum / (float)N;
}

// One thread per element (n, k) of dz, grid-stride. The thread splits its first element and the grid
// stride into (n, k) once, before the loop, and the loop adds the stride's pair with a carry: an
// integer division by a run-time value costs ~20 instructions on a GPU (docs/kernels.md).
// Launched with 256 threads per block; untuned; timed per layer on an H200 (docs/benchmarks.md).
extern "C" __global__ void softmax_xent_backward(const float* __restrict__ probs, const int* __restrict__ labels,
                                                 float* __restrict__ dlogits, int N, int K, float inv_n) {
    const int total = N * K;
    const int stride = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int n = i / K, k = i % K;
    const int s_n = stride / K, s_k = stride % K;
    for (; i < total; i += stride) {
        const float onehot = k == labels[n] ? 1.0f : 0.0f;
        dlogits[i] = (probs[i] - onehot) * inv_n;
        n += s_n;
        k += s_k;
        if (k >= K) {
            k -= K;
            ++n;
        }
    }
}
