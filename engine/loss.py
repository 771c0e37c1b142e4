"""Softmax cross-entropy, the paper's objective (the multinomial logistic regression of section 3.5).

Forward, logits z (N, K), integer labels y (N,):

    log p[n, k] = z[n, k] - m_n - log sum_j exp(z[n, j] - m_n),    m_n = max_j z[n, j]
    loss        = -(1/N) sum_n log p[n, y_n]

Subtracting the row maximum m_n changes nothing mathematically and keeps exp() from overflowing.

Backward:  dz[n, k] = (p[n, k] - [k = y_n]) / N
Cached: the probabilities p and the labels (both paths).

`backward(count=M)` divides by M instead of N: a data-parallel rank holding N of a global batch of
M samples gets its share of the global mean's gradient, and the ranks' sum is that gradient.
Reference loops: layers/reference.py softmax_xent_forward / softmax_xent_backward.

On the GPU (kernels/softmax_xent.cu) the loss stays on the device: `forward` returns a 0-d CuPy
array, so a training step never waits for the GPU; `float(loss)` reads it when it is wanted (the
trainer does every --log-every steps). On the CPU it returns a Python float.
"""
import numpy as np

from alexnet.engine import backend
from alexnet.kernels import ops


class SoftmaxCrossEntropy:
    def __init__(self):
        self.cache = None

    def forward(self, logits, labels, runtime=None):
        if logits.ndim != 2 or logits.shape[0] == 0:
            raise ValueError(f"SoftmaxCrossEntropy: expected logits of shape (N, classes) with N >= 1, "
                             f"got {tuple(logits.shape)}")
        if labels.shape != (logits.shape[0],):
            raise ValueError(f"SoftmaxCrossEntropy: expected labels of shape ({logits.shape[0]},), "
                             f"got {tuple(labels.shape)}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"SoftmaxCrossEntropy: labels must be integers, got {labels.dtype}")
        rt = runtime or backend.kernel_runtime_of(logits)
        if rt is not None:
            return self._forward_cuda(rt, logits, labels)
        labels = np.asarray(labels)
        if labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise ValueError(f"SoftmaxCrossEntropy: labels must be in [0, {logits.shape[1] - 1}], "
                             f"got min {labels.min()} max {labels.max()}")
        N = logits.shape[0]
        shifted = logits - logits.max(axis=1, keepdims=True)                 # (N, K)
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))        # (N, 1)
        log_probs = shifted - log_norm
        self.cache = (np.exp(log_probs), labels)                             # p, y
        return float(-log_probs[np.arange(N), labels].mean())

    def backward(self, runtime=None, count=None):
        """dL/dlogits of the mean over `count` samples (default: this batch's)."""
        if self.cache is None:
            raise ValueError("SoftmaxCrossEntropy: backward() called before forward()")
        probs, labels = self.cache
        rt = runtime or backend.kernel_runtime_of(probs)
        if rt is not None:
            return ops.softmax_xent_backward(rt, probs, labels, who="SoftmaxCrossEntropy", count=count)
        N = labels.shape[0]
        dlogits = probs.copy()
        dlogits[np.arange(N), labels] -= 1
        dlogits /= count or N
        return dlogits

    def _forward_cuda(self, rt, logits, labels):
        """A label outside [0, K) makes the loss NaN rather than a host round trip to check it."""
        labels = rt.xp.ascontiguousarray(rt.xp.asarray(labels), dtype=np.int32)   # N int32s
        loss, probs = ops.softmax_xent_forward(rt, logits, labels, who="SoftmaxCrossEntropy")
        self.cache = (probs, labels)
        return loss
