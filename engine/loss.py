"""Softmax cross-entropy, the paper's objective (the multinomial logistic regression of section 3.5).

Forward, logits z (N, K), integer labels y (N,):

    log p[n, k] = z[n, k] - m_n - log sum_j exp(z[n, j] - m_n),    m_n = max_j z[n, j]
    loss        = -(1/N) sum_n log p[n, y_n]

Subtracting the row maximum m_n changes nothing mathematically and keeps exp() from overflowing.

Backward:  dz[n, k] = (p[n, k] - [k = y_n]) / N
Cached: the probabilities p and the labels.
"""
import numpy as np

from engine import backend


class SoftmaxCrossEntropy:
    def __init__(self):
        self.probs = None
        self.cache = None

    def forward(self, logits, labels):
        if logits.ndim != 2 or logits.shape[0] == 0:
            raise ValueError(f"SoftmaxCrossEntropy: expected logits of shape (N, classes) with N >= 1, "
                             f"got {tuple(logits.shape)}")
        if labels.shape != (logits.shape[0],):
            raise ValueError(f"SoftmaxCrossEntropy: expected labels of shape ({logits.shape[0]},), "
                             f"got {tuple(labels.shape)}")
        if backend.is_gpu_array(logits):
            from kernels import dispatch
            loss, self.cache = dispatch.softmax_xent_forward(logits, labels)
            self.probs = None
            return float(loss)
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise ValueError(f"SoftmaxCrossEntropy: labels must be in [0, {logits.shape[1] - 1}], "
                             f"got min {labels.min()} max {labels.max()}")
        N = logits.shape[0]
        shifted = logits - logits.max(axis=1, keepdims=True)                 # (N, K)
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))        # (N, 1)
        log_probs = shifted - log_norm
        self.probs = np.exp(log_probs)
        self.cache = labels
        return float(-log_probs[np.arange(N), labels].mean())

    def backward(self):
        if self.cache is None:
            raise ValueError("SoftmaxCrossEntropy: backward() called before forward()")
        if self.probs is None:
            from kernels import dispatch
            return dispatch.softmax_xent_backward(self.cache)
        labels = self.cache
        N = labels.shape[0]
        dlogits = self.probs.copy()
        dlogits[np.arange(N), labels] -= 1
        dlogits /= N
        return dlogits
