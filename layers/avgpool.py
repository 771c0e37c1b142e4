"""AdaptiveAvgPool2d: average over a fixed grid of OH x OW bins, whatever the input size.

Not in the paper: torchvision's AlexNet (the "one weird trick" variant, models/torchvision.py) puts
one between pool5 and fc6, so that inputs larger than 224x224 still give fc6 its 256x6x6 features.
At 224 pool5 is already 6x6 and every bin is one pixel (the layer is the identity).

Bins (PyTorch's rule): output row i averages input rows h0(i) <= h < h1(i) with
    h0(i) = floor(i * H / OH),   h1(i) = ceil((i + 1) * H / OH)
and columns likewise. Neighbouring bins overlap by a row when H is not a multiple of OH, and
OH > H repeats rows. Every bin holds at least one row.

Forward:   out[n, c, i, j] = 1 / (|rows(i)| |cols(j)|) * sum_{h in rows(i), w in cols(j)} x[n, c, h, w]
Backward:  each input pixel receives an equal share of the gradient of every bin it lies in:
           dx[n, c, h, w] = sum_{i: h in rows(i)} sum_{j: w in cols(j)} dout[n, c, i, j] / (|rows(i)| |cols(j)|)

The average is separable: with the pooling matrix P_H (OH, H), P_H[i, h] = 1 / |rows(i)| for h in
rows(i) and 0 elsewhere (and P_W likewise),
    out = P_H @ x @ P_W^T        dx = P_H^T @ dout @ P_W
over the last two axes, which is how the CPU path computes both: two small matrix products over
the whole batch, no loop over bins or pixels. (The ONNX export writes the same two products.)
A product also multiplies every pixel by the zeros of P, though, and 0 * NaN = 0 * inf = NaN: one
non-finite pixel would make every output of its plane NaN. So a batch chunk that holds a NaN or an
infinity takes the sums themselves instead (each bin's rows, then its columns: OH + OW slice sums,
still no loop over pixels), which keep it in the bins that hold it, as the kernels and the reference
loops do; one np.isfinite pass decides.

Shapes: x (N, C, H, W), out (N, C, OH, OW).
Cached: the input shape only; the backward needs no input values (the layer is linear).
Reference loops: layers/reference.py adaptive_avgpool_forward / adaptive_avgpool_backward.
GPU: kernels/avgpool.cu (one thread per output in the forward, per input in the backward).
"""
import numpy as np

from alexnet.engine.layer import Layer
from alexnet.engine.threads import batch_grain, run_chunks
from alexnet.kernels import ops


def bin_edges(i, size, out_size):
    """(first, last + 1) input index of output bin i: PyTorch's floor / ceil rule."""
    return (i * size) // out_size, -(-(i + 1) * size // out_size)


def pooling_matrix(size, out_size, dtype=np.float64):
    """P (out_size, size) with P[i, h] = 1 / |bin i| for h in bin i: a row of P averages one bin."""
    P = np.zeros((out_size, size), dtype)
    for i in range(out_size):                     # out_size rows (6 for AlexNet), not pixels
        lo, hi = bin_edges(i, size, out_size)
        P[i, lo:hi] = 1.0 / (hi - lo)
    return P


