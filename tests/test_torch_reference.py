"""Forward and backward of every layer, and a full AlexNet step, against PyTorch, in float64.

In float64 both libraries compute the same numbers up to the order of their sums, so the
tolerances are 1e-12 of a tensor's scale (1e-10 through the whole network), the same on any CPU
and any BLAS. In float32 two correct implementations differ by rounding that depends on the
machine (another CPU put a conv gradient 0.022 apart): float32 is held to float64 elsewhere
(tests/test_reference.py, tests/test_edge_cases.py), not to another library's float32.
Skipped cleanly where PyTorch is absent; CI installs the CPU build (torch==2.13.0).
"""
import numpy as np
import pytest

from conftest import max_rel_diff
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.layers import LRN, Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU, Tanh
from alexnet.layers.dropout import keep_mask
from alexnet.models.alexnet import AlexNet

torch = pytest.importorskip("torch")
F = torch.nn.functional


def run_ours(layer, x, upstream):
    out = layer.forward(x, train=True)
    return out, layer.backward(upstream)


def run_torch(fn, x, upstream, *params):
    tx = torch.tensor(x, requires_grad=True)
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    out = fn(tx, *tparams)
    out.backward(torch.tensor(upstream))
    return out.detach().numpy(), tx.grad.numpy(), [p.grad.numpy() for p in tparams]


@pytest.mark.parametrize("cfg", [
    dict(in_channels=3, out_channels=8, kernel_size=11, stride=4, padding=0, groups=1, hw=39),
    dict(in_channels=8, out_channels=12, kernel_size=5, stride=1, padding=2, groups=2, hw=13),
    dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding=1, groups=3, hw=10),
    dict(in_channels=16, out_channels=24, kernel_size=3, stride=1, padding=1, groups=1, hw=13),
    dict(in_channels=24, out_channels=16, kernel_size=3, stride=1, padding=1, groups=2, hw=13),
    dict(in_channels=24, out_channels=16, kernel_size=3, stride=1, padding=1, groups=2, hw=13,
         algorithm="im2col"),
], ids=["conv1-like", "conv2-like-groups2", "stride2-groups3", "conv3-like-winograd",
        "conv5-like-groups2-winograd", "conv5-like-groups2-im2col"])
def test_conv(cfg, rng):
    hw = cfg.pop("hw")
    layer = Conv2d(**cfg, dtype=np.float64)
    layer.params["W"][...] = rng.standard_normal(layer.params["W"].shape) * 0.1
    layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape)
    x = rng.standard_normal((3, cfg["in_channels"], hw, hw)).astype(np.float64)
    up = rng.standard_normal((3,) + layer.output_shape(x.shape[1:])).astype(np.float64)
    out, dx = run_ours(layer, x, up)
    t_out, t_dx, (t_dW, t_db) = run_torch(
        lambda a, W, b: F.conv2d(a, W, b, stride=cfg["stride"], padding=cfg["padding"], groups=cfg["groups"]),
        x, up, layer.params["W"], layer.params["b"])
    assert max_rel_diff(out, t_out) < 1e-12
    assert max_rel_diff(dx, t_dx) < 1e-12
    assert max_rel_diff(layer.grads["W"], t_dW) < 1e-12
    assert max_rel_diff(layer.grads["b"], t_db) < 1e-12


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (5, 1.0, 0.75, 1.0), (3, 0.1, 0.5, 1.0)])
def test_lrn_maps_to_torch_with_alpha_times_size(size, alpha, beta, k, rng):
    x = rng.standard_normal((2, 10, 4, 5)).astype(np.float64) * 3
    up = rng.standard_normal(x.shape).astype(np.float64)
    out, dx = run_ours(LRN(size, alpha, beta, k), x, up)
    t_out, t_dx, _ = run_torch(lambda a: F.local_response_norm(a, size, alpha * size, beta, k), x, up)
    assert max_rel_diff(out, t_out) < 1e-12
    assert max_rel_diff(dx, t_dx) < 1e-12


