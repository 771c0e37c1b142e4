"""The CUDA path of every layer, the loss and the optimizer: what engine/ calls for CuPy arrays.

    layer_forward(layer, x, train) -> out        sets layer.cache when train
    layer_backward(layer, dout, need_dx=True) -> dx   writes layer.grads[k] (new arrays) for every
                                                 param; need_dx=False skips a Conv2d's input gradient
    softmax_xent_forward(logits, labels) -> (loss as a 0-d float32 array, cache)
    softmax_xent_backward(cache) -> dlogits      (softmax - onehot) / N
    sgd_update(entries, lr, momentum, weight_decay)   one launch for all (w, g, v, lr_mult, decay_mult)

Layers are told apart by class name, so this module needs nothing from layers/. The math and the
shapes are the NumPy layers' (layers/*.py); only the execution differs: every elementwise, window
and reduction step is a kernel from kernels/*.cu, and the matrix products are cuBLAS through
`xp.matmul`. Nothing here copies between host and device.

Every function takes an optional `runtime` (kernels/loader.py), the CuPy one by default; the tests
pass the CPU harness runtime to run this exact code, with NumPy arrays, on machines without a GPU.
"""
from collections import OrderedDict

import numpy as np

from kernels import loader, ops


def _runtime(runtime, who):
    if runtime is not None:
        return runtime
    try:
        return loader.cupy_runtime()
    except loader.CudaUnavailable as e:
        raise loader.CudaUnavailable(f"{who}: {e}") from None


def _kind(layer, table):
    kind = type(layer).__name__
    if kind not in table:
        raise TypeError(f"{layer.name}: no CUDA kernels for layer type {kind} (have {', '.join(table)})")
    return table[kind]


def layer_forward(layer, x, train, runtime=None):
    rt = _runtime(runtime, layer.name)
    return _kind(layer, _FORWARD)(rt, layer, x, train)


def layer_backward(layer, dout, need_dx=True, runtime=None):
    rt = _runtime(runtime, layer.name)
    dx = _kind(layer, _BACKWARD)(rt, layer, dout, need_dx)
    return dx if need_dx else None


