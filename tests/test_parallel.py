"""The batch-chunk thread pool must not change results: 1, 2 and 3 threads agree."""
import numpy as np
import pytest

from engine.loss import SoftmaxCrossEntropy
from engine.optim import SGD
from engine.parallel import chunk_bounds, run_chunks
from models.alexnet import AlexNetSmall


def test_chunk_bounds_cover_the_range():
    assert chunk_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert chunk_bounds(2, 8) == [(0, 1), (1, 2)]


def test_run_chunks_returns_in_order_and_propagates_errors(monkeypatch):
    monkeypatch.setenv("ALEXNET_THREADS", "3")
    assert run_chunks(lambda lo, hi: (lo, hi), 7) == [(0, 3), (3, 5), (5, 7)]

    def boom(lo, hi):
        if lo > 0:
            raise RuntimeError("chunk failed")
    with pytest.raises(RuntimeError, match="chunk failed"):
        run_chunks(boom, 4)
    monkeypatch.setenv("ALEXNET_THREADS", "two")
    with pytest.raises(ValueError, match="ALEXNET_THREADS"):
        run_chunks(boom, 4)


def one_step(threads, monkeypatch):
    monkeypatch.setenv("ALEXNET_THREADS", str(threads))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 64, 64)).astype(np.float32)
    y = rng.integers(0, 4, 7)
    net = AlexNetSmall(num_classes=4, init="he", seed=1)
    opt, crit = SGD(net, lr=0.01), SoftmaxCrossEntropy()
    loss = crit.forward(net.forward(x), y)
    dx = net.backward(crit.backward())
    opt.step()
    return loss, dx, net.state_dict()


def test_threads_do_not_change_the_step(monkeypatch):
    loss1, dx1, w1 = one_step(1, monkeypatch)
    for threads in (2, 3):
        loss, dx, w = one_step(threads, monkeypatch)
        assert loss == pytest.approx(loss1, rel=1e-6)
        np.testing.assert_allclose(dx, dx1, rtol=1e-4, atol=1e-7)
        for k in w1:
            np.testing.assert_allclose(w[k], w1[k], rtol=1e-5, atol=1e-7, err_msg=k)
