"""Every layer's analytic gradients against central finite differences in float64."""
import numpy as np
import pytest

from alexnet.app.gradcheck import distinct_values, standard_layer_cases
from alexnet.engine.gradcheck import TOLERANCE, check_layer, check_net, relative_error
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.layers import LRN, Conv2d, Dropout, MaxPool2d, conv_im2col, conv_winograd
from alexnet.models.alexnet import tiny_alexnet

CASES = standard_layer_cases()


@pytest.mark.parametrize("label,make_layer,make_input", CASES, ids=[c[0] for c in CASES])
def test_layer_gradients_match_finite_differences(label, make_layer, make_input):
    layer = make_layer()
    rows = check_layer(layer, make_input(np.random.default_rng(0)))
    assert {name for name, _ in rows} == {"dx"} | {f"d{k}" for k in layer.params}
    for name, err in rows:
        assert err < TOLERANCE, f"{label} {name}: relative error {err:.3e}"


def test_loss_gradient_matches_finite_differences(rng):
    logits = rng.standard_normal((4, 6)) * 3
    labels = np.array([0, 5, 2, 2])
    loss = SoftmaxCrossEntropy()
    loss.forward(logits, labels)
    analytic = loss.backward()
    numeric = np.zeros_like(logits)
    eps = 1e-5
    for i in np.ndindex(logits.shape):
        old = logits[i]
        logits[i] = old + eps
        fp = loss.forward(logits, labels)
        logits[i] = old - eps
        fm = loss.forward(logits, labels)
        logits[i] = old
        numeric[i] = (fp - fm) / (2 * eps)
    assert relative_error(analytic, numeric) < TOLERANCE


@pytest.mark.parametrize("variant", ["inverted", "paper"])
@pytest.mark.parametrize("train", [True, False])
def test_tiny_alexnet_end_to_end_gradients(variant, train):
    """Training (dropout on) and inference (dropout off: the backward of an eval-mode forward)."""
    net = tiny_alexnet(num_classes=5, dropout_variant=variant)
    x = np.random.default_rng(0).standard_normal((2, 3, 31, 31))
    rows = check_net(net, SoftmaxCrossEntropy(), x, np.array([1, 3]), train=train)
    assert len(rows) == 1 + 2 * 8          # input + W, b of 5 convs and 3 dense layers
    for name, err in rows:
        assert err < TOLERANCE, f"{name}: relative error {err:.3e}"


@pytest.mark.parametrize("variant", ["inverted", "paper"])
def test_dropout_gradients_after_an_inference_forward(variant):
    rows = check_layer(Dropout(0.3, seed=1, variant=variant), np.random.default_rng(0).standard_normal((3, 5)),
                       train=False)
    assert rows[0][1] < TOLERANCE


def test_gradcheck_detail_shows_entries_side_by_side():
    rows = check_layer(LRN(3, 1.0, 0.75, 1.0), np.random.default_rng(0).standard_normal((1, 4, 2, 2)), detail=3)
    name, err, entries = rows[0]
    assert name == "dx" and len(entries) == 3
    for index, analytic, numeric in entries:
        assert 0 <= index < 16 and abs(analytic - numeric) <= 1e-7 * max(abs(analytic), 1e-12) + 1e-9


def test_gradcheck_catches_a_wrong_backward():
    """The checker itself must be able to fail: break LRN's backward and see it flagged."""
    layer = LRN(5, 1.0, 0.75, 1.0)
    original = layer.backward_numpy
    layer.backward_numpy = lambda dout, need_dx=True: original(dout, need_dx) * 1.001
    rows = check_layer(layer, np.random.default_rng(0).standard_normal((2, 7, 3, 3)))
    assert rows[0][1] > 1e-4


