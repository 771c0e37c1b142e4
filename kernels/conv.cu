// Convolution as a matrix product (im2col), plus the bias kernels it needs around the product.
// The products themselves run in cuBLAS through cupy.matmul (layers/conv.py):
//
//   col  = im2col(x)                         (C*KH*KW, N*OH*OW)
//   y_g  = W_g @ col_g      per group g       (OC/G, N*OH*OW), all groups in one batched matmul
//   out  = conv_bias_forward(y, b)            (N, OC, OH, OW)
//   dy, db = conv_bias_backward(dout) + conv_bias_reduce   dy: (OC, N*OH*OW)
//   dW_g = dy_g @ col_g^T,  dcol_g = W_g^T @ dy_g
//   dx   = col2im(dcol)                       (N, C, H, W)
//
// `col` has one row per (c, kh, kw), r = (c*KH + kh)*KW + kw, and one column per output pixel of
// the whole batch, q = (n*OH + oh)*OW + ow. Putting the batch in the columns makes each group's
// product a single large GEMM (rows c*KH*KW of group g are contiguous), at the price of a
// channel-major result (OC, N, OH*OW), which the bias kernels transpose while they pass over it.
// A Dense layer is the same thing with OH*OW = 1, so it reuses both bias kernels.
// A ReLU right after the layer (inside a Sequential, layers/conv.py) is applied by the bias kernels
// (`relu` = 1): the forward rectifies y + b as it writes it, and the backward multiplies dout by
// [out > 0] as it reads it, so the ReLU costs no pass of its own over the activations.
// T is the storage of activations, gradients and col (float, or bf16 under --precision bf16:
// kernels/include/precision.h); y, the product's output, and b stay float32, as do all sums.
// All layouts contiguous. Every kernel is launched with 256 threads per block (kernels/ops.py);
// untuned; timed per layer on an H200 (docs/benchmarks.md).

#include "precision.h"

// Index arithmetic. A GPU has no integer divider: `v / d` or `v % d` by a d known only at run time
// compiles to about 20 instructions (a float reciprocal and corrections, docs/kernels.md), where
// the load or store it serves is one. So no loop here divides: each thread splits its first index
// and the grid stride into digits once, before its loop, and the loop adds the stride's digits to
// its own with carries, as in written addition. The few quotients the loop bodies need (by the
// stride S of the convolution, by the pixels P of a channel) are carried the same way, as a
// quotient-remainder pair.

#include "digits.h"

// One thread per (c, output pixel q): j = c*NQ + q, q = (n*OH + oh)*OW + ow, grid-stride. It
// writes the KH*KW entries of column q in rows c*KH*KW .. (c+1)*KH*KW - 1, stepping through the
// window and down the rows by additions, so the digits (c, n, oh, ow) it carries serve KH*KW
// writes. Adjacent threads take adjacent columns: every write of a warp is one coalesced row
// segment. Padding reads as 0.
template <class T>
__device__ void conv_im2col_body(const T* __restrict__ x, T* __restrict__ col, int N, int C, int H, int W, int KH,
                                 int KW, int S, int P, int OH, int OW) {
    const int NQ = N * OH * OW;
    const int total = C * NQ;
    const int stride = blockDim.x * gridDim.x;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int rest = j;
    int ow = index_digit(rest, OW), oh = index_digit(rest, OH), n = index_digit(rest, N), c = rest;
    rest = stride;
    const int s_ow = index_digit(rest, OW), s_oh = index_digit(rest, OH), s_n = index_digit(rest, N), s_c = rest;
    for (; j < total; j += stride) {
        const T* plane = x + (n * C + c) * H * W;
        T* dst = col + (c * KH * KW) * NQ + (j - c * NQ);  // row (c, 0, 0), column q; the next row is NQ on
        const int h0 = oh * S - P, w0 = ow * S - P;
        for (int kh = 0; kh < KH; ++kh) {
            const int h = h0 + kh;
            const bool row_inside = h >= 0 && h < H;
            for (int kw = 0; kw < KW; ++kw, dst += NQ) {
                const int w = w0 + kw;
                if (row_inside && w >= 0 && w < W) {
                    *dst = plane[h * W + w];  // a copy: BF16 stays its bits
                } else {
                    store(dst, 0, 0.0f);
                }
            }
        }
        ow += s_ow;
        oh += s_oh + index_carry(ow, OW);
        n += s_n + index_carry(oh, OH);
        c += s_c + index_carry(n, N);
    }
}

