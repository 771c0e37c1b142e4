// Adaptive average pooling to OH x OW bins (torchvision's AlexNet, before fc6; layers/avgpool.py).
//
// Bins follow PyTorch: output row i averages input rows [floor(i*H/OH), ceil((i+1)*H/OH)), columns
// likewise, so neighbouring bins may overlap and OH > H repeats rows. Layout NCHW, contiguous; the
// N*C planes are independent, so both kernels index planes as nc. No cache: the layer is linear.
// 256 threads per block (kernels/ops.py), untuned; run on an H200 by the checks, not timed.

__device__ __forceinline__ int bin_start(int i, int size, int out_size) { return (i * size) / out_size; }

__device__ __forceinline__ int bin_end(int i, int size, int out_size) {
    return ((i + 1) * size + out_size - 1) / out_size;
}

// One thread per output element (nc, oh, ow), grid-stride: the mean of its bin.
extern "C" __global__ void avgpool_forward(const float* __restrict__ x, float* __restrict__ out, int NC,
                                           int H, int W, int OH, int OW) {
    const int total = NC * OH * OW;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int nc = i / (OH * OW);
        const int q = i - nc * OH * OW;
        const int oh = q / OW;
        const int ow = q - oh * OW;
        const int h0 = bin_start(oh, H, OH), h1 = bin_end(oh, H, OH);
        const int w0 = bin_start(ow, W, OW), w1 = bin_end(ow, W, OW);
        const float* plane = x + nc * H * W;
        float sum = 0.0f;
        for (int h = h0; h < h1; ++h) {
            for (int w = w0; w < w1; ++w) sum += plane[h * W + w];
        }
        out[i] = sum / (float)((h1 - h0) * (w1 - w0));
    }
}

// One thread per INPUT element (nc, h, w), grid-stride: it gathers dout / |bin| from every bin that
// contains it, instead of each output scattering into its bin with atomicAdd, so the sum order is
// fixed and dx is bit-reproducible. Bin i contains h exactly when
//     floor(h*OH/H) <= i <= floor(((h+1)*OH - 1)/H)
// (from floor(i*H/OH) <= h and ceil((i+1)*H/OH) > h), which bounds the loops; the bin test inside
// keeps them correct on its own.
extern "C" __global__ void avgpool_backward(const float* __restrict__ dout, float* __restrict__ dx, int NC,
                                            int H, int W, int OH, int OW) {
    const int total = NC * H * W;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int nc = i / (H * W);
        const int p = i - nc * H * W;
        const int h = p / W;
        const int w = p - h * W;
        const float* plane = dout + nc * OH * OW;
        float sum = 0.0f;
        for (int oh = (h * OH) / H; oh <= ((h + 1) * OH - 1) / H; ++oh) {
            const int h0 = bin_start(oh, H, OH), h1 = bin_end(oh, H, OH);
            if (h < h0 || h >= h1) continue;
            for (int ow = (w * OW) / W; ow <= ((w + 1) * OW - 1) / W; ++ow) {
                const int w0 = bin_start(ow, W, OW), w1 = bin_end(ow, W, OW);
                if (w < w0 || w >= w1) continue;
                sum += plane[oh * OW + ow] / (float)((h1 - h0) * (w1 - w0));
            }
        }
        dx[i] = sum;
    }
}
