"""AlexNet's shapes, parameter count and multiply-adds; state dicts; bad input; learning."""
import numpy as np
import pytest

from alexnet.app.cli import main
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.optim import SGD
from alexnet.layers import LRN, Conv2d, Dense, Dropout, MaxPool2d, ReLU
from alexnet.models.alexnet import AlexNet, AlexNetSmall
from alexnet.models.registry import build_model

PAPER_SHAPES = {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27),
                "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
                "conv5": (256, 13, 13), "pool5": (256, 6, 6), "flatten": (9216,), "fc6": (4096,),
                "fc7": (4096,), "fc8": (1000,)}


@pytest.fixture(scope="module")
def alexnet():
    return AlexNet(num_classes=1000, groups=2, init="paper")


def test_alexnet_parameters_and_multiply_adds(alexnet):
    assert alexnet.num_params() == 60_965_224
    macs = alexnet.macs((3, 227, 227))
    assert round(macs / 1e6, 1) == 724.4
    shapes = {name: shape for name, _, shape, _, _ in alexnet.summary_rows((3, 227, 227))}
    for name, shape in PAPER_SHAPES.items():
        assert shapes[name] == shape, name
    assert alexnet["conv2"].params["W"].shape == (256, 48, 5, 5)
    assert alexnet["conv4"].params["W"].shape == (384, 192, 3, 3)


def test_one_tower_alexnet_has_the_ungrouped_count():
    net = AlexNet(num_classes=1000, groups=1)
    # conv2, conv4, conv5 see all input channels: twice their grouped weights
    assert net.num_params() == 60_965_224 + 256 * 48 * 25 + 384 * 192 * 9 + 256 * 192 * 9


def test_paper_init(alexnet):
    for name in ("conv1", "conv3", "fc8"):
        assert np.all(alexnet[name].params["b"] == 0)
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        assert np.all(alexnet[name].params["b"] == 1)
    assert abs(alexnet["fc6"].params["W"].std() - 0.01) < 1e-4
    caffe = AlexNet(num_classes=10, init="caffe")
    assert abs(caffe["fc7"].params["W"].std() - 0.005) < 1e-4
    assert np.all(caffe["fc7"].params["b"] == np.float32(0.1))


def test_forward_shape_and_state_dict_round_trip(rng):
    net = AlexNetSmall(num_classes=7, seed=1)
    x = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    out = net.forward(x, train=False)
    assert out.shape == (3, 7) and out.dtype == np.float32
    other = AlexNetSmall(num_classes=7, seed=2)
    assert not np.allclose(other.forward(x, train=False), out)
    other.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(other.forward(x, train=False), out)
    with pytest.raises(ValueError, match="fc8.W"):
        AlexNetSmall(num_classes=8).load_state_dict(net.state_dict())


def test_dropout_rng_state_round_trip(rng):
    net = AlexNetSmall(num_classes=4, seed=3)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    state = net.rng_state()
    first = net.forward(x, train=True)
    net.set_rng_state(state)
    np.testing.assert_array_equal(net.forward(x, train=True), first)


