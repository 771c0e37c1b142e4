"""Every forward and backward pass as plain loops, straight from the equations in the docstrings.

These are what a learner steps through in a debugger: one output element (or one gradient term)
per loop iteration, no strides, no chunks, no pooled memory, no Winograd. They are also the
oracle: tests/test_reference.py holds every fast path (both convolution algorithms, any batch
chunking, the CUDA kernels through the CPU harness) to these loops in float64.

They are slow (Python loops over every element): use small shapes. Each function takes and
returns NumPy arrays and keeps nothing between calls; a backward takes what its forward needs
(the input, the parameters) instead of a cache.

    conv_forward(x, W, b, stride, padding, groups) -> out
    conv_backward(x, W, dout, stride, padding, groups) -> dx, dW, db
    conv_backward_as_convolution(x, W, dout, stride, padding, groups) -> dx   (the flipped kernel)
    relu_forward(x) -> out                     relu_backward(x, dout) -> dx
    tanh_forward(x) -> out                     tanh_backward(x, dout) -> dx
    lrn_forward(x, size, alpha, beta, k)       lrn_backward(x, dout, size, alpha, beta, k) -> dx
    maxpool_forward(x, K, S) -> out            maxpool_backward(x, dout, K, S) -> dx
    adaptive_avgpool_forward(x, (OH, OW))      adaptive_avgpool_backward(x, dout, (OH, OW)) -> dx
    dense_forward(x, W, b) -> out              dense_backward(x, W, dout) -> dx, dW, db
    dropout_forward(x, keep, p, train, variant)            dropout_backward(dout, keep, p, train, variant)
    softmax_xent_forward(logits, labels) -> loss           softmax_xent_backward(logits, labels) -> dlogits
    sgd_step(w, g, v, lr, momentum, weight_decay, lr_mult=1, decay_mult=1) -> new w, new v
"""
import math

import numpy as np


# ---- convolution (layers/conv.py) ---------------------------------------------------------------
def _padded(x, P):
    N, C, H, W = x.shape
    xpad = np.zeros((N, C, H + 2 * P, W + 2 * P), x.dtype)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    xpad[n, c, h + P, w + P] = x[n, c, h, w]
    return xpad


