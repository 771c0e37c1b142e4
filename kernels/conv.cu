// Convolution as a matrix product (im2col), plus the bias kernels it needs around the product.
// The products themselves run in cuBLAS through cupy.matmul (kernels/dispatch.py):
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
// All layouts contiguous. Every kernel is launched with 256 threads per block (kernels/ops.py);
// untuned; timed per layer on an H200 (docs/benchmarks.md).

// One thread per element (r, q) of col, i = r*NQ + q, grid-stride; adjacent threads write
// adjacent columns. Padding reads as 0.
extern "C" __global__ void conv_im2col(const float* __restrict__ x, float* __restrict__ col, int N, int C,
                                       int H, int W, int KH, int KW, int S, int P, int OH, int OW) {
    const int NQ = N * OH * OW;
    const int total = C * KH * KW * NQ;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int r = i / NQ;
        const int q = i - r * NQ;
        const int kw = r % KW;
        const int kh = (r / KW) % KH;
        const int c = r / (KW * KH);
        const int ow = q % OW;
        const int oh = (q / OW) % OH;
        const int n = q / (OW * OH);
        const int h = oh * S - P + kh;
        const int w = ow * S - P + kw;
        col[i] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((n * C + c) * H + h) * W + w] : 0.0f;
    }
}

// One thread per INPUT element (n, c, h, w), grid-stride: it gathers every col entry that was
// copied from it, i.e. the (kh, kw) with h = oh*S - P + kh for an integer 0 <= oh < OH (likewise
// w). Only kh congruent to (h + P) mod S can qualify, so the loop steps by S from there.
// Gathering instead of scattering through atomicAdd keeps the sum order fixed (reproducible dx).
extern "C" __global__ void conv_col2im(const float* __restrict__ col, float* __restrict__ dx, int N, int C,
                                       int H, int W, int KH, int KW, int S, int P, int OH, int OW) {
    const int NQ = N * OH * OW;
    const int total = N * C * H * W;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int w = i % W;
        const int h = (i / W) % H;
        const int c = (i / (W * H)) % C;
        const int n = i / (W * H * C);
        float sum = 0.0f;
        for (int kh = (h + P) % S; kh < KH; kh += S) {
            const int oh = (h + P - kh) / S;
            if (oh >= OH) continue;
            if (oh < 0) break;  // kh only grows, so oh only shrinks
            for (int kw = (w + P) % S; kw < KW; kw += S) {
                const int ow = (w + P - kw) / S;
                if (ow >= OW) continue;
                if (ow < 0) break;
                sum += col[((c * KH + kh) * KW + kw) * NQ + (n * OH + oh) * OW + ow];
            }
        }
        dx[i] = sum;
    }
}

// out[n, c, p] = y[c, n, p] + b[c]: adds the bias and moves the GEMM's channel-major result into
// NCHW in one pass. One thread per OUTPUT element, grid-stride: writes coalesce, and reads do
// too within each run of P pixels.
extern "C" __global__ void conv_bias_forward(const float* __restrict__ y, const float* __restrict__ b,
                                             float* __restrict__ out, int N, int C, int P) {
    const int total = N * C * P;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int p = i % P;
        const int c = (i / P) % C;
        const int n = i / (P * C);
        out[i] = y[(c * N + n) * P + p] + b[c];
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
// gradients need) and the bias gradient's first pass, in one read of dout. Channel c's N*P entries
// are cut into `slices` equal runs; block (s, c) of a 2-D grid (grid-stride along both axes) copies
// run s and writes its sum to partial[c * slices + s]. conv_bias_reduce then adds each channel's
// partials in a fixed order, so db is bit-reproducible and no atomics are needed. Slicing keeps
// every SM busy where one block per channel would not (conv1 has 96 channels, an H100 132 SMs);
// the launcher picks `slices` from the sizes alone, never from the grid. Needs blockDim.x a
// multiple of 32 and blockDim.x / 32 floats of dynamic shared memory.
extern "C" __global__ void conv_bias_backward(const float* __restrict__ dout, float* __restrict__ dy,
                                              float* __restrict__ partial, int N, int C, int P, int slices) {
    extern __shared__ float partials[];
    const int NP = N * P;
    const int run = (NP + slices - 1) / slices;
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        for (int s = blockIdx.x; s < slices; s += gridDim.x) {
            const int end = (s + 1) * run < NP ? (s + 1) * run : NP;
            float sum = 0.0f;
            for (int j = s * run + threadIdx.x; j < end; j += blockDim.x) {
                const int n = j / P;
                const float v = dout[(n * C + c) * P + (j - n * P)];
                dy[c * NP + j] = v;
                sum += v;
            }
            sum = conv_block_sum(sum, partials);
            if (threadIdx.x == 0) partial[c * slices + s] = sum;
        }
    }
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