@pytest.mark.parametrize("layer,x,match", [
    (Conv2d(3, 8, 3), np.zeros((2, 4, 8, 8), np.float32), r"conv2d .*expected 3 input channels.*\(4, 8, 8\)"),
    (Conv2d(3, 8, 3), np.zeros((3, 8, 8), np.float32), r"expected input of rank 4"),
    (Conv2d(3, 8, 3), np.zeros((2, 3, 8, 8), np.int64), r"float32 or float64, got dtype int64"),
    (Conv2d(3, 8, 3), np.zeros((0, 3, 8, 8), np.float32), r"batch size 0"),
    (Conv2d(3, 8, 11, padding=1), np.zeros((1, 3, 8, 8), np.float32), r"kernel 11x11 is larger than the padded input 10x10"),
    (Dense(10, 4), np.zeros((2, 2, 5), np.float32), r"expected input of rank 2"),
    (Dense(10, 4), np.zeros((2, 9), np.float32), r"expected 10 input features"),
    (MaxPool2d(3, 2), np.zeros((1, 1, 2, 5), np.float32), r"larger than the input"),
    (LRN(), np.zeros((2, 5), np.float32), r"rank 4"),
    (ReLU(), [1.0, 2.0], r"NumPy or CuPy array"),
])
def test_bad_input_is_a_clear_value_error(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer.forward(x)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="groups=2 must divide in_channels=3"):
        Conv2d(3, 8, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2d(3, 8, 0)
    with pytest.raises(ValueError, match="odd"):
        LRN(size=4)
    with pytest.raises(ValueError, match="p must be"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", 10)
    with pytest.raises(ValueError, match="unknown init preset"):
        AlexNetSmall(10, init="xavier")


def test_error_names_the_layer_in_a_network():
    net = AlexNetSmall(num_classes=3)
    with pytest.raises(ValueError, match=r"^conv1 .*\(1, 64, 64\)"):
        net.forward(np.zeros((2, 1, 64, 64), np.float32))


def test_small_net_overfits_two_fixed_batches(rng):
    """Loss on two fixed batches falls to near zero: forward, backward and SGD fit together.
    Dropout is off: memorising noise images through 256-unit layers at p=0.5 needs far more steps."""
    net = AlexNetSmall(num_classes=5, init="he", seed=0, dropout=0.0)
    batches = [(rng.standard_normal((8, 3, 64, 64)).astype(np.float32), rng.integers(0, 5, 8))
               for _ in range(2)]
    opt = SGD(net, lr=0.001, momentum=0.9, weight_decay=0.0)
    crit = SoftmaxCrossEntropy()
    first = None
    for step in range(100):
        x, y = batches[step % 2]
        loss = crit.forward(net.forward(x, train=True), y)
        first = first if first is not None else loss
        net.backward(crit.backward(), need_dx=False)
        opt.step()
    final = max(crit.forward(net.forward(x, train=False), y) for x, y in batches)
    assert first > 1.0
    assert final < 0.05, f"loss {first:.3f} -> {final:.3f}"


def test_cli_summary_prints_the_paper_totals(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "60,965,224 parameters" in out and "724.4M multiply-adds" in out
    assert "conv2" in out and "48x" not in out
    # which algorithm each convolution runs on the CPU, and why
    import re
    algorithms = dict(re.findall(r"^  (conv\d)\s+(im2col|winograd)", out, re.M))
    assert algorithms == {"conv1": "im2col", "conv2": "winograd", "conv3": "winograd", "conv4": "winograd",
                          "conv5": "winograd"}
    assert "11x11 stride 4" in out and "3x3 stride 1" in out


def test_cli_gradcheck_one_layer_verbose_shows_entries(capsys):
    import re
    assert main(["gradcheck", "--layer", "maxpool2d", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "maxpool 3/2 overlapping" in out and "lrn" not in out and "tiny AlexNet" not in out
    entries = re.findall(r"analytic ([-+]\S+)  numeric ([-+]\S+)", out)
    assert len(entries) >= 8
    for analytic, numeric in entries:
        assert abs(float(analytic) - float(numeric)) < 1e-6 * max(1.0, abs(float(analytic)))
    assert main(["gradcheck", "--layer", "attention"]) == 2
    assert "--layer 'attention' is not one of" in capsys.readouterr().err
    assert main(["gradcheck", "--layer", "conv"]) == 0                 # the name people type
    out = capsys.readouterr().out
    assert "conv 11x11/4" in out or "conv" in out.splitlines()[1] and "lrn" not in out


def test_cli_gradcheck_passes(capsys):
    assert main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "all passed" in out and "FAIL" not in out
    assert out.count("pass") >= 30


def test_a_relu_cache_is_free_only_where_the_next_layer_caches_the_same_array(rng):
    """layers/relu.py's claim, measured: relu1 and relu2 cache the array LRN caches as its input;
    relu3-relu7's outputs are kept by nothing else (a Winograd convolution keeps its transformed
    tiles, dropout keeps a counter), so their caches are memory of their own."""
    from alexnet.layers import relu as relu_module

    net = AlexNetSmall(num_classes=10, init="he", seed=0)
    net.forward(rng.standard_normal((2, 3, 64, 64)).astype(np.float32), train=True)

    def arrays(cache):
        fields = cache if isinstance(cache, tuple) else (cache,)
        found = [f for f in fields if isinstance(f, np.ndarray)]
        for f in fields:            # a convolution's chunks: (lo, hi, saved)
            if isinstance(f, list):
                found += [saved for _, _, saved in f if isinstance(saved, np.ndarray)]
        return found

    shared = {}
    for i, layer in enumerate(net.layers):
        if layer.name.startswith("relu"):
            later = [a for other in net.layers[i + 1:] if other.cache is not None for a in arrays(other.cache)]
            shared[layer.name] = any(np.shares_memory(layer.cache, a) for a in later)
    assert shared == {"relu1": True, "relu2": True, "relu3": False, "relu4": False, "relu5": False,
                      "relu6": False, "relu7": False}
    assert "no extra memory" not in relu_module.__doc__
