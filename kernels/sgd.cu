// The paper's SGD rule (section 5) for every parameter tensor in ONE launch:
//
//   v <- momentum * v - decay_mult * weight_decay * lr * w - lr_mult * lr * g
//   w <- w + v
//
// The tensors stay where the layers keep them; a small device table describes them:
//   tensors (T, 4) uint64  device addresses of w, g, v (float32, contiguous, same size) and of w's
//                          BF16 copy (0: none; --precision bf16 keeps one for the products)
//   offsets (T + 1) int64  prefix sums of the tensors' counts of 4-element groups, ceil(size / 4)
//   sizes   (T) int64      each tensor's element count
//   mults   (T, 2) float32 lr_mult, decay_mult
// One thread per group of 4 consecutive elements of one tensor, over the virtual concatenation of
// all groups, grid-stride; a binary search over `offsets` finds the tensor (AlexNet has 16, so 4
// steps). A whole group whose tensors are 16-byte aligned is read and written with one float4
// load or store per array (and one 8-byte store of its four BF16 values): the update moves 12
// bytes per parameter each way and is bound by memory, so fewer, wider accesses are what it
// needs. A tensor's last group when its size is not a multiple of 4, or a misaligned tensor, goes
// element by element. The arithmetic per element is the same in both ways (sgd_element), so the
// result does not depend on which was taken.
// lr is read from device memory, not passed by value: a training step captured as a CUDA graph
// (engine/graphs.py) replays its launches with their arguments frozen, and the learning rate
// changes between steps (engine/optim.py writes it). momentum and weight_decay are launch
// arguments, so an LR schedule never rewrites the table.
// The BF16 copy is w rounded to nearest even (kernels/include/precision.h): the weights the
// next step's BF16 products read, written here so no separate pass converts them.
// 64-bit indices: AlexNet has 61M parameters, and the table must not limit bigger models.
// 256 threads per block (kernels/ops.py), untuned; timed per layer on an H200 (docs/benchmarks.md).
#include "precision.h"

// One element: a term whose coefficient is 0 is left out, not multiplied by 0 (as on the NumPy
// path): a frozen tensor stays put whatever its gradient holds, and an infinite weight without
// decay gets no 0 * inf = NaN velocity.
__device__ __forceinline__ void sgd_element(float& w, float g, float& v, float momentum, float decay, float step) {
    float vj = momentum * v;
    if (decay != 0.0f) vj -= decay * w;
    if (step != 0.0f) vj -= step * g;
    v = vj;
    w += vj;
}

extern "C" __global__ void sgd_update(const unsigned long long* __restrict__ tensors,
                                      const long long* __restrict__ offsets, const long long* __restrict__ sizes,
                                      const float* __restrict__ mults, int T, const float* __restrict__ lr,
                                      float momentum, float weight_decay) {
    const long long total = offsets[T];
    const long long stride = (long long)blockDim.x * gridDim.x;
    const float rate = *lr;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int lo = 0, hi = T - 1;  // the last t with offsets[t] <= i
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (offsets[mid] <= i) lo = mid; else hi = mid - 1;
        }
        float* w = (float*)tensors[4 * lo];
        const float* g = (const float*)tensors[4 * lo + 1];
        float* v = (float*)tensors[4 * lo + 2];
        bf16* low = (bf16*)tensors[4 * lo + 3];
        const long long j = 4 * (i - offsets[lo]);  // the group's first element
        const long long n = sizes[lo] - j < 4 ? sizes[lo] - j : 4;
        const float decay = mults[2 * lo + 1] * weight_decay * rate, step = mults[2 * lo] * rate;
        const bool aligned = ((tensors[4 * lo] | tensors[4 * lo + 1] | tensors[4 * lo + 2]) & 15ull) == 0 &&
                             (tensors[4 * lo + 3] & 7ull) == 0;
        if (n == 4 && aligned) {
            float4 w4 = *(const float4*)(w + j);
            const float4 g4 = *(const float4*)(g + j);
            float4 v4 = *(const float4*)(v + j);
            sgd_element(w4.x, g4.x, v4.x, momentum, decay, step);
            sgd_element(w4.y, g4.y, v4.y, momentum, decay, step);
            sgd_element(w4.z, g4.z, v4.z, momentum, decay, step);
            sgd_element(w4.w, g4.w, v4.w, momentum, decay, step);
            *(float4*)(v + j) = v4;
            *(float4*)(w + j) = w4;
            if (low != 0) {
                ushort4 b4;
                b4.x = f32_to_bf16(w4.x).bits;
                b4.y = f32_to_bf16(w4.y).bits;
                b4.z = f32_to_bf16(w4.z).bits;
                b4.w = f32_to_bf16(w4.w).bits;
                *(ushort4*)(low + j) = b4;
            }
        } else {
            for (long long e = j; e < j + n; ++e) {
                float we = w[e], ve = v[e];
                sgd_element(we, g[e], ve, momentum, decay, step);
                v[e] = ve;
                w[e] = we;
                if (low != 0) store(low, e, we);
            }
        }
    }
}
