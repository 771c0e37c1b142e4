// LRN across channels (paper section 3.3), alpha NOT divided by the window size:
//
//   s_c = k + alpha * sum_{j in win(c)} a_j^2,   win(c) = max(0, c - size/2) .. min(C-1, c + size/2)
//   b_c = a_c * s_c^-beta
//   dx_c = dout_c * s_c^-beta - 2 alpha beta a_c * sum_{j in win(c)} dout_j b_j / s_j
//
// (derivation in layers/lrn.py; the window is symmetric, so the j whose windows hold c are win(c)).
//
// Layout NCHW, contiguous. Both kernels: one thread per element (n, c, h, w), index
// i = (n*C + c)*HW + p with p = h*W + w, grid-stride loop. Adjacent threads take adjacent p, so
// every load of a neighbouring channel j is a coalesced row read at offset (j - c)*HW; the window's
// neighbours are shared by the threads of nearby channels and come from L1/L2, so DRAM sees each
// input once. Each pass is a single fused kernel: the forward writes b and keeps s and s^-beta
// (the backward needs s for b_j / s_j and s_c^-beta; the same four arrays the NumPy path caches,
// layers/lrn.py), the backward reads x, b, s, s^-beta, dout once and writes dx.
// A thread needs its channel c = (i / HW) % C: it splits its first index and the grid stride into
// (c, p) once, before the loop, and the loop adds the stride's digits with a carry, as in written
// addition, because an integer division by a run-time value costs ~20 instructions on a GPU
// (docs/kernels.md).
// The window sum is recomputed per element rather than slid along c: a sliding sum subtracts
// squares that left the window and loses precision when a large value leaves next to small ones.
// 256 threads per block (kernels/ops.py), untuned; timed per layer on an H200 (docs/benchmarks.md).

extern "C" __global__ void lrn_forward(const float* __restrict__ x, float* __restrict__ out,
                                       float* __restrict__ scale, float* __restrict__ scale_pow, int N,
                                       int C, int HW, int size, float alpha, float beta, float k) {
    const int half = size / 2;
    const int total = N * C * HW;
    const int stride = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int p = i % HW, c = i / HW % C;
    const int s_p = stride % HW, s_c = stride / HW % C;
    for (; i < total; i += stride) {
        const int lo = c - half < 0 ? 0 : c - half;
        const int hi = c + half > C - 1 ? C - 1 : c + half;
        const float* a = x + (i - c * HW);  // channel 0 of this (n, h, w) column; channel j at a[j*HW]
        float sum = 0.0f;
        for (int j = lo; j <= hi; ++j) {
            const float v = a[j * HW];
            sum += v * v;
        }
        const float s = k + alpha * sum;
        const float s_pow = powf(s, -beta);
        scale[i] = s;
        scale_pow[i] = s_pow;
        out[i] = x[i] * s_pow;
        p += s_p;
        c += s_c;
        if (p >= HW) {
            p -= HW;
            ++c;
        }
        if (c >= C) c -= C;
    }
}

extern "C" __global__ void lrn_backward(const float* __restrict__ x, const float* __restrict__ out,
                                        const float* __restrict__ scale, const float* __restrict__ scale_pow,
                                        const float* __restrict__ dout, float* __restrict__ dx, int N,
                                        int C, int HW, int size, float alpha, float beta) {
    const int half = size / 2;
    const int total = N * C * HW;
    const int stride = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int p = i % HW, c = i / HW % C;
    const int s_p = stride % HW, s_c = stride / HW % C;
    for (; i < total; i += stride) {
        const int lo = c - half < 0 ? 0 : c - half;
        const int hi = c + half > C - 1 ? C - 1 : c + half;
        const int col = i - c * HW;  // offset of channel 0 in this (n, h, w) column
        float sum = 0.0f;            // sum_{j in win(c)} dout_j b_j / s_j
        for (int j = lo; j <= hi; ++j) {
            const int o = col + j * HW;
            sum += dout[o] * out[o] / scale[o];
        }
        dx[i] = dout[i] * scale_pow[i] - 2.0f * alpha * beta * x[i] * sum;
        p += s_p;
        c += s_c;
        if (p >= HW) {
            p -= HW;
            ++c;
        }
        if (c >= C) c -= C;
    }
}
