"""The paper's update rule computed by hand, bias options, and the learning-rate schedules."""
import numpy as np
import pytest

from alexnet.engine.net import Sequential
from alexnet.engine.optim import SGD, PlateauSchedule
from alexnet.layers import Dense


def one_dense_net():
    layer = Dense(2, 1)
    layer.params["W"][...] = [[1.0, -2.0]]
    layer.params["b"][...] = [0.5]
    return Sequential([layer], ["fc"]), layer


def test_paper_rule_by_hand_including_an_lr_change():
    net, layer = one_dense_net()
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=0.01)
    grads = [([[1.0, 1.0]], [2.0]), ([[0.5, -1.0]], [0.0]), ([[-1.0, 0.0]], [1.0])]
    w, b = np.array([1.0, -2.0]), 0.5
    vw, vb = np.zeros(2), 0.0
    for step, (gW, gb) in enumerate(grads):
        if step == 2:
            opt.lr = 0.01               # the paper divides by 10: old velocity keeps its old scale
        lr = opt.lr
        layer.grads = {"W": np.array(gW, np.float32), "b": np.array(gb, np.float32)}
        opt.step()
        vw = 0.9 * vw - 0.01 * lr * w - lr * np.array(gW[0])
        vb = 0.9 * vb - 0.01 * lr * b - lr * gb[0]
        w, b = w + vw, b + vb
        np.testing.assert_allclose(layer.params["W"][0], w, rtol=1e-6)
        np.testing.assert_allclose(layer.params["b"][0], b, rtol=1e-6)
    # step 3 by hand, spelled out: v = 0.9 v2 - 0.01*0.01*w2 - 0.01*g3
    np.testing.assert_allclose(opt.velocity["fc.W"][0], vw, rtol=1e-6)


def test_differs_from_pytorch_sgd_after_an_lr_change():
    """PyTorch's buf = m buf + g; w -= lr buf rescales the old momentum when lr changes; ours doesn't."""
    net, layer = one_dense_net()
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=0.0)
    w_torch, buf = np.array([1.0, -2.0]), np.zeros(2)
    for lr in (0.1, 0.01):
        opt.lr = lr
        layer.grads = {"W": np.array([[1.0, 1.0]], np.float32), "b": np.zeros(1, np.float32)}
        opt.step()
        buf = 0.9 * buf + 1.0
        w_torch = w_torch - lr * buf
    assert abs(layer.params["W"][0, 0] - w_torch[0]) > 0.05