// One thread per INPUT element (n, c, h, w), grid-stride: it gathers every col entry that was
// copied from it, i.e. the (kh, kw) with h = oh*S - P + kh for an integer 0 <= oh < OH (likewise
// w). Writing h + P = oh_top*S + kh_top, those are kh = kh_top, kh_top + S, ... with oh = oh_top,
// oh_top - 1, ... The thread carries (oh_top, kh_top) and (ow_top, kw_top) as pairs along with its
// digits (n, c, h, w), so no element divides by S.
// Gathering instead of scattering through atomicAdd keeps the sum order fixed (reproducible dx).
template <class T>
__device__ void conv_col2im_body(const T* __restrict__ col, T* __restrict__ dx, int N, int C, int H, int W, int KH,
                                 int KW, int S, int P, int OH, int OW) {
    const int NQ = N * OH * OW;
    const int total = N * C * H * W;
    const int stride = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int rest = i;
    int w = index_digit(rest, W), h = index_digit(rest, H), c = index_digit(rest, C), n = rest;
    rest = stride;
    const int s_w = index_digit(rest, W), s_h = index_digit(rest, H), s_c = index_digit(rest, C), s_n = rest;
    IndexQR hp = index_divmod(h + P, S), wp = index_divmod(w + P, S);  // (oh_top, kh_top), (ow_top, kw_top)
    // what the pairs move by: the stride's digit, one row (a carry in), back one plane or row (a wrap)
    const IndexQR hp_step = index_divmod(s_h, S), wp_step = index_divmod(s_w, S);
    const IndexQR hp_one = {S == 1, S != 1};  // 1 = 1*S + 0 or 0*S + 1
    const IndexQR hp_wrap = index_divmod(-H, S), wp_wrap = index_divmod(-W, S);
    for (; i < total; i += stride) {
        const T* src = col + (c * KH * KW) * NQ + n * OH * OW;  // row (c, 0, 0), image n's first column
        float sum = 0.0f;
        for (int kh = hp.r, oh = hp.q; kh < KH && oh >= 0; kh += S, --oh) {
            if (oh >= OH) continue;
            for (int kw = wp.r, ow = wp.q; kw < KW && ow >= 0; kw += S, --ow) {
                if (ow >= OW) continue;
                sum += to_f32(src[(kh * KW + kw) * NQ + oh * OW + ow]);
            }
        }
        store(dx, i, sum);
        w += s_w;
        wp = index_add(wp, wp_step, S);
        const int carry_w = index_carry(w, W);
        if (carry_w) wp = index_add(wp, wp_wrap, S);
        h += s_h + carry_w;
        hp = index_add(hp, hp_step, S);
        if (carry_w) hp = index_add(hp, hp_one, S);
        const int carry_h = index_carry(h, H);
        if (carry_h) hp = index_add(hp, hp_wrap, S);
        c += s_c + carry_h;
        n += s_n + index_carry(c, C);
    }
}

// out[n, c, p] = y[c, n, p] + b[c], rectified when `relu`: adds the bias (and applies the ReLU
// after the layer) and moves the GEMM's channel-major result into NCHW in one pass. A NaN stays NaN
// through the ReLU, as in relu.cu. One thread per OUTPUT element i = (n*C + c)*P + p, grid-stride, its digits
// (n, c, p) carried across the loop (no division per element): writes coalesce, and reads do too
// within each run of P pixels.
template <class T>
__device__ void conv_bias_forward_body(const float* __restrict__ y, const float* __restrict__ b, T* __restrict__ out,
                                       int N, int C, int P, int relu) {
    const int total = N * C * P;
    const int stride = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int rest = i;
    int p = index_digit(rest, P), c = index_digit(rest, C), n = rest;
    rest = stride;
    const int s_p = index_digit(rest, P), s_c = index_digit(rest, C), s_n = rest;
    for (; i < total; i += stride) {
        const float v = y[(c * N + n) * P + p] + b[c];
        store(out, i, relu && v <= 0.0f ? 0.0f : v);
        p += s_p;
        c += s_c + index_carry(p, P);
        n += s_n + index_carry(c, C);
    }
}

// Sum of v over the block, returned to every thread; see softmax_xent.cu for the scheme (warp
// butterfly, one partial per warp in dynamic shared memory, trailing barrier for reuse).
__device__ float conv_block_sum(float v, float* partials) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if ((threadIdx.x & 31) == 0) partials[threadIdx.x >> 5] = v;
    __syncthreads();
    v = partials[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) v += partials[w];
    __syncthreads();
    return v;
}

