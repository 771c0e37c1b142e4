// Max pooling, K x K windows with stride S, floor mode, no padding (paper section 3.4: K=3, S=2,
// overlapping). OH = (H - K) / S + 1, so every window lies inside the input.
//
// Layout NCHW, contiguous; the N*C planes are independent, so both kernels index planes as nc.
// The argmax is the offset kh*K + kw of the maximum inside its window, one byte per output
// (K <= 16), the same cache the NumPy path keeps (layers/pool.py).
// 256 threads per block (kernels/ops.py), untuned; timed per layer on an H200 (docs/benchmarks.md).

// One thread per output element (nc, oh, ow), grid-stride. Writes the maximum and its window
// offset; ties keep the first maximum in row-major window order (strict >), as layers/pool.py and
// PyTorch do. A NaN is the maximum of any window that holds one (np.maximum's rule, and PyTorch's),
// the first NaN if there are several; with `v > best` alone a NaN after the first element was lost.
extern "C" __global__ void maxpool_forward(const float* __restrict__ x, float* __restrict__ out,
                                           unsigned char* __restrict__ argmax, int NC, int H, int W,
                                           int OH, int OW, int K, int S) {
    const int total = NC * OH * OW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int nc = i / (OH * OW);
        const int q = i - nc * OH * OW;
        const int oh = q / OW;
        const int ow = q - oh * OW;
        const float* window = x + nc * H * W + (oh * S) * W + ow * S;  // its top-left input element
        float best = window[0];
        int best_offset = 0;
        for (int kh = 0; kh < K; ++kh) {
            for (int kw = 0; kw < K; ++kw) {
                const float v = window[kh * W + kw];
                if (v > best || (v != v && best == best)) {
                    best = v;
                    best_offset = kh * K + kw;
                }
            }
        }
        out[i] = best;
        argmax[i] = (unsigned char)best_offset;
    }
}

// One thread per INPUT element (nc, h, w), grid-stride: it gathers dout from the (at most
// ceil(K/S)^2) windows that cover it and whose argmax is this element, i.e. whose stored offset is
// (h - oh*S)*K + (w - ow*S). Gathering instead of scattering dout through atomicAdd keeps the sum
// order fixed, so dx is bit-reproducible. Window oh covers h when oh*S <= h <= oh*S + K - 1.
// Every covering window's dout is multiplied by its derivative, 1 at the argmax and 0 elsewhere, as
// the NumPy path does: a NaN or infinite dout reaches its whole window as NaN, not only the argmax.
extern "C" __global__ void maxpool_backward(const float* __restrict__ dout,
                                            const unsigned char* __restrict__ argmax,
                                            float* __restrict__ dx, int NC, int H, int W, int OH,
                                            int OW, int K, int S) {
    const int total = NC * H * W;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int nc = i / (H * W);
        const int p = i - nc * H * W;
        const int h = p / W;
        const int w = p - h * W;
        const int oh_lo = h < K ? 0 : (h - K) / S + 1;
        const int ow_lo = w < K ? 0 : (w - K) / S + 1;
        const int oh_hi = h / S < OH - 1 ? h / S : OH - 1;
        const int ow_hi = w / S < OW - 1 ? w / S : OW - 1;
        float sum = 0.0f;
        for (int oh = oh_lo; oh <= oh_hi; ++oh) {
            for (int ow = ow_lo; ow <= ow_hi; ++ow) {
                const int j = (nc * OH + oh) * OW + ow;
                sum += dout[j] * (argmax[j] == (h - oh * S) * K + (w - ow * S) ? 1.0f : 0.0f);
            }
        }
        dx[i] = sum;
    }
}