def test_rescaled_velocity_is_pytorchs_sgd_through_lr_changes():
    """rescale_velocity=True: v <- v * new/old at every change, which makes the paper's rule and
    PyTorch's torch.optim.SGD (with weight decay) the same sequence of weights."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    layer = Dense(3, 2, np.float64)
    layer.params["W"][...] = rng.standard_normal((2, 3))
    net = Sequential([layer], ["fc"])
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=0.01, rescale_velocity=True)
    tw = torch.tensor(layer.params["W"].copy(), requires_grad=True)
    tb = torch.tensor(layer.params["b"].copy(), requires_grad=True)
    topt = torch.optim.SGD([tw, tb], lr=0.1, momentum=0.9, weight_decay=0.01)
    for lr in (0.1, 0.1, 0.01, 0.01, 0.001, 0.05):
        opt.lr = lr
        for group in topt.param_groups:
            group["lr"] = lr
        gW, gb = rng.standard_normal((2, 3)), rng.standard_normal(2)
        layer.grads = {"W": gW, "b": gb}
        opt.step()
        tw.grad, tb.grad = torch.tensor(gW), torch.tensor(gb)
        topt.step()
        np.testing.assert_allclose(layer.params["W"], tw.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.params["b"], tb.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_loading_state_does_not_rescale():
    net, _ = one_dense_net()
    opt = SGD(net, lr=0.1, rescale_velocity=True)
    opt.velocity["fc.W"][...] = 1.0
    state = opt.state_dict()
    state["lr"] = 0.001
    opt.load_state_dict(state)
    assert opt.lr == 0.001 and (opt.velocity["fc.W"] == 1.0).all()


def test_bias_lr_multiplier_and_no_bias_decay():
    net, layer = one_dense_net()
    opt = SGD(net, lr=0.1, momentum=0.0, weight_decay=0.5, bias_lr_mult=2.0, bias_decay=0.0)
    layer.grads = {"W": np.zeros((1, 2), np.float32), "b": np.array([1.0], np.float32)}
    opt.step()
    np.testing.assert_allclose(layer.params["b"], [0.5 - 2 * 0.1 * 1.0])          # 2x lr, no decay
    np.testing.assert_allclose(layer.params["W"], [[1.0 - 0.5 * 0.1 * 1.0, -2.0 + 0.5 * 0.1 * 2.0]])


def test_state_dict_round_trip_and_mismatch():
    net, layer = one_dense_net()
    opt = SGD(net, lr=0.1)
    layer.grads = {"W": np.ones((1, 2), np.float32), "b": np.ones(1, np.float32)}
    opt.step()
    state = opt.state_dict()
    other = SGD(one_dense_net()[0], lr=0.5)
    other.load_state_dict(state)
    assert other.lr == 0.1
    np.testing.assert_array_equal(other.velocity["fc.W"], opt.velocity["fc.W"])
    with pytest.raises(ValueError, match="fc.W"):
        other.load_state_dict({"lr": 0.1, "velocity": {"fc.W": np.zeros((2, 2)), "fc.b": np.zeros(1)}})


def test_plateau_schedule_divides_by_ten_at_most_three_times():
    net, _ = one_dense_net()
    opt = SGD(net, lr=0.01)
    sched = PlateauSchedule(opt, factor=0.1, patience=1, max_drops=3)
    errors = [0.9, 0.8, 0.8, 0.7, 0.75, 0.71, 0.72, 0.73, 0.74]
    drops = [sched.step(e) for e in errors]
    assert drops == [False, False, True, False, True, True, False, False, False]
    assert sched.drops == 3
    assert opt.lr == pytest.approx(1e-5)
    restored = PlateauSchedule(SGD(one_dense_net()[0]))
    restored.load_state_dict(sched.state_dict())
    assert restored.drops == 3 and restored.best == 0.7


def test_plateau_patience_waits():
    opt = SGD(one_dense_net()[0], lr=1.0)
    sched = PlateauSchedule(opt, patience=2)
    assert [sched.step(e) for e in (0.5, 0.6, 0.6, 0.4, 0.5, 0.5)] == [False, False, True, False, False, True]
    assert opt.lr == pytest.approx(0.01)


@pytest.mark.parametrize("kw", [dict(lr=-0.1), dict(momentum=float("nan")), dict(weight_decay=-1)])
def test_bad_hyperparameters(kw):
    with pytest.raises(ValueError, match="SGD"):
        SGD(one_dense_net()[0], **kw)


def test_after_an_lr_drop_the_old_velocity_carries_the_weights_nine_old_steps_on():
    """engine/optim.py and docs/conventions.md: with momentum 0.9 and the paper's rule, the
    velocity left at a drop moves the weights by m / (1 - m) = 9 more of the last old steps (not
    10), whatever the new rate; rescaled as PyTorch does, by 0.9."""
    moved = {}
    for rescale in (False, True):
        net, layer = one_dense_net()
        opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=0.0, rescale_velocity=rescale)
        layer.grads = {"W": np.ones((1, 2), np.float32), "b": np.zeros(1, np.float32)}
        for _ in range(400):                       # a constant gradient: the velocity settles
            opt.step()
        last_step = float(opt.velocity["fc.W"][0, 0])
        opt.lr = 0.01
        layer.grads = {"W": np.zeros((1, 2), np.float32), "b": np.zeros(1, np.float32)}
        before = float(layer.params["W"][0, 0])
        for _ in range(400):                       # no new gradient: only the old velocity moves them
            opt.step()
        moved[rescale] = (float(layer.params["W"][0, 0]) - before) / last_step
    assert moved[False] == pytest.approx(9.0, rel=1e-3)
    assert moved[True] == pytest.approx(0.9, rel=1e-3)
    import alexnet.engine.optim as optim
    assert "about 9 more of the old steps" in optim.__doc__ and "10 more" not in optim.__doc__
