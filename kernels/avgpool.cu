// Adaptive average pooling to OH x OW bins (torchvision's AlexNet, before fc6; layers/avgpool.py).
//
// Bins follow PyTorch: output row i averages input rows [floor(i*H/OH), ceil((i+1)*H/OH)), columns
// likewise, so neighbouring bins may overlap and OH > H repeats rows. Layout NCHW, contiguous; the
// N*C planes are independent, so both kernels index planes as nc. No cache: the layer is linear.
// T is the storage (float, or bf16: kernels/include/precision.h); sums are float32.
// 256 threads per block (kernels/ops.py), untuned; run on an H200 by the checks, not timed.
//
// Index arithmetic. A GPU has no integer divider: `v / d` or `v % d` by a d known only at run time
// compiles to about 20 instructions (docs/kernels.md). So no loop here divides: each thread splits
// its first index and the grid stride into digits once, before its loop, and the loop adds the
// stride's digits to its own with carries, as in written addition. The bin edges, quotients such
// as oh*H / OH, are carried the same way, as quotient-remainder pairs moved by precomputed pairs.

#include "precision.h"

#include "digits.h"

// The end of a bin, ceil((i+1)*size / out_size), from its start i*size / out_size as a pair and
// `one` = size / out_size as a pair.
__device__ __forceinline__ int avg_bin_end(IndexQR start, IndexQR one, int out_size) {
    const IndexQR next = index_add(start, one, out_size);
    return next.q + (next.r > 0);
}

// One thread per output element i = (nc*OH + oh)*OW + ow, grid-stride: the mean of its bin. The
// thread carries its digits and its bin's first row and column, oh*H / OH and ow*W / OW, as pairs.
template <class T>
__device__ void avgpool_forward_body(const T* __restrict__ x, T* __restrict__ out, int NC, int H, int W, int OH,
                                     int OW) {
    const int total = NC * OH * OW;
    const int stride = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int rest = i;
    int ow = index_digit(rest, OW), oh = index_digit(rest, OH), nc = rest;
    rest = stride;
    const int s_ow = index_digit(rest, OW), s_oh = index_digit(rest, OH), s_nc = rest;
    IndexQR h_start = index_divmod(oh * H, OH), w_start = index_divmod(ow * W, OW);
    // what the starts move by: the stride's digit of bins, one bin (also a carry in)
    const IndexQR h_step = index_divmod(s_oh * H, OH), w_step = index_divmod(s_ow * W, OW);
    const IndexQR h_one = index_divmod(H, OH), w_one = index_divmod(W, OW);
    for (; i < total; i += stride) {
        const int h0 = h_start.q, h1 = avg_bin_end(h_start, h_one, OH);
        const int w0 = w_start.q, w1 = avg_bin_end(w_start, w_one, OW);
        const T* plane = x + nc * H * W;
        float sum = 0.0f;
        for (int h = h0; h < h1; ++h) {
            for (int w = w0; w < w1; ++w) sum += to_f32(plane[h * W + w]);
        }
        store(out, i, sum / (float)((h1 - h0) * (w1 - w0)));
        ow += s_ow;
        w_start = index_add(w_start, w_step, OW);
        const int carry_w = index_carry(ow, OW);
        if (carry_w) w_start.q -= W;  // back OW bins: OW*W / OW = W columns exactly
        oh += s_oh + carry_w;
        h_start = index_add(h_start, h_step, OH);
        if (carry_w) h_start = index_add(h_start, h_one, OH);
        const int carry_h = index_carry(oh, OH);
        if (carry_h) h_start.q -= H;
        nc += s_nc + carry_h;
    }
}

// Where input row h lies among the bins along one axis (size H -> out_size OH): first = h*OH / H,
// the first bin holding it, and start = first.q * H / OH, that bin's first row, both as pairs.
struct AvgAxis {
    IndexQR first, start;
};

// What an AvgAxis moves by when h moves by d >= 0: first by d*OH / H, so first.q by that quotient
// or, when the remainders carry, one more; start by as many bins.
struct AvgMove {
    IndexQR first, start;
};

__device__ __forceinline__ AvgMove avg_move(int d, int size, int out_size) {
    const IndexQR first = index_divmod(d * out_size, size);
    return {first, index_divmod(first.q * size, out_size)};
}

// `one` = size / out_size as a pair: one bin further.
__device__ __forceinline__ void avg_axis_add(AvgAxis& a, AvgMove m, IndexQR one, int size, int out_size) {
    const int before = a.first.q;
    a.first = index_add(a.first, m.first, size);
    a.start = index_add(a.start, m.start, out_size);
    if (a.first.q - before > m.first.q) a.start = index_add(a.start, one, out_size);
}

