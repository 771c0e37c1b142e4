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
// input once.
//
// What is kept between the passes: nothing but the input a. The forward writes b only; the
// backward recomputes s_j and b_j for the j of its window from a (lrn_scale below, the very
// arithmetic of the forward, so they come out bit for bit as the forward had them). Caching s and
// s^-beta, as the NumPy path does (layers/lrn.py), made the two passes move 10 arrays of the
// input's size (forward: read x, write b, s, s^-beta; backward: read x, b, s, s^-beta, dout, write
// dx); now they move 5 (read x, write b; read x, dout, write dx), and nothing but x is held
// between them. The price is arithmetic the GPU has to spare: each backward element sums up to size
// windows of size squares (from L1) and takes size powers (docs/kernels.md has the byte counts, and the
// alternative of fusing LRN with the max-pool after it).
// A thread needs its channel c = (i / HW) % C: it splits its first index and the grid stride into
// (c, p) once, before the loop, and the loop adds the stride's digits with a carry, as in written
// addition, because an integer division by a run-time value costs ~20 instructions on a GPU
// (docs/kernels.md).
// The window sum is recomputed per element rather than slid along c: a sliding sum subtracts
// squares that left the window and loses precision when a large value leaves next to small ones.
// T is the storage (float, or bf16: kernels/include/precision.h); all arithmetic is float32.
// 256 threads per block (kernels/ops.py), untuned; timed per layer on an H200 (docs/benchmarks.md).
#include "precision.h"

// s_j = k + alpha * sum of a^2 over win(j), for the (n, h, w) column whose channel 0 is `a`
// (channel j at a[j*HW]). The forward and the backward both call this, so the two agree exactly.
template <class T>
__device__ __forceinline__ float lrn_scale(const T* a, int j, int C, int HW, int half, float alpha, float k) {
    const int lo = j - half < 0 ? 0 : j - half;
    const int hi = j + half > C - 1 ? C - 1 : j + half;
    float sum = 0.0f;
    for (int m = lo; m <= hi; ++m) {
        const float v = to_f32(a[m * HW]);
        sum += v * v;
    }
    return k + alpha * sum;
}

template <class T>
__device__ void lrn_forward_body(const T* __restrict__ x, T* __restrict__ out, int N, int C, int HW, int size,
                                 float alpha, float beta, float k) {
    const int half = size / 2;
    const int total = N * C * HW;
    const int stride = blockDim.x * gridDim.x;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int p = i % HW, c = i / HW % C;
    const int s_p = stride % HW, s_c = stride / HW % C;
    for (; i < total; i += stride) {
        const T* a = x + (i - c * HW);  // channel 0 of this (n, h, w) column
        const float s = lrn_scale(a, c, C, HW, half, alpha, k);
        store(out, i, to_f32(x[i]) * powf(s, -beta));
        p += s_p;
        c += s_c;
        if (p >= HW) {
            p -= HW;
            ++c;
        }
        if (c >= C) c -= C;
    }
}

template <class T>
__device__ void lrn_backward_body(const T* __restrict__ x, const T* __restrict__ dout, T* __restrict__ dx, int N,
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
        const int col = i - c * HW;  // offset of channel 0 in this (n, h, w) column
        const T* a = x + col;
        float sum = 0.0f;            // sum_{j in win(c)} dout_j b_j / s_j
        float own_pow = 0.0f;        // s_c^-beta (c is in its own window)
        for (int j = lo; j <= hi; ++j) {
            const float s = lrn_scale(a, j, C, HW, half, alpha, k);
            const float s_pow = powf(s, -beta);
            const float b = to_f32(a[j * HW]) * s_pow;  // b_j, as the forward computed it
            sum += to_f32(dout[col + j * HW]) * b / s;
            if (j == c) own_pow = s_pow;
        }
        store(dx, i, to_f32(dout[i]) * own_pow - 2.0f * alpha * beta * to_f32(x[i]) * sum);
        p += s_p;
        c += s_c;
        if (p >= HW) {
            p -= HW;
            ++c;
        }
        if (c >= C) c -= C;
    }
}

extern "C" __global__ void lrn_forward(const float* __restrict__ x, float* __restrict__ out, int N, int C, int HW,
                                       int size, float alpha, float beta, float k) {
    lrn_forward_body(x, out, N, C, HW, size, alpha, beta, k);
}

extern "C" __global__ void lrn_backward(const float* __restrict__ x, const float* __restrict__ dout,
                                        float* __restrict__ dx, int N, int C, int HW, int size, float alpha,
                                        float beta, float k) {
    lrn_backward_body(x, dout, dx, N, C, HW, size, alpha, beta, k);
}

extern "C" __global__ void lrn_forward_bf16(const bf16* __restrict__ x, bf16* __restrict__ out, int N, int C,
                                            int HW, int size, float alpha, float beta, float k) {
    lrn_forward_body(x, out, N, C, HW, size, alpha, beta, k);
}

extern "C" __global__ void lrn_backward_bf16(const bf16* __restrict__ x, const bf16* __restrict__ dout,
                                             bf16* __restrict__ dx, int N, int C, int HW, int size, float alpha,
                                             float beta, float k) {
    lrn_backward_body(x, dout, dx, N, C, HW, size, alpha, beta, k);
}
