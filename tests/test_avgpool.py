"""AdaptiveAvgPool2d and torchvision's AlexNet (alexnet-tv) built on it.

The layer against the plain loops of layers/reference.py (NumPy path in float64, the CUDA path on
the CPU harness in float32) and against PyTorch; alexnet-tv's shapes and counts, and a whole
forward + backward against torchvision's architecture built with torch.nn.
"""
import numpy as np
import pytest

from conftest import max_rel_diff
from alexnet.app.cli import main
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.layers import AdaptiveAvgPool2d
from alexnet.layers import reference as ref
from alexnet.layers.avgpool import bin_edges, pooling_matrix
from alexnet.models.registry import build_model
from alexnet.models.torchvision import AlexNetTV

# (input shape, output size): overlapping bins, bins repeating pixels (more outputs than inputs),
# even tiling, the identity (alexnet-tv at 224), a single pixel spread over a grid
CASES = [((2, 3, 7, 5), (3, 2)), ((1, 2, 3, 4), (5, 6)), ((3, 2, 8, 6), (4, 3)), ((2, 3, 6, 6), (6, 6)),
         ((1, 1, 1, 1), (2, 3)), ((2, 2, 13, 13), (6, 6))]


def test_bins_follow_pytorchs_rule():
    # 13 rows into 6 bins: floor(13 i / 6) .. ceil(13 (i + 1) / 6); neighbours overlap by one row
    assert [bin_edges(i, 13, 6) for i in range(6)] == [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)]
    assert [bin_edges(i, 2, 5) for i in range(5)] == [(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]
    P = pooling_matrix(13, 6)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    assert P[1].tolist() == [0, 0, 1 / 3, 1 / 3, 1 / 3] + [0] * 8


@pytest.mark.parametrize("threads,grain", [("1", ""), ("2", "1")])
@pytest.mark.parametrize("shape,size", CASES)
def test_numpy_path_matches_the_loops(shape, size, threads, grain, monkeypatch, rng):
    monkeypatch.setenv("ALEXNET_THREADS", threads)
    if grain:
        monkeypatch.setenv("ALEXNET_BATCH_GRAIN", grain)
    layer = AdaptiveAvgPool2d(size)
    x = rng.standard_normal(shape)
    out = layer.forward(x, train=True)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    assert out.shape == shape[:2] + size and dx.shape == shape
    assert max_rel_diff(out, ref.adaptive_avgpool_forward(x, size)) < 1e-12
    assert max_rel_diff(dx, ref.adaptive_avgpool_backward(x, dout, size)) < 1e-12


def test_identity_when_the_input_already_has_the_output_size(rng):
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    layer = AdaptiveAvgPool2d(6)
    np.testing.assert_array_equal(layer.forward(x), x)
    np.testing.assert_array_equal(layer.backward(x), x)


@pytest.mark.parametrize("shape,size", CASES)
def test_cuda_path_on_the_harness_matches_the_loops(shape, size, harness_rt, rng):
    layer = AdaptiveAvgPool2d(size)
    x = rng.standard_normal(shape).astype(np.float32)
    out = layer.forward(x, train=True, runtime=harness_rt)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = layer.backward(dout, runtime=harness_rt)
    assert out.dtype == dx.dtype == np.float32
    assert max_rel_diff(out, ref.adaptive_avgpool_forward(x.astype(np.float64), size)) < 1e-6
    assert max_rel_diff(dx, ref.adaptive_avgpool_backward(x.astype(np.float64), dout.astype(np.float64), size)) < 1e-6


def test_bad_arguments_and_inputs_name_the_layer():
    for bad in (0, (3,), (2, -1), 2.5, "6"):
        with pytest.raises(ValueError, match="AdaptiveAvgPool2d: output_size"):
            AdaptiveAvgPool2d(bad)
    with pytest.raises(ValueError, match=r"avgpool \(AdaptiveAvgPool2d\(6x6\)\): expected input of rank 4"):
        layer = AdaptiveAvgPool2d(6)
        layer.name = "avgpool"
        layer.forward(np.zeros((2, 9216), np.float32))


# ---- against PyTorch ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,size", CASES)
def test_matches_torch(shape, size, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(np.float32)
    layer = AdaptiveAvgPool2d(size)
    out = layer.forward(x, train=True)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = layer.backward(dout)
    tx = torch.tensor(x, requires_grad=True)
    t_out = torch.nn.functional.adaptive_avg_pool2d(tx, size)
    t_out.backward(torch.tensor(dout))
    assert max_rel_diff(out, t_out.detach().numpy()) < 1e-6
    assert max_rel_diff(dx, tx.grad.numpy()) < 1e-6


# ---- alexnet-tv ----------------------------------------------------------------------------------------
def test_alexnet_tv_has_torchvisions_shapes_and_counts():
    net = build_model("alexnet-tv", 1000)
    assert (net.arch, net.num_classes, net.input_size, net.resize_size) == ("alexnet-tv", 1000, 224, 256)
    assert net.num_params() == 61_100_840                      # torchvision's alexnet()
    assert round(net.macs((3, 224, 224)) / 1e6, 1) == 714.2
    shapes = {name: shape for name, _, shape, _, _ in net.summary_rows((3, 224, 224))}
    assert shapes["conv1"] == (64, 55, 55) and shapes["pool5"] == (256, 6, 6) and shapes["avgpool"] == (256, 6, 6)
    assert [layer.name for layer in net.layers][-9:] == ["avgpool", "flatten", "drop6", "fc6", "relu6", "drop7",
                                                         "fc7", "relu7", "fc8"]
    # a larger input still reaches fc6 with 9216 features, through the adaptive pool
    assert net.summary_rows((3, 320, 288))[-1][2] == (1000,)
    assert np.all(net["conv2"].params["b"] == 1) and np.all(net["conv1"].params["b"] == 0)   # paper preset
    with pytest.raises(ValueError, match="alexnet-tv has no option groups .it takes none."):
        build_model("alexnet-tv", 10, groups=2)


def test_summary_prints_alexnet_tv(capsys):
    assert main(["summary", "--model", "alexnet-tv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("alexnet-tv (one tower), input 3x224x224, 1000 classes")
    assert "total: 61,100,840 parameters, 714.2M multiply-adds per image" in out


def test_alexnet_tv_forward_and_backward_match_torchvisions_architecture(rng):
    """Float64, inference mode (dropout off, as torchvision's eval()): the logits, the loss, the input
    gradient and every parameter gradient, with our weights copied into the torch.nn model."""
    torch = pytest.importorskip("torch")
    from torch_models import TorchvisionAlexNet

    net = AlexNetTV(num_classes=10, init="caffe", seed=5).astype(np.float64)
    tnet = TorchvisionAlexNet(10).double().eval()
    modules = {"conv1": tnet.features[0], "conv2": tnet.features[3], "conv3": tnet.features[6],
               "conv4": tnet.features[8], "conv5": tnet.features[10], "fc6": tnet.classifier[1],
               "fc7": tnet.classifier[4], "fc8": tnet.classifier[6]}
    with torch.no_grad():
        for name, m in modules.items():
            m.weight.copy_(torch.tensor(net[name].params["W"]))
            m.bias.copy_(torch.tensor(net[name].params["b"]))
    x = rng.standard_normal((2, 3, 224, 224)) * 50
    labels = np.array([3, 7])
    crit = SoftmaxCrossEntropy()
    logits = net.forward(x)
    loss = crit.forward(logits, labels)
    dx = net.backward(crit.backward())
    tx = torch.tensor(x, requires_grad=True)
    t_logits = tnet(tx)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.tensor(labels))
    t_loss.backward()
    assert max_rel_diff(logits, t_logits.detach().numpy()) < 1e-10
    assert abs(loss - t_loss.item()) < 1e-10 * max(1.0, abs(t_loss.item()))
    assert max_rel_diff(dx, tx.grad.numpy()) < 1e-10
    for name, m in modules.items():
        assert max_rel_diff(net[name].grads["W"], m.weight.grad.numpy()) < 1e-10, name
        assert max_rel_diff(net[name].grads["b"], m.bias.grad.numpy()) < 1e-10, name