// Back by `size` rows (a wrap of the digit): exactly out_size bins, so first.q - out_size and
// start.q - size, remainders unchanged.
__device__ __forceinline__ void avg_axis_wrap(AvgAxis& a, int size, int out_size) {
    a.first.q -= out_size;
    a.start.q -= size;
}

// One thread per INPUT element i = (nc*H + h)*W + w, grid-stride: it gathers dout / |bin| from
// every bin that contains it, instead of each output scattering into its bin with atomicAdd, so
// the sum order is fixed and dx is bit-reproducible. Bin oh contains h exactly when
//     floor(h*OH/H) <= oh <= floor(((h+1)*OH - 1)/H)
// (from floor(oh*H/OH) <= h, i.e. oh*H < (h+1)*OH, and ceil((oh+1)*H/OH) > h), so the loops run
// from the first bin holding h while oh*H < (h+1)*OH, with multiplications only; each bin's edges,
// needed for its size, follow from the carried start by additions.
template <class T>
__device__ void avgpool_backward_body(const T* __restrict__ dout, T* __restrict__ dx, int NC, int H, int W, int OH,
                                      int OW) {
    const int total = NC * H * W;
    const int stride = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int rest = i;
    int w = index_digit(rest, W), h = index_digit(rest, H), nc = rest;
    rest = stride;
    const int s_w = index_digit(rest, W), s_h = index_digit(rest, H), s_nc = rest;
    const IndexQR h_one = index_divmod(H, OH), w_one = index_divmod(W, OW);
    AvgAxis ah, aw;
    ah.first = index_divmod(h * OH, H);
    ah.start = index_divmod(ah.first.q * H, OH);
    aw.first = index_divmod(w * OW, W);
    aw.start = index_divmod(aw.first.q * W, OW);
    // the moves: the stride's digit of rows or columns, and one row (a carry in)
    const AvgMove h_step = avg_move(s_h, H, OH), w_step = avg_move(s_w, W, OW), h_next = avg_move(1, H, OH);
    for (; i < total; i += stride) {
        const T* plane = dout + nc * OH * OW;
        float sum = 0.0f;
        IndexQR hb = ah.start;  // bin oh's first row, as oh*H / OH
        for (int oh = ah.first.q; oh * H < (h + 1) * OH; ++oh) {
            const int h0 = hb.q, h1 = avg_bin_end(hb, h_one, OH);
            IndexQR wb = aw.start;
            for (int ow = aw.first.q; ow * W < (w + 1) * OW; ++ow) {
                const int w0 = wb.q, w1 = avg_bin_end(wb, w_one, OW);
                sum += to_f32(plane[oh * OW + ow]) / (float)((h1 - h0) * (w1 - w0));
                wb = index_add(wb, w_one, OW);
            }
            hb = index_add(hb, h_one, OH);
        }
        store(dx, i, sum);
        w += s_w;
        avg_axis_add(aw, w_step, w_one, W, OW);
        const int carry_w = index_carry(w, W);
        if (carry_w) avg_axis_wrap(aw, W, OW);
        h += s_h + carry_w;
        avg_axis_add(ah, h_step, h_one, H, OH);
        if (carry_w) avg_axis_add(ah, h_next, h_one, H, OH);
        const int carry_h = index_carry(h, H);
        if (carry_h) avg_axis_wrap(ah, H, OH);
        nc += s_nc + carry_h;
    }
}

extern "C" __global__ void avgpool_forward(const float* __restrict__ x, float* __restrict__ out, int NC, int H,
                                           int W, int OH, int OW) {
    avgpool_forward_body(x, out, NC, H, W, OH, OW);
}

extern "C" __global__ void avgpool_backward(const float* __restrict__ dout, float* __restrict__ dx, int NC, int H,
                                            int W, int OH, int OW) {
    avgpool_backward_body(dout, dx, NC, H, W, OH, OW);
}

extern "C" __global__ void avgpool_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ out, int NC, int H,
                                                int W, int OH, int OW) {
    avgpool_forward_body(x, out, NC, H, W, OH, OW);
}

extern "C" __global__ void avgpool_backward_bf16(const bf16* __restrict__ dout, bf16* __restrict__ dx, int NC,
                                                 int H, int W, int OH, int OW) {
    avgpool_backward_body(dout, dx, NC, H, W, OH, OW);
}
