"""The batch-chunk thread pool must not change results: 1, 2 and 3 threads and any chunk size agree."""
import numpy as np
import pytest

from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.optim import SGD
from alexnet.engine.threads import batch_grain, chunk_bounds, run_chunks
from alexnet.models.alexnet import AlexNetSmall


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


def test_a_grain_gives_more_chunks_than_threads_in_order(monkeypatch):
    import threading
    for threads in ("1", "2"):
        monkeypatch.setenv("ALEXNET_THREADS", threads)
        seen = set()

        def record(lo, hi):
            seen.add(threading.get_ident())
            return (lo, hi)
        assert run_chunks(record, 10, grain=3) == [(0, 3), (3, 6), (6, 8), (8, 10)]
        assert len(seen) <= int(threads)
        assert run_chunks(lambda lo, hi: (lo, hi), 4, grain=8) == chunk_bounds(4, int(threads))

    def boom(lo, hi):
        if lo == 6:
            raise RuntimeError("chunk 6 failed")
        return lo
    with pytest.raises(RuntimeError, match="chunk 6 failed"):
        run_chunks(boom, 10, grain=2)
    # the pool still works; 5 chunks of 2 would leave one thread idle at the end: 6 chunks
    assert run_chunks(lambda lo, hi: lo, 10, grain=2) == [0, 2, 4, 6, 8, 9]
    monkeypatch.setenv("ALEXNET_BATCH_GRAIN", "0.5")
    with pytest.raises(ValueError, match="ALEXNET_BATCH_GRAIN"):
        batch_grain()


def one_step(threads, monkeypatch, grain="8"):
    monkeypatch.setenv("ALEXNET_THREADS", str(threads))
    monkeypatch.setenv("ALEXNET_BATCH_GRAIN", grain)
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
    for threads, grain in ((2, "8"), (3, "8"), (2, "2"), (1, "3")):
        loss, dx, w = one_step(threads, monkeypatch, grain)
        assert loss == pytest.approx(loss1, rel=1e-6)
        np.testing.assert_allclose(dx, dx1, rtol=1e-4, atol=1e-7)
        for k in w1:
            np.testing.assert_allclose(w[k], w1[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_a_failed_chunk_stops_the_others_from_starting(monkeypatch):
    import time
    monkeypatch.setenv("ALEXNET_THREADS", "2")
    started = []

    def slow_then_fail(lo, hi):
        started.append(lo)
        if lo == 0:
            raise RuntimeError("first chunk failed")
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="first chunk failed"):
        run_chunks(slow_then_fail, 40, grain=1)
    assert len(started) < 10
    monkeypatch.setenv("ALEXNET_THREADS", "0")
    with pytest.raises(ValueError, match="ALEXNET_THREADS must be a positive integer, got '0'"):
        run_chunks(slow_then_fail, 4)


def test_chunks_run_under_the_callers_errstate(monkeypatch):
    """np.errstate lives in a context variable: the helper threads get a copy of the caller's."""
    import warnings
    monkeypatch.setenv("ALEXNET_THREADS", "2")
    big = np.full(64, 1e38, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore"):
            run_chunks(lambda lo, hi: big[lo:hi] * np.float32(10), len(big), grain=1)
        with pytest.raises(RuntimeWarning), np.errstate(over="warn"):
            run_chunks(lambda lo, hi: big[lo:hi] * np.float32(10), len(big), grain=1)