def test_maxpool(rng):
    x = rng.permutation(2 * 4 * 13 * 14).reshape(2, 4, 13, 14).astype(np.float64)
    up = rng.standard_normal((2, 4, 6, 6)).astype(np.float64)
    out, dx = run_ours(MaxPool2d(3, 2), x, up)
    t_out, t_dx, _ = run_torch(lambda a: F.max_pool2d(a, 3, 2), x, up)
    np.testing.assert_array_equal(out, t_out)
    np.testing.assert_allclose(dx, t_dx, rtol=0, atol=1e-12)


def test_relu_dense_flatten(rng):
    x = rng.standard_normal((5, 3, 2, 2)).astype(np.float64)
    up = rng.standard_normal((5, 7)).astype(np.float64)
    dense = Dense(12, 7, np.float64)
    dense.params["W"][...] = rng.standard_normal((7, 12))
    dense.params["b"][...] = rng.standard_normal(7)
    relu, flat = ReLU(), Flatten()
    out = dense.forward(flat.forward(relu.forward(x)))
    dx = relu.backward(flat.backward(dense.backward(up)))
    t_out, t_dx, (t_dW, t_db) = run_torch(
        lambda a, W, b: F.linear(torch.flatten(F.relu(a), 1), W, b), x, up, dense.params["W"], dense.params["b"])
    assert max_rel_diff(out, t_out) < 1e-12
    assert max_rel_diff(dx, t_dx) < 1e-12
    assert max_rel_diff(dense.grads["W"], t_dW) < 1e-12
    assert max_rel_diff(dense.grads["b"], t_db) < 1e-12


def test_tanh(rng):
    x = 3 * rng.standard_normal((4, 3, 5, 6)).astype(np.float64)
    up = rng.standard_normal(x.shape).astype(np.float64)
    out, dx = run_ours(Tanh(), x, up)
    t_out, t_dx, _ = run_torch(torch.tanh, x, up)
    assert max_rel_diff(out, t_out) < 1e-12
    assert max_rel_diff(dx, t_dx) < 1e-12


def test_dropout_is_inverted_and_matches_its_mask(rng):
    x = rng.standard_normal((64, 256)).astype(np.float64)
    layer = Dropout(0.5, seed=7)
    out = layer.forward(x, train=True)
    kept = out != 0
    assert 0.45 < kept.mean() < 0.55
    np.testing.assert_allclose(out[kept], 2 * x[kept], rtol=1e-15)
    up = rng.standard_normal(x.shape).astype(np.float64)
    np.testing.assert_allclose(layer.backward(up), up * 2 * kept, rtol=1e-15)
    np.testing.assert_array_equal(layer.forward(x, train=False), x)
    # same seed, same masks
    np.testing.assert_array_equal(Dropout(0.5, seed=7).forward(x, train=True) != 0, kept)
    # a forward that does not say it is training applies no dropout
    np.testing.assert_array_equal(Dropout(0.5, seed=7).forward(x), x)


def dropout_multiplier(layer, shape):
    """What our dropout layer's last forward multiplied its input by, as a tensor for PyTorch."""
    step, scale = layer.cache.step, layer.cache.scale
    keep = np.ones(shape, bool) if step is None else keep_mask(layer.seed, step, int(np.prod(shape)),
                                                               layer.p).reshape(shape)
    return torch.tensor(keep.astype(np.float64) * float(scale))