def test_maxpool_backward_routes_each_gradient_to_its_argmax():
    x = distinct_values(np.random.default_rng(5), (1, 1, 5, 5))
    pool = MaxPool2d(3, 2)
    out = pool.forward(x)
    dx = pool.backward(np.ones_like(out))
    # every output's gradient lands on the position of its window's maximum
    expected = np.zeros_like(x)
    for i in range(2):
        for j in range(2):
            win = x[0, 0, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            p, q = np.unravel_index(np.argmax(win), win.shape)
            expected[0, 0, 2 * i + p, 2 * j + q] += 1
            assert out[0, 0, i, j] == win.max()
    np.testing.assert_array_equal(dx, expected)


def test_conv_algorithm_choice_and_bad_values():
    assert Conv2d(4, 4, 3, padding=1).cpu_algorithm() is conv_winograd
    assert Conv2d(4, 4, 3, padding=1, algorithm="im2col").cpu_algorithm() is conv_im2col
    assert Conv2d(4, 4, 3, stride=2).cpu_algorithm() is conv_im2col
    assert Conv2d(4, 4, 5, padding=2).cpu_algorithm() is conv_im2col          # too few channels to pay
    assert Conv2d(96, 256, 5, padding=2, groups=2).cpu_algorithm() is conv_winograd     # AlexNet's conv2
    assert Conv2d(4, 4, 5, padding=2, algorithm="winograd").cpu_algorithm() is conv_winograd
    assert "stride 1" in Conv2d(4, 4, 3, padding=1).algorithm_reason()
    assert "5x5" in Conv2d(4, 4, 5, padding=2).algorithm_reason()
    assert "64 products per 4x4 output tile where im2col has 400" in Conv2d(96, 256, 5, padding=2).algorithm_reason()
    assert "16 products per 2x2 output tile where im2col has 36" in Conv2d(4, 4, 3, padding=1).algorithm_reason()
    with pytest.raises(ValueError, match="algorithm must be one of auto, im2col, winograd"):
        Conv2d(4, 4, 3, algorithm="fft")
    with pytest.raises(ValueError, match=r"winograd' needs a 3x3 or 5x5 kernel with stride 1, got 7x7 with stride 1"):
        Conv2d(4, 4, 7, algorithm="winograd")


def test_winograd_transforms_from_their_points():
    """transforms(m, r) builds F(2x2, 3x3)'s matrices as layers/conv_winograd.py prints them, and
    F(2x2, 5x5)'s as they were written by hand before (integer B^T rows); every point set gives the
    1-D identity A^T [(G g) * (B^T d)] = the m outputs of correlating d with g, and its 2-D
    Kronecker form the same on a tile."""
    BT, G, AT = conv_winograd.transforms(2, 3)
    np.testing.assert_array_equal(BT, [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]])
    np.testing.assert_array_equal(G, [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    np.testing.assert_array_equal(AT, [[1, 1, 1, 0], [0, 1, -1, 1]])
    BT, G, AT = conv_winograd.transforms(2, 5)
    np.testing.assert_array_equal(BT, [[4, 0, -5, 0, 1, 0], [0, 4, 4, -1, -1, 0], [0, -4, 4, 1, -1, 0],
                                       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
    np.testing.assert_allclose(G[:, 0], [1 / 4, 1 / 6, 1 / 6, 1 / 24, 1 / 24, 0], rtol=1e-15)
    rng = np.random.default_rng(5)
    for m, r in conv_winograd.POINTS:
        BT, G, AT = conv_winograd.transforms(m, r)
        a = m + r - 1
        assert BT.shape == (a, a) and G.shape == (a, r) and AT.shape == (m, a)
        assert (BT == np.round(BT)).all()                        # integer rows: exact in float32
        d, g = rng.standard_normal(a), rng.standard_normal(r)
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), np.correlate(d, g, "valid"), rtol=0, atol=1e-13)
        Bk, Gk, Ak = conv_winograd.matrices(np.float64, r, m)
        d2, g2 = rng.standard_normal((a, a)), rng.standard_normal((r, r))
        direct = [[np.sum(d2[i:i + r, j:j + r] * g2) for j in range(m)] for i in range(m)]
        np.testing.assert_allclose((Ak @ ((Gk @ g2.ravel()) * (Bk @ d2.ravel()))).reshape(m, m), direct,
                                   rtol=0, atol=1e-12)
    assert conv_winograd.matrices(np.float32, 5)[0].shape == (64, 64)           # the layer's F(4x4, 5x5)


@pytest.mark.parametrize("shape,K,padding,groups", [((5, 6, 13, 13), 3, 1, 2), ((2, 4, 8, 11), 3, 1, 1),
                                                     ((3, 2, 5, 4), 3, 0, 2), ((3, 8, 27, 27), 5, 2, 2),
                                                     ((2, 3, 9, 6), 5, 1, 1)])
def test_winograd_and_im2col_agree_in_float32(shape, K, padding, groups, rng):
    """AlexNet's conv2-5 sizes and odd ones: both CPU algorithms, forward and backward."""
    C = shape[1]
    layers = [Conv2d(C, 2 * C, K, padding=padding, groups=groups, algorithm=a) for a in ("winograd", "im2col")]
    W = rng.standard_normal(layers[0].params["W"].shape).astype(np.float32) * 0.2
    b = rng.standard_normal(2 * C).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    results = []
    for layer in layers:
        layer.params["W"][...], layer.params["b"][...] = W, b
        out = layer.forward(x)
        dout = np.cos(np.arange(out.size, dtype=np.float32)).reshape(out.shape)
        dx = layer.backward(dout)
        results.append((out, dx, layer.grads["W"], layer.grads["b"]))
    for name, wino, ref in zip(("out", "dx", "dW", "db"), *results):
        assert wino.dtype == np.float32
        np.testing.assert_allclose(wino, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=name)