// dy[c, n, p] = dout[n, c, p] (the transposed copy is exactly the GEMM operand the weight and input
// gradients need) and the bias gradient's first pass, in one read of dout. With `relu`, dout is
// first multiplied by [out > 0] (the backward of the ReLU after the layer; `out` is the layer's
// rectified output), zero included as in relu.cu, so a NaN dout at a unit that is off stays NaN. Channel c's N*P entries
// are cut into `slices` equal runs; block (s, c) of a 2-D grid (grid-stride along both axes) copies
// run s and writes its sum to partial[c * slices + s]. conv_bias_reduce then adds each channel's
// partials in a fixed order, so db is bit-reproducible and no atomics are needed. Slicing keeps
// every SM busy where one block per channel would not (conv1 has 96 channels, an H100 132 SMs);
// the launcher picks `slices` from the sizes alone, never from the grid. Needs blockDim.x a
// multiple of 32 and blockDim.x / 32 floats of dynamic shared memory.
template <class T>
__device__ void conv_bias_backward_body(const T* __restrict__ dout, const T* __restrict__ out, T* __restrict__ dy,
                                        float* __restrict__ partial, int N, int C, int P, int slices, int relu,
                                        float* partials) {
    const int NP = N * P;
    const int run = (NP + slices - 1) / slices;
    // Entry j of a channel is dout's (n, p) = (j / P, j % P): carried as a pair from the thread's
    // first entry of its block's first run, by blockDim.x to its next entry, by gridDim.x runs to
    // the same place in its block's next run. (Block indices past `slices` run no loop; the min
    // keeps their unused products in range.)
    const int first_run = (int)blockIdx.x < slices ? (int)blockIdx.x : slices;
    const int run_step = (int)gridDim.x < slices ? (int)gridDim.x : slices;
    const IndexQR first = index_divmod(first_run * run + threadIdx.x, P);
    const IndexQR next = index_divmod(blockDim.x, P), next_run = index_divmod(run_step * run, P);
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        IndexQR start = first;
        for (int s = blockIdx.x; s < slices; s += gridDim.x) {
            const int end = (s + 1) * run < NP ? (s + 1) * run : NP;
            float sum = 0.0f;
            IndexQR np = start;
            for (int j = s * run + threadIdx.x; j < end; j += blockDim.x) {
                const int o = (np.q * C + c) * P + np.r;
                const float v = to_f32(dout[o]) * (relu && !(to_f32(out[o]) > 0.0f) ? 0.0f : 1.0f);
                store(dy, (long long)c * NP + j, v);
                sum += v;
                np = index_add(np, next, P);
            }
            sum = conv_block_sum(sum, partials);
            if (threadIdx.x == 0) partial[c * slices + s] = sum;
            start = index_add(start, next_run, P);
        }
    }
}

extern "C" __global__ void conv_im2col(const float* __restrict__ x, float* __restrict__ col, int N, int C, int H,
                                       int W, int KH, int KW, int S, int P, int OH, int OW) {
    conv_im2col_body(x, col, N, C, H, W, KH, KW, S, P, OH, OW);
}

extern "C" __global__ void conv_col2im(const float* __restrict__ col, float* __restrict__ dx, int N, int C, int H,
                                       int W, int KH, int KW, int S, int P, int OH, int OW) {
    conv_col2im_body(col, dx, N, C, H, W, KH, KW, S, P, OH, OW);
}

extern "C" __global__ void conv_bias_forward(const float* __restrict__ y, const float* __restrict__ b,
                                             float* __restrict__ out, int N, int C, int P, int relu) {
    conv_bias_forward_body(y, b, out, N, C, P, relu);
}

// Needs blockDim.x a multiple of 32 and blockDim.x / 32 floats of dynamic shared memory.
extern "C" __global__ void conv_bias_backward(const float* __restrict__ dout, const float* __restrict__ out,
                                              float* __restrict__ dy, float* __restrict__ partial, int N, int C,
                                              int P, int slices, int relu) {
    extern __shared__ float partials[];
    conv_bias_backward_body(dout, out, dy, partial, N, C, P, slices, relu, partials);
}

extern "C" __global__ void conv_im2col_bf16(const bf16* __restrict__ x, bf16* __restrict__ col, int N, int C, int H,
                                            int W, int KH, int KW, int S, int P, int OH, int OW) {
    conv_im2col_body(x, col, N, C, H, W, KH, KW, S, P, OH, OW);
}

extern "C" __global__ void conv_col2im_bf16(const bf16* __restrict__ col, bf16* __restrict__ dx, int N, int C,
                                            int H, int W, int KH, int KW, int S, int P, int OH, int OW) {
    conv_col2im_body(col, dx, N, C, H, W, KH, KW, S, P, OH, OW);
}

extern "C" __global__ void conv_bias_forward_bf16(const float* __restrict__ y, const float* __restrict__ b,
                                                  bf16* __restrict__ out, int N, int C, int P, int relu) {
    conv_bias_forward_body(y, b, out, N, C, P, relu);
}

extern "C" __global__ void conv_bias_backward_bf16(const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                                   bf16* __restrict__ dy, float* __restrict__ partial, int N, int C,
                                                   int P, int slices, int relu) {
    extern __shared__ float partials[];
    conv_bias_backward_body(dout, out, dy, partial, N, C, P, slices, relu, partials);
}

// db[c] = sum_s partial[c * slices + s], s in order. One thread per channel, grid-stride.
extern "C" __global__ void conv_bias_reduce(const float* __restrict__ partial, float* __restrict__ db, int C,
                                            int slices) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += blockDim.x * gridDim.x) {
        float sum = 0.0f;
        for (int s = 0; s < slices; ++s) sum += partial[c * slices + s];
        db[c] = sum;
    }
}