class AdaptiveAvgPool2d(Layer):
    def __init__(self, output_size):
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, (int, np.integer)) else output_size
        if not isinstance(size, (tuple, list)) or len(size) != 2 or \
                not all(isinstance(v, (int, np.integer)) and v >= 1 for v in size):
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be an integer >= 1 or a pair of them, "
                             f"got {output_size!r}")
        self.output_size = (int(size[0]), int(size[1]))
        self._matrices = {}

    def describe(self):
        return f"AdaptiveAvgPool2d({self.output_size[0]}x{self.output_size[1]})"

    def check_input_shape(self, in_shape):
        if len(in_shape) != 3:
            self._fail("expected input of rank 4 (N, C, H, W)", in_shape)

    def output_shape(self, in_shape):
        self.check_input_shape(in_shape)
        return (in_shape[0],) + self.output_size

    def _pooling_matrices(self, H, W, dtype):
        """(P_H, P_W) for an H x W input, built once per input size and dtype."""
        key = (H, W, np.dtype(dtype))
        if key not in self._matrices:
            OH, OW = self.output_size
            self._matrices[key] = (pooling_matrix(H, OH, dtype), pooling_matrix(W, OW, dtype))
        return self._matrices[key]

    def _bins(self, H, W, dtype):
        """([(h0, h1)] per output row, [(w0, w1)] per output column, bin sizes (OH, OW)) for H x W."""
        OH, OW = self.output_size
        rows, cols = [bin_edges(i, H, OH) for i in range(OH)], [bin_edges(j, W, OW) for j in range(OW)]
        return rows, cols, np.outer([h1 - h0 for h0, h1 in rows], [w1 - w0 for w0, w1 in cols]).astype(dtype)

    # ---- NumPy -----------------------------------------------------------------------------------
    def forward_numpy(self, x, train):
        P_H, P_W = self._pooling_matrices(*x.shape[2:], x.dtype)
        out = np.empty(x.shape[:2] + self.output_size, x.dtype)                   # (N, C, OH, OW)

        def chunk(lo, hi):
            if np.isfinite(x[lo:hi]).all():
                # (OH, H) @ (n, C, H, W) -> (n, C, OH, W); @ (W, OW) -> (n, C, OH, OW)
                np.matmul(np.matmul(P_H, x[lo:hi]), P_W.T, out=out[lo:hi])
            else:
                self._bin_means(x[lo:hi], out[lo:hi])
        run_chunks(chunk, len(x), grain=batch_grain())
        return out, x.shape                                                       # cache: the input shape

    def backward_numpy(self, dout, need_dx):
        x_shape = self.cache
        P_H, P_W = self._pooling_matrices(*x_shape[2:], dout.dtype)
        dx = np.empty(x_shape, dout.dtype)                                        # (N, C, H, W)

        def chunk(lo, hi):
            if np.isfinite(dout[lo:hi]).all():
                # (H, OH) @ (n, C, OH, OW) -> (n, C, H, OW); @ (OW, W) -> (n, C, H, W)
                np.matmul(np.matmul(P_H.T, dout[lo:hi]), P_W, out=dx[lo:hi])
            else:
                self._bin_shares(dout[lo:hi], dx[lo:hi])
        run_chunks(chunk, len(dout), grain=batch_grain())
        return dx

    def _bin_means(self, x, out):
        """out = the mean of each bin as sums over the bin alone (for input holding NaN or inf)."""
        rows, cols, sizes = self._bins(*x.shape[2:], x.dtype)
        row_sums = np.empty(x.shape[:2] + (len(rows), x.shape[3]), x.dtype)      # (n, C, OH, W)
        for i, (h0, h1) in enumerate(rows):
            np.sum(x[:, :, h0:h1], axis=2, out=row_sums[:, :, i])
        for j, (w0, w1) in enumerate(cols):
            np.sum(row_sums[..., w0:w1], axis=3, out=out[..., j])
        out /= sizes

    def _bin_shares(self, dout, dx):
        """dx = each bin's dout / |bin| added to the pixels of that bin alone (for dout holding NaN or inf)."""
        rows, cols, sizes = self._bins(*dx.shape[2:], dout.dtype)
        share = dout / sizes                                                      # (n, C, OH, OW)
        spread = np.zeros(dx.shape[:3] + (len(cols),), dout.dtype)               # (n, C, H, OW)
        for i, (h0, h1) in enumerate(rows):
            spread[:, :, h0:h1] += share[:, :, i:i + 1]
        dx[...] = 0
        for j, (w0, w1) in enumerate(cols):
            dx[..., w0:w1] += spread[..., j:j + 1]

    # ---- CUDA (kernels/avgpool.cu) -------------------------------------------------------------------
    def forward_cuda(self, rt, x, train):
        return ops.avgpool_forward(rt, x, self.output_size, who=self.name), x.shape

    def backward_cuda(self, rt, dout, need_dx):
        return ops.avgpool_backward(rt, dout, self.cache, who=self.name)
