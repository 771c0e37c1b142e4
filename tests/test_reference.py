"""Every fast path held to the plain loops of layers/reference.py.

In float64 to 1e-12, on small odd shapes: both convolution algorithms, any way of cutting the
batch into chunks over any number of threads (engine/threads.py), and the loss and the SGD
update. The CUDA paths, run on the CPU harness in float32, are held to the same loops with
float32 tolerances.
"""
import numpy as np
import pytest

from conftest import max_rel_diff
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.net import Sequential
from alexnet.engine.optim import SGD
from alexnet.layers import LRN, Conv2d, Dense, Dropout, MaxPool2d, ReLU, Tanh
from alexnet.layers import reference as ref
from alexnet.layers.dropout import keep_mask

EXACT = 1e-12

# (threads, samples per chunk): one thread; two threads with chunks of 1 sample; three threads
# with the default grain -- the batches below are odd, so chunks come out uneven
CHUNKINGS = [("1", ""), ("2", "1"), ("3", "")]


@pytest.fixture(params=CHUNKINGS, ids=[f"threads{t}-grain{g or 'default'}" for t, g in CHUNKINGS])
def chunking(request, monkeypatch):
    threads, grain = request.param
    monkeypatch.setenv("ALEXNET_THREADS", threads)
    if grain:
        monkeypatch.setenv("ALEXNET_BATCH_GRAIN", grain)
    else:
        monkeypatch.delenv("ALEXNET_BATCH_GRAIN", raising=False)


def with_params(layer, rng):
    for key, p in layer.params.items():
        layer.params[key] = rng.standard_normal(p.shape)
    return layer


def run(layer, x, dout, train=True, runtime=None):
    out = layer.forward(x, train=train, runtime=runtime)
    dx = layer.backward(dout, runtime=runtime)
    return out, dx


CONVS = [  # (in, out, kernel, stride, pad, groups, input shape)
    (3, 4, 3, 1, 0, 1, (3, 3, 7, 6)),
    (4, 6, 3, 1, 1, 2, (3, 4, 5, 7)),
    (2, 2, 3, 1, 2, 1, (1, 2, 3, 4)),
    (6, 3, 3, 2, 1, 3, (3, 6, 7, 5)),
    (2, 4, 5, 4, 0, 1, (2, 2, 13, 14)),
    (4, 4, 5, 1, 2, 2, (3, 4, 6, 5)),
    (2, 3, 5, 1, 1, 1, (2, 2, 9, 8)),
]


# every convolution with im2col; the 3x3 and 5x5 stride-1 ones with Winograd too (it takes no others)
CONV_CASES = [("im2col",) + c for c in CONVS] + [("winograd",) + c for c in CONVS if c[2:4] in ((3, 1), (5, 1))]


@pytest.mark.parametrize("algorithm,C,O,K,S,P,G,shape", CONV_CASES)
def test_conv_matches_the_loops(algorithm, C, O, K, S, P, G, shape, chunking, rng):
    layer = with_params(Conv2d(C, O, K, stride=S, padding=P, groups=G, algorithm=algorithm), rng)
    x = rng.standard_normal(shape)
    dout = rng.standard_normal((shape[0],) + layer.output_shape(shape[1:]))
    out, dx = run(layer, x, dout)
    W, b = layer.params["W"], layer.params["b"]
    assert max_rel_diff(out, ref.conv_forward(x, W, b, S, P, G)) < EXACT
    ref_dx, ref_dW, ref_db = ref.conv_backward(x, W, dout, S, P, G)
    assert max_rel_diff(dx, ref_dx) < EXACT
    assert max_rel_diff(layer.grads["W"], ref_dW) < EXACT
    assert max_rel_diff(layer.grads["b"], ref_db) < EXACT


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (5, 1.0, 0.75, 1.0), (3, 0.3, 0.5, 1.0),
                                               (7, 0.2, 1.1, 0.5)])
def test_lrn_matches_the_loops(size, alpha, beta, k, chunking, rng):
    x, dout = rng.standard_normal((3, 9, 3, 4)), rng.standard_normal((3, 9, 3, 4))
    out, dx = run(LRN(size, alpha, beta, k), x, dout)
    assert max_rel_diff(out, ref.lrn_forward(x, size, alpha, beta, k)) < EXACT
    assert max_rel_diff(dx, ref.lrn_backward(x, dout, size, alpha, beta, k)) < EXACT


@pytest.mark.parametrize("K,S,shape", [(3, 2, (3, 2, 9, 8)), (3, 2, (1, 3, 7, 7)), (2, 2, (3, 2, 6, 5)),
                                       (3, 1, (2, 1, 5, 6))])
def test_maxpool_matches_the_loops(K, S, shape, chunking, rng):
    x = rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0       # distinct: no ties
    layer = MaxPool2d(K, S)
    dout = rng.standard_normal((shape[0],) + layer.output_shape(shape[1:]))
    out, dx = run(layer, x, dout)
    np.testing.assert_array_equal(out, ref.maxpool_forward(x, K, S))
    assert max_rel_diff(dx, ref.maxpool_backward(x, dout, K, S)) < EXACT


