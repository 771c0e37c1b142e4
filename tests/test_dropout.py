"""Dropout's two variants, and the modes of a forward pass (train, inference, inference without caches).

The claim checked on numbers: inverted dropout computes the paper's function but, at the same
learning rate, moves the next layer's weights 1/(1-p)^2 as far in the paper's units, and the
paper's init given to it is 1/(1-p) wider there (layers/dropout.py).
"""
import numpy as np
import pytest

from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.net import Sequential
from alexnet.engine.optim import SGD
from alexnet.layers import Dense, Dropout, ReLU
from alexnet.layers import reference as ref
from alexnet.layers.dropout import keep_mask, keep_threshold
from alexnet.models.alexnet import AlexNetSmall


def two_layer(variant, W2, p):
    """fc -> dropout -> fc2, fc's weights fixed, fc2's given (the layer after the dropout)."""
    rng = np.random.default_rng(0)
    fc, fc2 = Dense(6, 8, np.float64), Dense(8, 3, np.float64)
    fc.params["W"][...] = rng.standard_normal((8, 6))
    fc2.params["W"][...] = W2
    return Sequential([fc, ReLU(), Dropout(p, seed=11, variant=variant), fc2], ["fc", "relu", "drop", "fc2"])


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_inverted_dropout_takes_a_step_one_over_one_minus_p_squared_as_large(p):
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((5, 6)), np.array([0, 2, 1, 1, 0])
    W_paper = rng.standard_normal((3, 8)) * 0.1
    nets = {"paper": two_layer("paper", W_paper, p), "inverted": two_layer("inverted", (1 - p) * W_paper, p)}
    outs, steps = {}, {}
    for variant, net in nets.items():
        crit = SoftmaxCrossEntropy()
        outs[variant] = net.forward(x, train=True)                 # the same mask: same seed, step 0
        crit.forward(outs[variant], labels)
        net.backward(crit.backward())
        before = net["fc2"].params["W"].copy()
        SGD(net, lr=0.1, momentum=0.0, weight_decay=0.0).step()
        steps[variant] = net["fc2"].params["W"] - before
    # the same function, mask for mask: W_inv = (1-p) W_paper undoes the 1/(1-p) scaling
    np.testing.assert_allclose(outs["inverted"], outs["paper"], rtol=1e-12, atol=1e-12)
    # the step on fc2, measured in the paper's units (W_paper = W_inv / (1-p)), is 1/(1-p)^2 larger
    np.testing.assert_allclose(steps["inverted"] / (1 - p), steps["paper"] / (1 - p) ** 2, rtol=1e-10)
    assert np.abs(steps["inverted"]).max() > 0
    # and the paper's init N(0, 0.01^2) given to W_inv is N(0, (0.01 / (1-p))^2) in the paper's units
    W_inv = np.random.default_rng(2).standard_normal(200_000) * 0.01
    assert abs((W_inv / (1 - p)).std() - 0.01 / (1 - p)) < 1e-4


def train_30_steps(variant, p, W2, update):
    """30 steps of fc -> relu -> dropout -> fc2 on fresh inputs (the same masks in both variants:
    same seeds, same steps); update(net, lr, m, wd) applies one SGD step. Returns the net."""
    net = two_layer(variant, W2, p)
    net["fc2"].params["b"][...] = 0.3
    rng, crit = np.random.default_rng(5), SoftmaxCrossEntropy()
    for _ in range(30):
        x, labels = rng.standard_normal((5, 6)), rng.integers(0, 3, 5)
        crit.forward(net.forward(x, train=True), labels)
        net.backward(crit.backward())
        update(net, lr=0.1, m=0.9, wd=0.01)
    return net


