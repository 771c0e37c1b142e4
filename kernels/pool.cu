// Max pooling, K x K windows with stride S, floor mode, no padding (paper section 3.4: K=3, S=2,
// overlapping). OH = (H - K) / S + 1, so every window lies inside the input.
//
// Layout NCHW, contiguous; the N*C planes are independent, so both kernels index planes as nc.
// The argmax is the offset kh*K + kw of the maximum inside its window, one byte per output
// (K <= 16), the same cache the NumPy path keeps (layers/pool.py). T is the storage (float, or
// bf16: kernels/include/precision.h); comparisons and sums are float32, and a BF16 maximum is
// copied exactly.
// 256 threads per block (kernels/ops.py), untuned; timed per layer on an H200 (docs/benchmarks.md).
//
// Index arithmetic. A GPU has no integer divider: `v / d` or `v % d` by a d known only at run time
// compiles to about 20 instructions (docs/kernels.md). So no loop here divides: each thread splits
// its first index and the grid stride into digits once, before its loop, and the loop adds the
// stride's digits to its own with carries, as in written addition; the backward carries h / S and
// w / S the same way, as quotient-remainder pairs.

#include "precision.h"

#include "digits.h"

// One thread per output element i = (nc*OH + oh)*OW + ow, grid-stride, its digits carried across
// the loop. Writes the maximum and its window offset; ties keep the first maximum in row-major
// window order (strict >), as layers/pool.py and PyTorch do. A NaN is the maximum of any window that
// holds one (np.maximum's rule, and PyTorch's), the first NaN if there are several; with `v > best`
// alone a NaN after the first element was lost.
template <class T>
__device__ void maxpool_forward_body(const T* __restrict__ x, T* __restrict__ out, unsigned char* __restrict__ argmax,
                                     int NC, int H, int W, int OH, int OW, int K, int S) {
    const int total = NC * OH * OW;
    const int stride = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int rest = i;
    int ow = index_digit(rest, OW), oh = index_digit(rest, OH), nc = rest;
    rest = stride;
    const int s_ow = index_digit(rest, OW), s_oh = index_digit(rest, OH), s_nc = rest;
    for (; i < total; i += stride) {
        const T* window = x + nc * H * W + (oh * S) * W + ow * S;  // its top-left input element
        float best = to_f32(window[0]);
        int best_offset = 0;
        for (int kh = 0; kh < K; ++kh) {
            for (int kw = 0; kw < K; ++kw) {
                const float v = to_f32(window[kh * W + kw]);
                if (v > best || (v != v && best == best)) {
                    best = v;
                    best_offset = kh * K + kw;
                }
            }
        }
        store(out, i, best);
        argmax[i] = (unsigned char)best_offset;
        ow += s_ow;
        oh += s_oh + index_carry(ow, OW);
        nc += s_nc + index_carry(oh, OH);
    }
}

// One thread per INPUT element i = (nc*H + h)*W + w, grid-stride: it gathers dout from the windows
// that cover it and whose argmax is this element, i.e. whose stored offset is kh*K + kw with
// kh = h - oh*S, kw = w - ow*S. Window oh covers h when 0 <= kh < K. Writing h = hq*S + hr, those
// windows lie among oh = hq - span .. hq, span = (K - 1) / S, at kh = hr + span*S .. hr: a loop of
// fixed length that skips the candidates outside the output or with kh >= K, in ascending oh (the
// order of the sum). The thread carries (hq, hr) and (wq, wr) along with its digits, so no element
// divides. Gathering instead of scattering dout through atomicAdd keeps the sum order fixed, so dx
// is bit-reproducible. Every covering window's dout is multiplied by its derivative, 1 at the argmax
// and 0 elsewhere, as the NumPy path does: a NaN or infinite dout reaches its whole window as NaN,
// not only the argmax.
template <class T>
__device__ void maxpool_backward_body(const T* __restrict__ dout, const unsigned char* __restrict__ argmax,
                                      T* __restrict__ dx, int NC, int H, int W, int OH, int OW, int K, int S) {
    const int total = NC * H * W;
    const int stride = blockDim.x * gridDim.x;
    const int span = (K - 1) / S;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int rest = i;
    int w = index_digit(rest, W), h = index_digit(rest, H), nc = rest;
    rest = stride;
    const int s_w = index_digit(rest, W), s_h = index_digit(rest, H), s_nc = rest;
    IndexQR hs = index_divmod(h, S), ws = index_divmod(w, S);  // (hq, hr), (wq, wr)
    // what the pairs move by: the stride's digit, one row (a carry in), back one plane or row (a wrap)
    const IndexQR hs_step = index_divmod(s_h, S), ws_step = index_divmod(s_w, S);
    const IndexQR hs_one = {S == 1, S != 1};  // 1 = 1*S + 0 or 0*S + 1
    const IndexQR hs_wrap = index_divmod(-H, S), ws_wrap = index_divmod(-W, S);
    for (; i < total; i += stride) {
        const T* d = dout + nc * OH * OW;
        const unsigned char* offsets = argmax + nc * OH * OW;
        float sum = 0.0f;
        for (int oh = hs.q - span, kh = hs.r + span * S; oh <= hs.q; ++oh, kh -= S) {
            if (oh < 0 || oh >= OH || kh >= K) continue;
            for (int ow = ws.q - span, kw = ws.r + span * S; ow <= ws.q; ++ow, kw -= S) {
                if (ow < 0 || ow >= OW || kw >= K) continue;
                sum += to_f32(d[oh * OW + ow]) * (offsets[oh * OW + ow] == kh * K + kw ? 1.0f : 0.0f);
            }
        }
        store(dx, i, sum);
        w += s_w;
        ws = index_add(ws, ws_step, S);
        const int carry_w = index_carry(w, W);
        if (carry_w) ws = index_add(ws, ws_wrap, S);
        h += s_h + carry_w;
        hs = index_add(hs, hs_step, S);
        if (carry_w) hs = index_add(hs, hs_one, S);
        const int carry_h = index_carry(h, H);
        if (carry_h) hs = index_add(hs, hs_wrap, S);
        nc += s_nc + carry_h;
    }
}

extern "C" __global__ void maxpool_forward(const float* __restrict__ x, float* __restrict__ out,
                                           unsigned char* __restrict__ argmax, int NC, int H, int W, int OH, int OW,
                                           int K, int S) {
    maxpool_forward_body(x, out, argmax, NC, H, W, OH, OW, K, S);
}

extern "C" __global__ void maxpool_backward(const float* __restrict__ dout, const unsigned char* __restrict__ argmax,
                                            float* __restrict__ dx, int NC, int H, int W, int OH, int OW, int K,
                                            int S) {
    maxpool_backward_body(dout, argmax, dx, NC, H, W, OH, OW, K, S);
}

extern "C" __global__ void maxpool_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ out,
                                                unsigned char* __restrict__ argmax, int NC, int H, int W, int OH,
                                                int OW, int K, int S) {
    maxpool_forward_body(x, out, argmax, NC, H, W, OH, OW, K, S);
}

extern "C" __global__ void maxpool_backward_bf16(const bf16* __restrict__ dout,
                                                 const unsigned char* __restrict__ argmax, bf16* __restrict__ dx,
                                                 int NC, int H, int W, int OH, int OW, int K, int S) {
    maxpool_backward_body(dout, argmax, dx, NC, H, W, OH, OW, K, S);
}