def test_maxpool_ties_and_overlaps_as_in_the_loops(chunking):
    ones = np.ones((1, 1, 2, 2))
    x = np.zeros((1, 1, 5, 5))                      # every window is one big tie: the first wins
    _, dx = run(MaxPool2d(3, 2), x, ones)
    np.testing.assert_array_equal(dx, ref.maxpool_backward(x, ones, 3, 2))
    assert dx[0, 0, ::2, ::2].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    x[0, 0, 2, 2] = 1.0                              # the pixel all four 3x3/2 windows share
    _, dx = run(MaxPool2d(3, 2), x, ones)
    np.testing.assert_array_equal(dx, ref.maxpool_backward(x, ones, 3, 2))
    assert dx[0, 0, 2, 2] == 4 and dx.sum() == 4    # four gradients added on one input


def test_dense_relu_and_tanh_match_the_loops(chunking, rng):
    dense = with_params(Dense(7, 5), rng)
    x, dout = rng.standard_normal((3, 7)), rng.standard_normal((3, 5))
    out, dx = run(dense, x, dout)
    assert max_rel_diff(out, ref.dense_forward(x, dense.params["W"], dense.params["b"])) < EXACT
    ref_dx, ref_dW, ref_db = ref.dense_backward(x, dense.params["W"], dout)
    for got, want in ((dx, ref_dx), (dense.grads["W"], ref_dW), (dense.grads["b"], ref_db)):
        assert max_rel_diff(got, want) < EXACT
    x = rng.standard_normal((3, 2, 3, 5))
    x += np.sign(x) * 0.1
    dout = rng.standard_normal(x.shape)
    out, dx = run(ReLU(), x, dout)
    np.testing.assert_array_equal(out, ref.relu_forward(x))
    np.testing.assert_array_equal(dx, ref.relu_backward(x, dout))
    out, dx = run(Tanh(), 3 * x, dout)
    assert max_rel_diff(out, ref.tanh_forward(3 * x)) < EXACT
    assert max_rel_diff(dx, ref.tanh_backward(3 * x, dout)) < EXACT


@pytest.mark.parametrize("variant", ["inverted", "paper"])
@pytest.mark.parametrize("train", [True, False])
def test_dropout_matches_the_loops(variant, train, chunking, rng):
    x, dout = rng.standard_normal((3, 41)), rng.standard_normal((3, 41))
    layer = Dropout(0.4, seed=5, variant=variant)
    layer.step = 2
    out, dx = run(layer, x, dout, train=train)
    keep = keep_mask(5, 2, x.size, 0.4).reshape(x.shape)
    assert max_rel_diff(out, ref.dropout_forward(x, keep, 0.4, train, variant)) < EXACT
    assert max_rel_diff(dx, ref.dropout_backward(dout, keep, 0.4, train, variant)) < EXACT


def test_softmax_xent_matches_the_loops(rng):
    logits, labels = rng.standard_normal((5, 7)) * 4, rng.integers(0, 7, 5)
    crit = SoftmaxCrossEntropy()
    loss = crit.forward(logits, labels)
    assert abs(loss - ref.softmax_xent_forward(logits, labels)) < EXACT * abs(loss)
    assert max_rel_diff(crit.backward(), ref.softmax_xent_backward(logits, labels)) < EXACT


def test_sgd_step_matches_the_loops(chunking, rng):
    """Two steps with an LR change, bias multipliers as in Caffe (2x LR, no decay)."""
    layer = with_params(Dense(5, 3), rng)
    net = Sequential([layer], ["fc"])
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=0.01, bias_lr_mult=2.0, bias_decay=0.0)
    w = {k: p.copy() for k, p in layer.params.items()}
    v = {k: np.zeros_like(p) for k, p in layer.params.items()}
    for lr in (0.1, 0.03):
        opt.lr = lr
        layer.grads = {k: rng.standard_normal(p.shape) for k, p in layer.params.items()}
        opt.step()
        for key, (lr_mult, decay_mult) in (("W", (1.0, 1.0)), ("b", (2.0, 0.0))):
            w[key], v[key] = ref.sgd_step(w[key], layer.grads[key], v[key], lr, 0.9, 0.01, lr_mult, decay_mult)
            assert max_rel_diff(layer.params[key], w[key]) < EXACT
            assert max_rel_diff(opt.velocity[f"fc.{key}"], v[key]) < EXACT