def torch_alexnet_step(net, x, labels):
    """PyTorch forward + backward of the same network with our weights and our dropout masks."""
    t = torch.tensor(x, requires_grad=True)
    params = {}
    h = t
    for layer in net.layers:
        if isinstance(layer, Conv2d):
            W = params[layer.name + ".W"] = torch.tensor(layer.params["W"], requires_grad=True)
            b = params[layer.name + ".b"] = torch.tensor(layer.params["b"], requires_grad=True)
            h = F.conv2d(h, W, b, stride=layer.stride, padding=layer.padding, groups=layer.groups)
        elif isinstance(layer, Dense):
            W = params[layer.name + ".W"] = torch.tensor(layer.params["W"], requires_grad=True)
            b = params[layer.name + ".b"] = torch.tensor(layer.params["b"], requires_grad=True)
            h = F.linear(h, W, b)
        elif isinstance(layer, ReLU):
            h = F.relu(h)
        elif isinstance(layer, LRN):
            h = F.local_response_norm(h, layer.size, layer.alpha * layer.size, layer.beta, layer.k)
        elif isinstance(layer, MaxPool2d):
            h = F.max_pool2d(h, layer.kernel_size, layer.stride)
        elif isinstance(layer, Flatten):
            h = torch.flatten(h, 1)
        elif isinstance(layer, Dropout):
            h = h * dropout_multiplier(layer, tuple(h.shape))
    loss = F.cross_entropy(h, torch.tensor(labels))
    loss.backward()
    return loss.item(), t.grad.numpy(), {k: v.grad.numpy() for k, v in params.items()}


def test_full_alexnet_forward_and_backward_match_torch(rng):
    net = AlexNet(num_classes=1000, groups=2, init="caffe", seed=3).astype(np.float64)
    x = rng.standard_normal((2, 3, 227, 227))
    labels = np.array([5, 901])
    crit = SoftmaxCrossEntropy()
    loss = crit.forward(net.forward(x, train=True), labels)
    dx = net.backward(crit.backward())
    t_loss, t_dx, t_grads = torch_alexnet_step(net, x, labels)
    assert abs(loss - t_loss) < 1e-12 * max(1.0, abs(t_loss))
    assert max_rel_diff(dx, t_dx) < 1e-10
    for full, layer, key in net.named_parameters():
        assert max_rel_diff(layer.grads[key], t_grads[full]) < 1e-10, full


def test_full_alexnet_eval_mode_gradients_match_torch_eval(rng):
    """Backward after an inference forward (dropout off, caches kept): the input and parameter
    gradients PyTorch gives for a model in eval() mode, e.g. for a saliency map. In float64, so
    that no near-tie in a max-pool window can send a gradient to another input in one of the two."""
    net = AlexNet(num_classes=1000, groups=2, init="caffe", seed=4).astype(np.float64)
    x = rng.standard_normal((2, 3, 227, 227))
    labels = np.array([17, 450])
    crit = SoftmaxCrossEntropy()
    loss = crit.forward(net.forward(x), labels)                      # train=False by default
    dx = net.backward(crit.backward())
    tnet = torch.nn.Sequential(*[_torch_module(layer) for layer in net.layers]).double().eval()
    tx = torch.tensor(x, requires_grad=True)
    t_loss = F.cross_entropy(tnet(tx), torch.tensor(labels))
    t_loss.backward()
    assert abs(loss - t_loss.item()) < 1e-12 * max(1.0, abs(t_loss.item()))
    assert max_rel_diff(dx, tx.grad.numpy()) < 1e-10
    modules = dict(zip([layer.name for layer in net.layers], tnet))
    for full, layer, key in net.named_parameters():
        t_param = modules[layer.name].weight if key == "W" else modules[layer.name].bias
        assert max_rel_diff(layer.grads[key], t_param.grad.numpy()) < 1e-10, full


def _torch_module(layer):
    """The torch.nn module computing `layer`, with its weights."""
    if isinstance(layer, (Conv2d, Dense)):
        if isinstance(layer, Conv2d):
            m = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                layer.padding, groups=layer.groups)
        else:
            m = torch.nn.Linear(layer.in_features, layer.out_features)
        m = m.double()
        with torch.no_grad():
            m.weight.copy_(torch.tensor(layer.params["W"]))
            m.bias.copy_(torch.tensor(layer.params["b"]))
        return m
    if isinstance(layer, LRN):
        return torch.nn.LocalResponseNorm(layer.size, layer.alpha * layer.size, layer.beta, layer.k)
    if isinstance(layer, MaxPool2d):
        return torch.nn.MaxPool2d(layer.kernel_size, layer.stride)
    if isinstance(layer, Dropout):
        return torch.nn.Dropout(layer.p)
    return {ReLU: torch.nn.ReLU, Flatten: torch.nn.Flatten}[type(layer)]()
