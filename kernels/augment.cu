// The paper's training augmentation (section 4.1) on the GPU: from the uint8 crops the loader
// threads copied, the network's input, with the same per-image draws as the CPU path
// (app/data.py augment_params and augment_batch; app/gpu_input.py launches this):
//
//   out[n, ch, r, q] = ((float)crop[n, r, q', ch] - mean[oy_n + r, ox_n + q', ch] + shift[n, ch]) * scale
//   q' = c - 1 - q for a flipped image, else q
//
// crop (B, c, c, 3) uint8 holds each image's c x c window at its offset (oy, ox), as the loader
// copied it out of the S x S image; params (B, 3) int32 hold (oy, ox, flip) per image; the mean is
// the training mean per pixel (mean_side = S: (S, S, 3)) or per channel (mean_side = 1: (1, 1, 3));
// shift (B, 3) float32 is the PCA lighting sum_i p_i alpha_i lambda_i * 255, added when `lighting`
// is 1; scale is the input scale. The operations and their order are the CPU path's, in float32:
// a subtraction, an addition, a multiplication, none of which a compiler may fuse (an FMA fuses a
// product into a sum, and here the sum comes first), so the two paths agree to the bit.
//
// One thread per output element i = ((n*3 + ch)*c + r)*c + q, grid-stride: writes coalesce along
// q. The thread splits its first index and the grid stride into digits (q, r, ch, n) once, before
// the loop, and carries them, as kernels/conv.cu does (an integer division by a run-time value
// costs ~20 instructions on a GPU: docs/kernels.md). T is the output's storage: float, or bf16 for
// a model run with --precision bf16 (kernels/include/precision.h).
// 256 threads per block (kernels/ops.py), untuned; not yet timed on a GPU.
#include "precision.h"

#include "digits.h"

template <class T>
__device__ void augment_body(const unsigned char* __restrict__ crop, const int* __restrict__ params,
                             const float* __restrict__ shift, const float* __restrict__ mean, T* __restrict__ out,
                             int B, int c, int mean_side, int lighting, float scale) {
    const int total = B * 3 * c * c;
    const int stride = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int rest = i;
    int q = index_digit(rest, c), r = index_digit(rest, c), ch = index_digit(rest, 3), n = rest;
    rest = stride;
    const int s_q = index_digit(rest, c), s_r = index_digit(rest, c), s_ch = index_digit(rest, 3), s_n = rest;
    for (; i < total; i += stride) {
        const int oy = params[3 * n], ox = params[3 * n + 1];
        const int col = params[3 * n + 2] ? c - 1 - q : q;
        const float pixel = (float)crop[((n * c + r) * c + col) * 3 + ch];
        const float m = mean_side == 1 ? mean[ch] : mean[((oy + r) * mean_side + ox + col) * 3 + ch];
        float v = pixel - m;
        if (lighting) v += shift[3 * n + ch];
        store(out, i, v * scale);
        q += s_q;
        r += s_r + index_carry(q, c);
        ch += s_ch + index_carry(r, c);
        n += s_n + index_carry(ch, 3);
    }
}

extern "C" __global__ void augment_batch(const unsigned char* __restrict__ crop, const int* __restrict__ params,
                                         const float* __restrict__ shift, const float* __restrict__ mean,
                                         float* __restrict__ out, int B, int c, int mean_side, int lighting,
                                         float scale) {
    augment_body(crop, params, shift, mean, out, B, c, mean_side, lighting, scale);
}

extern "C" __global__ void augment_batch_bf16(const unsigned char* __restrict__ crop, const int* __restrict__ params,
                                              const float* __restrict__ shift, const float* __restrict__ mean,
                                              bf16* __restrict__ out, int B, int c, int mean_side, int lighting,
                                              float scale) {
    augment_body(crop, params, shift, mean, out, B, c, mean_side, lighting, scale);
}
