"""The small worked examples shared by docs/tools/walkthrough.py and docs/tools/figures.py.

Every example runs the real layer (float64, the NumPy path) on numbers small enough to check by
hand and holds the result to the plain loops of layers/reference.py; a disagreement raises, so a
document or a figure built from these numbers is never built from a wrong one.
"""
from types import SimpleNamespace

import numpy as np

from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.net import Sequential
from alexnet.engine.optim import SGD
from alexnet.layers import LRN, Conv2d, Dense, MaxPool2d
from alexnet.layers import conv_winograd, reference


def _same(what, a, b, tol=1e-12):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol):
        raise AssertionError(f"{what}: the layer and layers/reference.py disagree:\n{a}\n{b}")


# ---- overlapping max-pool: 5x5 input, 3x3 windows with stride 2 ----------------------------------
POOL_X = np.array([[3, 12, 7, 1, 15],
                   [9, 4, 24, 6, 2],
                   [14, 8, 11, 13, 5],
                   [10, 21, 16, 18, 20],
                   [19, 0, 17, 22, 23]], np.float64)
POOL_DOUT = np.array([[1, 10], [100, 1000]], np.float64)


def pool_example():
    """MaxPool2d(3, 2) on POOL_X: the windows (0, 0) and (0, 1) share their maximum (24), so that
    input receives two gradients, 1 + 10."""
    layer = MaxPool2d(3, 2)
    x, dout = POOL_X[None, None], POOL_DOUT[None, None]
    out = layer.forward(x, train=True)
    argmax = layer.cache.argmax.copy()
    dx = layer.backward(dout)
    _same("maxpool forward", out, reference.maxpool_forward(x, 3, 2))
    _same("maxpool backward", dx, reference.maxpool_backward(x, dout, 3, 2))
    K, S = 3, 2
    windows = []                     # (i, j, (row, col) of the argmax in the input)
    for i in range(2):
        for j in range(2):
            off = int(argmax[0, 0, i, j])
            windows.append((i, j, (S * i + off // K, S * j + off % K)))
    return SimpleNamespace(x=POOL_X, dout=POOL_DOUT, out=out[0, 0], argmax=argmax[0, 0], dx=dx[0, 0],
                           windows=windows, kernel_size=K, stride=S, cache_fields=type(layer.cache)._fields)


# ---- a grouped convolution as im2col: 4 channels in 2 groups, 2x2 kernels --------------------------
def conv_x():
    """x[0, c, h, w] = 10 (c + 1) + 3 h + w + 1: the tens digit names the channel, the units digit
    the pixel, so every entry of the patch matrix says where it was copied from."""
    c, h, w = np.meshgrid(np.arange(4), np.arange(3), np.arange(3), indexing="ij")
    return (10 * (c + 1) + 3 * h + w + 1).astype(np.float64)[None]       # (1, 4, 3, 3)


CONV_W = np.array([[[[1, 0], [0, -1]], [[0, 1], [1, 0]]],               # output 0, group 0: channels 0, 1
                   [[[1, 1], [0, 0]], [[0, 0], [-1, 1]]]], np.float64)  # output 1, group 1: channels 2, 3
CONV_B = np.array([1, -1], np.float64)
CONV_DOUT = np.array([[[1, 0], [0, 2]], [[0, 1], [1, 0]]], np.float64)[None]   # (1, 2, 2, 2)


def grouped_conv_example():
    """Conv2d(4, 2, 2, groups=2) through im2col; col is read from the layer's cache."""
    layer = Conv2d(4, 2, 2, groups=2, dtype=np.float64, algorithm="im2col")
    layer.params["W"][...] = CONV_W
    layer.params["b"][...] = CONV_B
    x = conv_x()
    out = layer.forward(x, train=True)
    cache = layer.cache
    (_, _, col), = cache.chunks                                          # (G, Cg*K*K, N*OH*OW)
    col = col.copy()
    dx = layer.backward(CONV_DOUT)
    dW, db = layer.grads["W"], layer.grads["b"]
    _same("conv forward", out, reference.conv_forward(x, CONV_W, CONV_B, 1, 0, 2))
    rdx, rdW, rdb = reference.conv_backward(x, CONV_W, CONV_DOUT, 1, 0, 2)
    _same("conv dx", dx, rdx)
    _same("conv dW", dW, rdW)
    _same("conv db", db, rdb)
    G, Og, Cg, K = 2, 1, 2, 2
    Wg = CONV_W.reshape(G, Og, Cg * K * K)
    dout_g = CONV_DOUT[0].reshape(G, Og, -1)
    prod = np.matmul(Wg, col)                                            # (G, Og, OH*OW)
    _same("W_g @ col_g + b", prod.reshape(2, 2, 2) + CONV_B[:, None, None], out[0])
    dcol = np.matmul(Wg.transpose(0, 2, 1), dout_g)                      # (G, Cg*K*K, OH*OW)
    rows = [(c, p, q) for c in range(Cg) for p in range(K) for q in range(K)]
    return SimpleNamespace(x=x[0], W=CONV_W, b=CONV_B, Wg=Wg, col=col, prod=prod, out=out[0],
                           dout=CONV_DOUT[0], dout_g=dout_g, dW=dW, db=db, dcol=dcol, dx=dx[0],
                           rows=rows, cols=[(i, j) for i in range(2) for j in range(2)],
                           groups=G, kernel_size=K, cache_fields=type(cache)._fields)


# ---- LRN across 3 channels ----------------------------------------------------------------------
LRN_X = np.array([1.0, 2.0, 3.0])
LRN_DOUT = np.array([1.0, 0.0, 1.0])
LRN_ARGS = dict(size=3, alpha=1.0, beta=0.75, k=2.0)


def lrn_example():
    """LRN(size=3, alpha=1, beta=0.75, k=2) at one pixel of 3 channels (alpha exaggerated from the
    paper's 1e-4 so the normalization shows in the digits)."""
    layer = LRN(**LRN_ARGS)
    x, dout = LRN_X.reshape(1, 3, 1, 1), LRN_DOUT.reshape(1, 3, 1, 1)
    out = layer.forward(x, train=True)
    cache = layer.cache
    dx = layer.backward(dout)
    _same("lrn forward", out, reference.lrn_forward(x, **LRN_ARGS))
    _same("lrn backward", dx, reference.lrn_backward(x, dout, **LRN_ARGS))
    size, C = LRN_ARGS["size"], 3
    windows = [list(range(max(0, c - size // 2), min(C - 1, c + size // 2) + 1)) for c in range(C)]
    return SimpleNamespace(x=LRN_X, dout=LRN_DOUT, S=(cache.scale.ravel() - LRN_ARGS["k"]) / LRN_ARGS["alpha"],
                           s=cache.scale.ravel().copy(), s_pow=cache.scale_pow.ravel().copy(),
                           out=out.ravel(), dx=dx.ravel(), windows=windows, args=LRN_ARGS,
                           cache_fields=type(cache)._fields)


# ---- softmax cross-entropy: p - y ------------------------------------------------------------------
SOFTMAX_WEIGHTS = np.array([[1.0, 3.0, 4.0], [2.0, 1.0, 1.0]])    # logits = log of these: p = weights / sum
SOFTMAX_LABELS = np.array([2, 1])


def softmax_example():
    logits = np.log(SOFTMAX_WEIGHTS)
    crit = SoftmaxCrossEntropy()
    loss = crit.forward(logits, SOFTMAX_LABELS)
    probs = crit.cache[0].copy()
    dlogits = crit.backward()
    _same("softmax xent loss", loss, reference.softmax_xent_forward(logits, SOFTMAX_LABELS))
    _same("softmax xent backward", dlogits, reference.softmax_xent_backward(logits, SOFTMAX_LABELS))
    onehot = np.eye(3)[SOFTMAX_LABELS]
    return SimpleNamespace(weights=SOFTMAX_WEIGHTS, logits=logits, labels=SOFTMAX_LABELS, probs=probs,
                           onehot=onehot, loss=loss, dlogits=dlogits, N=len(SOFTMAX_LABELS))


# ---- the paper's SGD step ------------------------------------------------------------------------
SGD_W = np.array([[0.5, -1.0]])
SGD_B = np.array([0.25])
SGD_GRADS = [(np.array([[2.0, -4.0]]), np.array([1.0])), (np.array([[1.0, 1.0]]), np.array([-2.0]))]
SGD_ARGS = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)


def sgd_example():
    """Two steps of engine.optim.SGD (the paper's rule) on a 2 -> 1 Dense layer whose gradients are
    set by hand, each checked against reference.sgd_step."""
    dense = Dense(2, 1, dtype=np.float64)
    net = Sequential([dense], ["fc"])
    dense.params["W"][...] = SGD_W
    dense.params["b"][...] = SGD_B
    opt = SGD(net, **SGD_ARGS)
    steps = []
    ref = {"W": (SGD_W.copy(), np.zeros_like(SGD_W)), "b": (SGD_B.copy(), np.zeros_like(SGD_B))}
    for gW, gb in SGD_GRADS:
        before = {k: (dense.params[k].copy(), opt.velocity[f"fc.{k}"].copy()) for k in ("W", "b")}
        dense.grads = {"W": gW.copy(), "b": gb.copy()}
        opt.step()
        after = {k: (dense.params[k].copy(), opt.velocity[f"fc.{k}"].copy()) for k in ("W", "b")}
        for k, g in (("W", gW), ("b", gb)):
            w_ref, v_ref = reference.sgd_step(*ref[k][:1], g, ref[k][1], **SGD_ARGS)
            _same(f"sgd {k} weight", after[k][0], w_ref)
            _same(f"sgd {k} velocity", after[k][1], v_ref)
            ref[k] = (w_ref, v_ref)
        steps.append(dict(before=before, grads={"W": gW, "b": gb}, after=after))
    return SimpleNamespace(steps=steps, args=SGD_ARGS)


# ---- Winograd F(2x2, 3x3) on one tile ------------------------------------------------------------
WINO_D = np.array([[1, 2, 0, 1],
                   [0, 1, 3, 2],
                   [2, 0, 1, 1],
                   [1, 3, 2, 0]], np.float64)
WINO_G = np.array([[1, 0, -1],
                   [2, 1, 0],
                   [0, 1, 1]], np.float64)


def winograd_example():
    """One 4x4 input tile d and one 3x3 filter g: V = B^T d B, U = G g G^T, M = U * V (16
    products), Y = A^T M A, held to the direct sum, to Conv2d(algorithm="winograd") and to the
    reference loops. The 4x4 and 4x3 matrices are layers/conv_winograd.py's; the layer itself uses
    their Kronecker products (conv_winograd.matrices) on flattened tiles, checked equal here."""
    BT, G, AT = conv_winograd.transforms(2, 3)
    V = BT @ WINO_D @ BT.T
    U = G @ WINO_G @ G.T
    M = U * V
    Y = AT @ M @ AT.T
    Bk, Gk, Ak = conv_winograd.matrices(np.float64, 3, 2)
    _same("kron(B^T, B^T) vec(d)", (Bk @ WINO_D.ravel()).reshape(4, 4), V)
    _same("kron(G, G) vec(g)", (Gk @ WINO_G.ravel()).reshape(4, 4), U)
    _same("kron(A^T, A^T) vec(M)", (Ak @ M.ravel()).reshape(2, 2), Y)
    direct = np.array([[np.sum(WINO_D[i:i + 3, j:j + 3] * WINO_G) for j in range(2)] for i in range(2)])
    _same("winograd vs direct", Y, direct)
    layer = Conv2d(1, 1, 3, dtype=np.float64, algorithm="winograd")
    layer.params["W"][...] = WINO_G
    out = layer.forward(WINO_D[None, None], train=True)
    _same("Conv2d(algorithm='winograd')", out[0, 0], Y)
    _same("reference.conv_forward", reference.conv_forward(WINO_D[None, None], WINO_G[None, None],
                                                           np.zeros(1), 1, 0, 1)[0, 0], Y)
    return SimpleNamespace(d=WINO_D, g=WINO_G, BT=BT, G=G, AT=AT, V=V, U=U, M=M, Y=Y, direct=direct)
