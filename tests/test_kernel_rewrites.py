"""Issue 19's rewritten kernels against the kernels they replaced, bit for bit, on the CPU harness.

The previous kernels' code is kept below as it was (commit 54913b9, before the rewrite), built
with the harness like any .cu file, and run on the same inputs under several launch shapes:

- LRN: the backward now recomputes each window's scale from x instead of reading the scale and
  its power that the forward cached. Same arithmetic on the same values, so the same bits: the
  output against the old forward's, dx against the old backward given the old forward's arrays.
- SGD: one thread per group of 4 elements with float4 accesses (and the learning rate read from
  device memory) against one thread per element: the same w and v.

The ReLU fused into the bias kernels is held to the unfused layers by app/kernel_checks.py
(`fused`), every BF16 entry point to its float32 one there (`bf16`), and the dropout kernels,
now reading their step from device memory, to the NumPy masks (tests/test_kernels.py).
"""
import numpy as np
import pytest

from alexnet.kernels import harness, ops

BEFORE = r"""
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
extern "C" __global__ void sgd_update(const unsigned long long* __restrict__ tensors,
                                      const long long* __restrict__ offsets, const float* __restrict__ mults,
                                      int T, float lr, float momentum, float weight_decay) {
    const long long total = offsets[T];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        int lo = 0, hi = T - 1;  // the last t with offsets[t] <= i
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (offsets[mid] <= i) lo = mid; else hi = mid - 1;
        }
        float* w = (float*)tensors[3 * lo];
        const float* g = (const float*)tensors[3 * lo + 1];
        float* v = (float*)tensors[3 * lo + 2];
        const long long j = i - offsets[lo];
        const float decay = mults[2 * lo + 1] * weight_decay * lr, step = mults[2 * lo] * lr;
        // a term whose coefficient is 0 is left out, not multiplied by 0 (as on the NumPy path):
        // a frozen tensor stays put whatever its gradient holds, and an infinite weight without
        // decay gets no 0 * inf = NaN velocity
        float vj = momentum * v[j];
        if (decay != 0.0f) vj -= decay * w[j];
        if (step != 0.0f) vj -= step * g[j];
        v[j] = vj;
        w[j] += vj;
    }
}
"""

LAUNCHES = [(256, 4096), (37, 5), (32, 1), (1, 1)]


@pytest.fixture(scope="module")
def before(harness_rt):
    """The previous kernels, built by the harness (harness_rt skips, saying why, without g++)."""
    return harness.Module(BEFORE, "before_issue19.cu")


def _grid(n, threads, blocks):
    return (max(1, min(blocks, -(-n // threads))),), (threads,)


@pytest.mark.parametrize("threads,blocks", LAUNCHES)
@pytest.mark.parametrize("size,alpha,beta,k,shape", [(5, 1.0, 0.75, 1.0, (2, 7, 5, 3)), (3, 0.5, 0.6, 1.5, (1, 4, 3, 7)),
                                                     (5, 1e-4, 0.75, 2.0, (3, 9, 4, 5))])
def test_lrn_matches_the_kernels_it_replaced(harness_rt, before, rng, threads, blocks, size, alpha, beta, k, shape,
                                             monkeypatch):
    x = (30 * rng.standard_normal(shape)).astype(np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)
    N, C, H, W = shape
    out, scale, scale_pow, dx = (np.empty_like(x) for _ in range(4))
    grid, block = _grid(x.size, threads, blocks)
    ints = [np.int32(v) for v in (N, C, H * W, size)]
    before.get_function("lrn_forward")(grid, block, (x, out, scale, scale_pow, *ints, np.float32(alpha),
                                                     np.float32(beta), np.float32(k)))
    before.get_function("lrn_backward")(grid, block, (x, out, scale, scale_pow, dout, dx, *ints, np.float32(alpha),
                                                      np.float32(beta)))
    monkeypatch.setattr(ops, "BLOCK", threads)
    monkeypatch.setattr(ops, "MAX_BLOCKS", blocks)
    np.testing.assert_array_equal(ops.lrn_forward(harness_rt, x, size, alpha, beta, k).view(np.uint32),
                                  out.view(np.uint32))
    np.testing.assert_array_equal(ops.lrn_backward(harness_rt, x, dout, size, alpha, beta, k).view(np.uint32),
                                  dx.view(np.uint32))


@pytest.mark.parametrize("threads,blocks", LAUNCHES)
def test_sgd_matches_the_kernel_it_replaced(harness_rt, before, rng, threads, blocks, monkeypatch):
    """Sizes with and without a partial group of 4, multipliers that leave out the decay or the
    gradient term, and a tensor misaligned for float4 (one float into its buffer)."""
    shapes, mults = [(7, 5), (13,), (16,), (9,)], [(1.0, 1.0), (2.0, 0.0), (0.0, 0.0), (1.0, 0.5)]
    w, g, v = ([rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3))
    w[3] = np.concatenate([[0], w[3]]).astype(np.float32)[1:]
    lr, momentum, decay = 0.03, 0.9, 5e-4
    w_old, v_old = [a.copy() for a in w], [a.copy() for a in v]
    table = np.array([(a.ctypes.data, b.ctypes.data, c.ctypes.data) for a, b, c in zip(w_old, g, v_old)], np.uint64)
    offsets = np.cumsum([0] + [a.size for a in w], dtype=np.int64)
    grid, block = _grid(int(offsets[-1]), threads, blocks)
    before.get_function("sgd_update")(grid, block, (table, offsets, np.array(mults, np.float32), np.int32(len(w)),
                                                    np.float32(lr), np.float32(momentum), np.float32(decay)))
    monkeypatch.setattr(ops, "BLOCK", threads)
    monkeypatch.setattr(ops, "MAX_BLOCKS", blocks)
    entries = [(w[i], g[i], v[i], *mults[i]) for i in range(len(w))]
    ops.sgd_update(harness_rt, ops.sgd_table(harness_rt, entries), lr, momentum, decay)
    for new, old in zip(w + v, w_old + v_old):
        np.testing.assert_array_equal(new.view(np.uint32), old.view(np.uint32))