# ---- the CUDA paths, on the CPU harness (float32) -------------------------------------------------
@pytest.mark.parametrize("make,shape", [
    (lambda: Conv2d(4, 6, 3, padding=1, groups=2), (2, 4, 5, 7)),
    (lambda: Conv2d(3, 4, 5, stride=3), (2, 3, 11, 10)),
    (lambda: LRN(5, 1.0, 0.75, 1.0), (2, 7, 3, 3)),
    (lambda: MaxPool2d(3, 2), (2, 3, 7, 9)),
    (lambda: Dense(9, 4), (3, 9)),
    (Tanh, (2, 3, 4, 5)),
    (lambda: Dropout(0.3, seed=2, variant="paper"), (3, 17)),
], ids=["conv-grouped", "conv-strided", "lrn", "maxpool", "dense", "tanh", "dropout-paper"])
def test_cuda_paths_on_the_harness_match_the_loops(make, shape, harness_rt, rng):
    layer = make()
    for key, p in layer.params.items():
        layer.params[key] = rng.standard_normal(p.shape).astype(np.float32)
    x = (rng.permutation(int(np.prod(shape))).reshape(shape) / 11.0 if isinstance(layer, MaxPool2d)
         else rng.standard_normal(shape)).astype(np.float32)
    out_shape = (shape[0],) + layer.output_shape(shape[1:])
    dout = rng.standard_normal(out_shape).astype(np.float32)
    out, dx = run(layer, x, dout, runtime=harness_rt)
    x64, d64 = x.astype(np.float64), dout.astype(np.float64)
    p64 = {k: p.astype(np.float64) for k, p in layer.params.items()}
    if isinstance(layer, Conv2d):
        want_out = ref.conv_forward(x64, p64["W"], p64["b"], layer.stride, layer.padding, layer.groups)
        want_dx, want_dW, want_db = ref.conv_backward(x64, p64["W"], d64, layer.stride, layer.padding, layer.groups)
        assert max_rel_diff(layer.grads["W"], want_dW) < 1e-5
        assert max_rel_diff(layer.grads["b"], want_db) < 1e-5
    elif isinstance(layer, Dense):
        want_out = ref.dense_forward(x64, p64["W"], p64["b"])
        want_dx, want_dW, want_db = ref.dense_backward(x64, p64["W"], d64)
        assert max_rel_diff(layer.grads["W"], want_dW) < 1e-5
    elif isinstance(layer, LRN):
        want_out, want_dx = ref.lrn_forward(x64, 5, 1.0, 0.75, 1.0), ref.lrn_backward(x64, d64, 5, 1.0, 0.75, 1.0)
    elif isinstance(layer, MaxPool2d):
        want_out, want_dx = ref.maxpool_forward(x64, 3, 2), ref.maxpool_backward(x64, d64, 3, 2)
    elif isinstance(layer, Tanh):
        want_out, want_dx = ref.tanh_forward(x64), ref.tanh_backward(x64, d64)
    else:
        keep = keep_mask(2, 0, x.size, 0.3).reshape(shape)
        want_out = ref.dropout_forward(x64, keep, 0.3, True, "paper")
        want_dx = ref.dropout_backward(d64, keep, 0.3, True, "paper")
    assert max_rel_diff(out, want_out) < 1e-5
    assert max_rel_diff(dx, want_dx) < 1e-5


@pytest.mark.parametrize("C,O,K,S,P,G,shape", CONVS)
def test_conv_backward_is_a_convolution_with_the_flipped_kernel(C, O, K, S, P, G, shape, rng):
    """dx as docs/backprop.md derives it a second way: dout spread by the stride, padded by K - 1
    and convolved with the flipped, channel-swapped kernel, against the direct loops (exactly)."""
    x, W = rng.standard_normal(shape), rng.standard_normal((O, C // G, K, K))
    dout = rng.standard_normal(ref.conv_forward(x, W, np.zeros(O), S, P, G).shape)
    dx = ref.conv_backward(x, W, dout, S, P, G)[0]
    assert max_rel_diff(ref.conv_backward_as_convolution(x, W, dout, S, P, G), dx) < EXACT
    # and the flip matters: the unflipped kernel gives another gradient (the workbook's hint)
    assert max_rel_diff(ref.conv_backward(x, W[:, :, ::-1, ::-1], dout, S, P, G)[0], dx) > 1e-3


@pytest.mark.parametrize("K,S,P,side", [(11, 4, 0, 227), (5, 1, 2, 27), (3, 2, 0, 13), (3, 1, 1, 13)])
def test_im2col_copies_a_pixel_up_to_ceil_k_over_s_squared_times(K, S, P, side):
    """The number of patches (im2col columns) holding one input pixel is the number of windows
    covering it: at most ceil(K/S)^2 (conv1: 9, not (11/4)^2 = 7.56), as layers/conv_im2col.py
    and docs/backprop.md say. Counted by the layer itself: ones backpropagated through ones."""
    import math
    from pathlib import Path

    conv = Conv2d(1, 1, K, stride=S, padding=P, dtype=np.float64, algorithm="im2col")
    conv.params["W"][...] = 1
    x = np.zeros((1, 1, side, side))
    copies = conv.backward(np.ones_like(conv.forward(x)))
    assert copies.max() == math.ceil(K / S) ** 2
    root = Path(__file__).resolve().parent.parent
    for doc in (root / "layers" / "conv_im2col.py", root / "docs" / "backprop.md"):
        text = doc.read_text()
        assert "ceil(K/S)^2" in text and "(K/S)^2" not in text.replace("ceil(K/S)^2", ""), doc.name