def conv_forward(x, W, b, stride=1, padding=0, groups=1):
    """out[n, o, i, j] = b[o] + sum_{c < Cg} sum_{p, q} W[o, c, p, q] xpad[n, c0(g) + c, S i + p, S j + q]
    for output o of group g = o // Og, whose input channels start at c0(g) = g Cg"""
    N, C, H, Wd = x.shape
    O, Cg, K, _ = W.shape
    S, P = stride, padding
    OH, OW = (H + 2 * P - K) // S + 1, (Wd + 2 * P - K) // S + 1
    Og = O // groups
    xpad = _padded(x, P)
    out = np.zeros((N, O, OH, OW), x.dtype)
    for n in range(N):
        for o in range(O):
            c0 = (o // Og) * Cg                      # first input channel of o's group
            for i in range(OH):
                for j in range(OW):
                    total = b[o]
                    for c in range(Cg):
                        for p in range(K):
                            for q in range(K):
                                total += W[o, c, p, q] * xpad[n, c0 + c, S * i + p, S * j + q]
                    out[n, o, i, j] = total
    return out


def conv_backward(x, W, dout, stride=1, padding=0, groups=1):
    """db[o] = sum_{n,i,j} dout[n, o, i, j]
    dW[o, c, p, q] = sum_{n,i,j} dout[n, o, i, j] xpad[n, c0(g) + c, S i + p, S j + q]
    dxpad[n, c0(g) + c, S i + p, S j + q] += dout[n, o, i, j] W[o, c, p, q]   (every o, i, j, p, q)"""
    N, C, H, Wd = x.shape
    O, Cg, K, _ = W.shape
    S, P = stride, padding
    _, _, OH, OW = dout.shape
    Og = O // groups
    xpad = _padded(x, P)
    dxpad = np.zeros_like(xpad)
    dW, db = np.zeros_like(W), np.zeros(O, W.dtype)
    for n in range(N):
        for o in range(O):
            c0 = (o // Og) * Cg
            for i in range(OH):
                for j in range(OW):
                    g = dout[n, o, i, j]
                    db[o] += g
                    for c in range(Cg):
                        for p in range(K):
                            for q in range(K):
                                dW[o, c, p, q] += g * xpad[n, c0 + c, S * i + p, S * j + q]
                                dxpad[n, c0 + c, S * i + p, S * j + q] += g * W[o, c, p, q]
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(Wd):
                    dx[n, c, h, w] = dxpad[n, c, h + P, w + P]   # the padding's gradient is dropped
    return dx, dW, db


def conv_backward_as_convolution(x, W, dout, stride=1, padding=0, groups=1):
    """dx computed as a convolution (docs/backprop.md): dout spread out by the stride (S - 1 zeros
    between entries) and padded by K - 1, convolved at stride 1 by conv_forward with the kernel
    flipped and its channel axes swapped, Wt[c0(g) + c, o - g Og, p, q] = W[o, c, K-1-p, K-1-q];
    that is dxpad, and dx is dxpad without the padding. Only dx: dW and db are conv_backward's."""
    N, C, H, Wd = x.shape
    O, Cg, K, _ = W.shape
    S, P = stride, padding
    _, _, OH, OW = dout.shape
    Og = O // groups
    spread = np.zeros((N, O, (OH - 1) * S + 2 * K - 1, (OW - 1) * S + 2 * K - 1), dout.dtype)
    for n, o, i, j in np.ndindex(dout.shape):
        spread[n, o, K - 1 + S * i, K - 1 + S * j] = dout[n, o, i, j]
    Wt = np.zeros((C, Og, K, K), W.dtype)
    for o, c, p, q in np.ndindex(W.shape):
        g = o // Og
        Wt[g * Cg + c, o - g * Og, p, q] = W[o, c, K - 1 - p, K - 1 - q]
    dxpad = conv_forward(spread, Wt, np.zeros(C, W.dtype), 1, 0, groups)    # ((OH-1) S + K) rows
    dx = np.zeros_like(x)
    for n, c, h, w in np.ndindex(x.shape):
        if h + P < dxpad.shape[2] and w + P < dxpad.shape[3]:   # rows and columns no window reached: 0
            dx[n, c, h, w] = dxpad[n, c, h + P, w + P]
    return dx


# ---- ReLU (layers/relu.py) ------------------------------------------------------------------------
def relu_forward(x):
    """out = max(0, x); max(0, NaN) is NaN"""
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        out[i] = 0.0 if x[i] <= 0 else x[i]
    return out


def relu_backward(x, dout):
    """dx = dout [x > 0], a product: a NaN dout stays NaN where the unit is off"""
    dx = np.zeros_like(dout)
    for i in np.ndindex(x.shape):
        dx[i] = dout[i] * (1.0 if x[i] > 0 else 0.0)
    return dx


# ---- tanh (layers/tanh.py) ------------------------------------------------------------------------
def tanh_forward(x):
    """out = (e^x - e^-x) / (e^x + e^-x)"""
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        out[i] = math.tanh(x[i])
    return out


def tanh_backward(x, dout):
    """dx = dout (1 - tanh(x)^2)"""
    dx = np.zeros_like(dout)
    for i in np.ndindex(x.shape):
        dx[i] = dout[i] * (1.0 - math.tanh(x[i]) ** 2)
    return dx


# ---- LRN (layers/lrn.py) -------------------------------------------------------------------------
def _window(c, C, size):
    return range(max(0, c - size // 2), min(C - 1, c + size // 2) + 1)


def _lrn_scale(x, n, c, h, w, size, alpha, k):
    """s_c = k + alpha sum_{j in win(c)} a_j^2,  win(c) = max(0, c - size//2) .. min(C-1, c + size//2)"""
    C = x.shape[1]
    return k + alpha * sum(x[n, j, h, w] ** 2 for j in _window(c, C, size))


def lrn_forward(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """b_c = a_c s_c^-beta"""
    out = np.zeros_like(x)
    for n, c, h, w in np.ndindex(x.shape):
        out[n, c, h, w] = x[n, c, h, w] * _lrn_scale(x, n, c, h, w, size, alpha, k) ** -beta
    return out


def lrn_backward(x, dout, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """dx_c = sum_j dout_j db_j/da_c,  db_j/da_c = [j = c] s_j^-beta - 2 alpha beta a_j a_c s_j^(-beta-1)
    over the j whose window holds c (win(c) again: the window is symmetric)."""
    C = x.shape[1]
    dx = np.zeros_like(x)
    for n, c, h, w in np.ndindex(x.shape):
        total = 0.0
        for j in _window(c, C, size):
            s_j = _lrn_scale(x, n, j, h, w, size, alpha, k)
            derivative = -2 * alpha * beta * x[n, j, h, w] * x[n, c, h, w] * s_j ** (-beta - 1)
            if j == c:
                derivative += s_j ** -beta
            total += dout[n, j, h, w] * derivative
        dx[n, c, h, w] = total
    return dx


# ---- overlapping max-pool (layers/pool.py) ---------------------------------------------------------
def _argmax(x, n, c, i, j, K, S):
    """(p*, q*): the first maximum of window (i, j) in row-major order, or its first NaN if it holds one"""
    best = (0, 0)
    for p in range(K):
        for q in range(K):
            v, b = x[n, c, S * i + p, S * j + q], x[n, c, S * i + best[0], S * j + best[1]]
            if v > b or (math.isnan(v) and not math.isnan(b)):
                best = (p, q)
    return best


def maxpool_forward(x, kernel_size=3, stride=2):
    """out[n, c, i, j] = max_{p, q < K} x[n, c, S i + p, S j + q], NaN if the window holds a NaN"""
    N, C, H, W = x.shape
    K, S = kernel_size, stride
    OH, OW = (H - K) // S + 1, (W - K) // S + 1
    out = np.zeros((N, C, OH, OW), x.dtype)
    for n, c, i, j in np.ndindex(out.shape):
        p, q = _argmax(x, n, c, i, j, K, S)
        out[n, c, i, j] = x[n, c, S * i + p, S * j + q]
    return out


def maxpool_backward(x, dout, kernel_size=3, stride=2):
    """dx[n, c, S i + p, S j + q] += dout[n, c, i, j] [(p, q) = (p*, q*)] for every (p, q) of window (i, j):
    only the argmax gets dout, but as a product, so a NaN dout reaches its whole window. Overlapping
    windows can send one input several gradients."""
    K, S = kernel_size, stride
    dx = np.zeros_like(x)
    for n, c, i, j in np.ndindex(dout.shape):
        best = _argmax(x, n, c, i, j, K, S)
        for p in range(K):
            for q in range(K):
                dx[n, c, S * i + p, S * j + q] += dout[n, c, i, j] * (1.0 if (p, q) == best else 0.0)
    return dx


# ---- dense (layers/dense.py) ------------------------------------------------------------------------
def dense_forward(x, W, b):
    """out[n, o] = b[o] + sum_i x[n, i] W[o, i]"""
    N, (O, I) = x.shape[0], W.shape
    out = np.zeros((N, O), x.dtype)
    for n in range(N):
        for o in range(O):
            out[n, o] = b[o] + sum(x[n, i] * W[o, i] for i in range(I))
    return out


def dense_backward(x, W, dout):
    """dW[o, i] = sum_n dout[n, o] x[n, i];  db[o] = sum_n dout[n, o];  dx[n, i] = sum_o dout[n, o] W[o, i]"""
    N, (O, I) = x.shape[0], W.shape
    dx, dW, db = np.zeros_like(x), np.zeros_like(W), np.zeros(O, W.dtype)
    for n in range(N):
        for o in range(O):
            db[o] += dout[n, o]
            for i in range(I):
                dW[o, i] += dout[n, o] * x[n, i]
                dx[n, i] += dout[n, o] * W[o, i]
    return dx, dW, db


# ---- dropout (layers/dropout.py) ----------------------------------------------------------------------
def _dropout_factor(keep, p, train, variant):
    if not train:
        return 1.0 if variant == "inverted" else 1.0 - p
    return (1.0 / (1.0 - p) if variant == "inverted" else 1.0) if keep else 0.0


def dropout_forward(x, keep, p, train=True, variant="inverted"):
    """train: out_i = x_i m_i / (1 - p) (inverted) or x_i m_i (paper); test: x_i or x_i (1 - p).
    `keep` is the mask m (bool, x's shape): the random draw is not the point here."""
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        out[i] = x[i] * _dropout_factor(keep[i], p, train, variant)
    return out


def dropout_backward(dout, keep, p, train=True, variant="inverted"):
    """dx_i = dout_i times the same factor the forward multiplied x_i by"""
    return dropout_forward(dout, keep, p, train, variant)


# ---- softmax cross-entropy (engine/loss.py) ------------------------------------------------------------
def softmax_xent_forward(logits, labels):
    """loss = -(1/N) sum_n log p[n, y_n],  p[n, k] = exp(z[n, k] - m_n) / sum_j exp(z[n, j] - m_n)"""
    N, K = logits.shape
    total = 0.0
    for n in range(N):
        m = max(logits[n, k] for k in range(K))
        log_norm = math.log(sum(math.exp(logits[n, k] - m) for k in range(K)))
        total += -(logits[n, labels[n]] - m - log_norm)
    return total / N


def softmax_xent_backward(logits, labels):
    """dz[n, k] = (p[n, k] - [k = y_n]) / N"""
    N, K = logits.shape
    dz = np.zeros(logits.shape)
    for n in range(N):
        m = max(logits[n, k] for k in range(K))
        norm = sum(math.exp(logits[n, k] - m) for k in range(K))
        for k in range(K):
            dz[n, k] = (math.exp(logits[n, k] - m) / norm - (1.0 if k == labels[n] else 0.0)) / N
    return dz


# ---- the paper's SGD step (engine/optim.py) ------------------------------------------------------------
def sgd_step(w, g, v, lr, momentum=0.9, weight_decay=5e-4, lr_mult=1.0, decay_mult=1.0):
    """v <- m v - decay_mult wd (lr lr_mult) w - (lr lr_mult) g;   w <- w + v   (returns new arrays)
    A term whose coefficient is 0 is absent (not 0 times w or g, which is NaN for an infinite one)."""
    w_new, v_new = np.array(w, dtype=np.float64), np.array(v, dtype=np.float64)
    decay, step = decay_mult * weight_decay * (lr * lr_mult), lr * lr_mult
    for i in np.ndindex(w.shape):
        v_new[i] = momentum * v[i]
        if decay != 0:
            v_new[i] -= decay * w[i]
        if step != 0:
            v_new[i] -= step * g[i]
        w_new[i] = w[i] + v_new[i]
    return w_new, v_new


# ---- adaptive average pooling (layers/avgpool.py) ------------------------------------------------------
def _bin(i, size, out_size):
    """rows (or columns) of output bin i: floor(i size / out_size) .. ceil((i + 1) size / out_size) - 1"""
    return range(math.floor(i * size / out_size), math.ceil((i + 1) * size / out_size))


def adaptive_avgpool_forward(x, output_size):
    """out[n, c, i, j] = sum_{h in rows(i), w in cols(j)} x[n, c, h, w] / (|rows(i)| |cols(j)|)"""
    N, C, H, W = x.shape
    OH, OW = output_size
    out = np.zeros((N, C, OH, OW), x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    rows, cols = _bin(i, H, OH), _bin(j, W, OW)
                    total = 0.0
                    for h in rows:
                        for w in cols:
                            total += x[n, c, h, w]
                    out[n, c, i, j] = total / (len(rows) * len(cols))
    return out


def adaptive_avgpool_backward(x, dout, output_size):
    """dx[n, c, h, w] = sum over the bins (i, j) holding (h, w) of dout[n, c, i, j] / (|rows(i)| |cols(j)|)"""
    N, C, H, W = x.shape
    OH, OW = output_size
    dx = np.zeros(x.shape, dout.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    rows, cols = _bin(i, H, OH), _bin(j, W, OW)
                    for h in rows:
                        for w in cols:
                            dx[n, c, h, w] += dout[n, c, i, j] / (len(rows) * len(cols))
    return dx
