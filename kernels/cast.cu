// Conversions between float32 and BF16 storage (kernels/include/precision.h), for a model run with
// --precision bf16: its input arrives as float32 and its logits leave as float32 (the loss is
// computed in float32), and its BF16 weight copies are made from the float32 masters once, when
// the model moves to the GPU (the SGD kernel keeps them up to date after that).
//
// Both kernels: one thread per element, grid-stride loop; 256 threads per block (kernels/ops.py),
// untuned, not timed (they touch the input, the logits and, once, the weights).
#include "precision.h"

extern "C" __global__ void cast_to_bf16(const float* __restrict__ x, bf16* __restrict__ out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) store(out, i, x[i]);
}

extern "C" __global__ void cast_to_f32(const bf16* __restrict__ x, float* __restrict__ out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) out[i] = to_f32(x[i]);
}