# ---- Conv2d: im2col -> one batched matmul over the groups -> bias + transpose to NCHW -------------
def _conv_forward(rt, layer, x, train):
    W, b = layer.params["W"], layer.params["b"]
    ops.check_array(rt, layer.name, "W", W)
    N = x.shape[0]
    K, S, P, G, O = layer.kernel_size, layer.stride, layer.padding, layer.groups, layer.out_channels
    col = ops.conv_im2col(rt, x, K, S, P, who=layer.name)            # col: (C*K*K, N*OH*OW)
    OH, OW = (x.shape[2] + 2 * P - K) // S + 1, (x.shape[3] + 2 * P - K) // S + 1
    y = rt.xp.matmul(W.reshape(G, O // G, -1), col.reshape(G, -1, col.shape[1]))  # y: (G, O/G, N*OH*OW)
    out = ops.conv_bias_forward(rt, y.reshape(O, N, OH * OW), b, who=layer.name)  # out: (N, O, OH*OW)
    if train:
        layer.cache = (x.shape, col)
    return out.reshape(N, O, OH, OW)


def _conv_backward(rt, layer, dout, need_dx):
    (N, C, H, W_), col = layer.cache
    W = layer.params["W"]
    K, S, P, G, O = layer.kernel_size, layer.stride, layer.padding, layer.groups, layer.out_channels
    dy, db = ops.conv_bias_backward(rt, dout.reshape(N, O, -1), who=layer.name)  # dy: (O, N*OH*OW)
    dy = dy.reshape(G, O // G, -1)                                   # (G, O/G, N*OH*OW)
    col_g = col.reshape(G, -1, col.shape[1])                         # (G, Cg*K*K, N*OH*OW)
    dW = rt.xp.matmul(dy, col_g.transpose(0, 2, 1))                  # (G, O/G, Cg*K*K)
    layer.grads["W"] = dW.reshape(W.shape)
    layer.grads["b"] = db
    if not need_dx:  # conv1's input gradient: a large product and col2im that training never uses
        return None
    dcol = rt.xp.matmul(W.reshape(G, O // G, -1).transpose(0, 2, 1), dy)  # (G, Cg*K*K, N*OH*OW)
    return ops.conv_col2im(rt, dcol.reshape(col.shape), (N, C, H, W_), K, S, P, who=layer.name)


# ---- Dense: a 1x1 convolution of a 1x1 image, so the conv bias kernels serve it too -----------------
def _dense_forward(rt, layer, x, train):
    W, b = layer.params["W"], layer.params["b"]
    ops.check_array(rt, layer.name, "x", x)
    ops.check_array(rt, layer.name, "W", W)
    y = rt.xp.matmul(W, x.T)                                         # y: (out, N), channel-major
    out = ops.conv_bias_forward(rt, y.reshape(y.shape[0], -1, 1), b, who=layer.name)  # (N, out, 1)
    if train:
        layer.cache = x
    return out.reshape(x.shape[0], -1)


def _dense_backward(rt, layer, dout, need_dx):
    x = layer.cache
    dy, db = ops.conv_bias_backward(rt, dout.reshape(dout.shape[0], -1, 1), who=layer.name)  # dy: (out, N)
    layer.grads["W"] = rt.xp.matmul(dy, x)                           # (out, in)
    layer.grads["b"] = db
    return rt.xp.matmul(dout, layer.params["W"]) if need_dx else None  # (N, in)


# ---- elementwise and window layers ------------------------------------------------------------------
def _relu_forward(rt, layer, x, train):
    out = ops.relu_forward(rt, x, who=layer.name)
    if train:
        layer.cache = out
    return out


def _relu_backward(rt, layer, dout, need_dx):
    return ops.relu_backward(rt, layer.cache, dout, who=layer.name)


def _lrn_forward(rt, layer, x, train):
    out, scale = ops.lrn_forward(rt, x, layer.size, layer.alpha, layer.beta, layer.k, who=layer.name)
    if train:
        layer.cache = (x, out, scale)
    return out


def _lrn_backward(rt, layer, dout, need_dx):
    x, out, scale = layer.cache
    return ops.lrn_backward(rt, x, out, scale, dout, layer.size, layer.alpha, layer.beta, who=layer.name)


def _pool_forward(rt, layer, x, train):
    out, argmax = ops.maxpool_forward(rt, x, layer.kernel_size, layer.stride, who=layer.name)
    if train:
        layer.cache = (argmax, x.shape)
    return out


def _pool_backward(rt, layer, dout, need_dx):
    argmax, x_shape = layer.cache
    return ops.maxpool_backward(rt, dout, argmax, x_shape, layer.kernel_size, layer.stride, who=layer.name)


def _flatten_forward(rt, layer, x, train):
    if train:
        layer.cache = x.shape
    return x.reshape(x.shape[0], -1)


def _flatten_backward(rt, layer, dout, need_dx):
    return dout.reshape(layer.cache).copy()


def _dropout_forward(rt, layer, x, train):
    """The cache is the step whose mask this forward used: the backward regenerates the mask."""
    if not train:
        return x.copy()
    step = layer.step
    if layer.p > 0:  # as on the CPU, where p = 0 draws no mask
        layer.step += 1
    layer.cache = step
    return ops.dropout_forward(rt, x, layer.p, layer.seed, step, who=layer.name)


def _dropout_backward(rt, layer, dout, need_dx):
    return ops.dropout_backward(rt, dout, layer.p, layer.seed, layer.cache, who=layer.name)


_FORWARD = {"Conv2d": _conv_forward, "Dense": _dense_forward, "ReLU": _relu_forward, "LRN": _lrn_forward,
            "MaxPool2d": _pool_forward, "Flatten": _flatten_forward, "Dropout": _dropout_forward}
_BACKWARD = {"Conv2d": _conv_backward, "Dense": _dense_backward, "ReLU": _relu_backward, "LRN": _lrn_backward,
             "MaxPool2d": _pool_backward, "Flatten": _flatten_backward, "Dropout": _dropout_backward}


# ---- loss --------------------------------------------------------------------------------------------
def softmax_xent_forward(logits, labels, runtime=None):
    """Labels may be any integer array, on the host or the device (N int32s are copied over)."""
    rt = _runtime(runtime, "SoftmaxCrossEntropy")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"SoftmaxCrossEntropy: labels must be integers, got {labels.dtype}")
    labels = rt.xp.ascontiguousarray(rt.xp.asarray(labels), dtype=np.int32)
    loss, probs = ops.softmax_xent_forward(rt, logits, labels, who="SoftmaxCrossEntropy")
    return loss, (probs, labels)


def softmax_xent_backward(cache, runtime=None):
    rt = _runtime(runtime, "SoftmaxCrossEntropy")
    probs, labels = cache
    return ops.softmax_xent_backward(rt, probs, labels, who="SoftmaxCrossEntropy")


# ---- optimizer -----------------------------------------------------------------------------------------
_TABLES = OrderedDict()  # LRU of pointer tables: CuPy's pool recycles a few blocks for the gradients
_TABLES_KEPT = 8


def sgd_update(entries, lr, momentum, weight_decay, runtime=None):
    """v <- m v - decay_mult wd lr w - lr_mult lr g;  w <- w + v, for every entry, in one launch."""
    rt = _runtime(runtime, "SGD")
    ops.check_sgd_entries(rt, entries, who="SGD")
    key = (rt.name,) + tuple((rt.pointer(w), rt.pointer(g), rt.pointer(v), w.size, float(lm), float(dm))
                             for w, g, v, lm, dm in entries)
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = ops.sgd_table(rt, entries)
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    ops.sgd_update(rt, table, lr, momentum, weight_decay)