def exact_inverted_recipe(p):
    """docs/conventions.md's recipe: fc2.W's gradient term at (1-p)^2 lr, its weight decay term as
    it was (decay multiplier 1/(1-p)^2 relative to that rate), everything else the paper's rule."""
    velocity = {}

    def update(net, lr, m, wd):
        for full, layer, key in net.named_parameters():
            lr_mult, decay_mult = ((1 - p) ** 2, 1 / (1 - p) ** 2) if full == "fc2.W" else (1.0, 1.0)
            v = velocity.setdefault(full, np.zeros_like(layer.params[key]))
            layer.params[key], velocity[full] = ref.sgd_step(layer.params[key], layer.grads[key], v, lr, m, wd,
                                                              lr_mult, decay_mult)
    return update


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_the_exact_recipe_trains_inverted_dropout_as_the_paper_did_step_for_step(p):
    """W_inv = (1-p) W_paper after every one of 30 steps with the exact recipe; the shortcut of a
    (1-p)^2 learning rate for the whole layer (its bias and weight decay too) drifts away."""
    W_paper = np.random.default_rng(1).standard_normal((3, 8)) * 0.1

    def paper_rule(opts):
        return lambda net, lr, m, wd: opts.setdefault(id(net), SGD(net, lr=lr, momentum=m, weight_decay=wd)).step()

    def shortcut(opts):
        return lambda net, lr, m, wd: opts.setdefault(id(net), SGD(
            net, lr=lr, momentum=m, weight_decay=wd, layer_lr_mults={"fc2": (1 - p) ** 2})).step()

    paper = train_30_steps("paper", p, W_paper, paper_rule({}))
    exact = train_30_steps("inverted", p, (1 - p) * W_paper, exact_inverted_recipe(p))
    short = train_30_steps("inverted", p, (1 - p) * W_paper, shortcut({}))
    for full, layer, key in paper.named_parameters():
        scale = (1 - p) if full == "fc2.W" else 1.0           # only the weights after the dropout differ
        np.testing.assert_allclose(exact[layer.name].params[key] / scale, layer.params[key], rtol=1e-9, atol=1e-12)
    drift = max(np.abs(short[name].params[key] / ((1 - p) if name == "fc2" and key == "W" else 1.0)
                       - paper[name].params[key]).max() / np.abs(paper[name].params[key]).max()
                for name, key in (("fc2", "W"), ("fc2", "b")))
    assert drift > 0.05, drift


def test_the_paper_variant_scales_at_test_time():
    x = np.arange(1.0, 13.0).reshape(3, 4)
    layer = Dropout(0.25, seed=1, variant="paper")
    np.testing.assert_allclose(layer.forward(x), 0.75 * x)          # inference: times (1 - p)
    out = layer.forward(x, train=True)
    kept = keep_mask(1, 0, x.size, 0.25).reshape(x.shape)
    np.testing.assert_array_equal(out, x * kept)                     # training: no scaling
    assert Dropout(0.25, variant="inverted").test_scale == 1.0
    with pytest.raises(ValueError, match="variant must be one of inverted, paper"):
        Dropout(0.5, variant="gaussian")


def test_the_mask_hash_is_exact_at_the_threshold_and_keeps_about_one_minus_p():
    assert keep_threshold(0.5) == 2 ** 23 and keep_threshold(0.0) == 0
    keep = keep_mask(3, 7, 400_000, 0.3)
    assert abs(keep.mean() - 0.7) < 5 * np.sqrt(0.3 * 0.7 / 400_000)
    np.testing.assert_array_equal(keep_mask(3, 7, 100, 0.3, start=250), keep[250:350])   # any slice
    assert (keep_mask(3, 8, 1000, 0.3) != keep[:1000]).any()                             # a new step


def test_dropout_state_is_one_counter_and_frozen_masks_repeat():
    layer = Dropout(0.5, seed=4)
    x = np.ones((2, 50))
    first = layer.forward(x, train=True)
    assert layer.rng_state() == {"step": 1}
    layer.forward(x)                                                 # inference draws no mask
    assert layer.rng_state() == {"step": 1}
    layer.set_rng_state({"step": 0})
    np.testing.assert_array_equal(layer.forward(x, train=True), first)
    layer.freeze_mask = True
    again = layer.forward(x, train=True)
    np.testing.assert_array_equal(layer.forward(x, train=True), again)
    assert layer.step == 2


def test_a_forward_that_does_not_say_it_trains_applies_no_dropout(rng):
    net = AlexNetSmall(num_classes=4, seed=0, dropout=0.5)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(x), net.forward(x))
    assert not np.array_equal(net.forward(x, train=True), net.forward(x, train=True))
    assert net.rng_state() == {"drop6": {"step": 2}, "drop7": {"step": 2}}


def test_backward_after_an_inference_forward_and_no_cache_without_gradients(rng):
    net = AlexNetSmall(num_classes=4, seed=0)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    out = net.forward(x)
    dx = net.backward(np.ones_like(out))                             # a saliency map: d(sum of logits)/dx
    assert dx.shape == x.shape and np.abs(dx).max() > 0
    net.forward(x, keep_cache=False)
    assert all(layer.cache is None for layer in net.layers)
    with pytest.raises(ValueError, match=r"fc8: backward\(\) needs a forward\(\) that kept its cache"):
        net.backward(np.ones_like(out))
