"""The pooled arrays of engine/workspace.py: reused only when nothing refers to them any more."""
import threading

import numpy as np
import pytest

from alexnet.engine import workspace
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.optim import SGD
from alexnet.models.alexnet import AlexNetSmall

BIG = (512, 1024)          # 2 MB of float32: pooled


@pytest.fixture(autouse=True)
def fresh_pool(monkeypatch):
    monkeypatch.delenv("ALEXNET_WORKSPACE", raising=False)
    workspace.release()
    yield
    workspace.release()


def test_a_freed_array_is_reused_a_live_one_never():
    a = workspace.empty(BIG)
    b = workspace.empty(BIG)
    assert not np.shares_memory(a, b)
    a_ptr = a.__array_interface__["data"][0]
    del a
    c = workspace.empty(BIG)
    assert c.__array_interface__["data"][0] == a_ptr             # a's memory came back
    assert workspace.pooled_bytes() == (2 * 2 ** 21, 2 * 2 ** 21)


@pytest.mark.parametrize("keep", ["view", "transpose", "reshape", "slice_of_slice"])
def test_any_view_keeps_the_memory_busy(keep):
    a = workspace.empty(BIG)
    a[...] = 7.0
    held = {"view": lambda: a.view(np.int32), "transpose": lambda: a.T,
            "reshape": lambda: a.reshape(-1), "slice_of_slice": lambda: a[3:][::2, 1:]}[keep]()
    del a
    for _ in range(3):
        fresh = workspace.empty(BIG)
        assert not np.shares_memory(fresh, held)
        fresh[...] = -1.0
    assert np.all(held.view(np.float32) == 7.0) if keep == "view" else np.all(held == 7.0)


def test_best_fit_up_to_twice_the_size_and_small_arrays_bypass_the_pool():
    a = workspace.empty((1024, 1024))                             # 4 MB
    del a
    half = workspace.empty((512, 1024))                           # 2 MB fits into the 4 MB buffer
    assert workspace.pooled_bytes() == (2 ** 22, 2 ** 22)
    del half
    quarter = workspace.empty((256, 1024))                        # 1 MB: too small to take 4 MB
    assert workspace.pooled_bytes() == (2 ** 22 + 2 ** 20, 2 ** 20)
    small = workspace.empty((10, 10))
    assert small.base is None and workspace.pooled_bytes()[0] == 2 ** 22 + 2 ** 20
    del quarter


def test_zeros_and_dtypes():
    z = workspace.zeros((300, 1000), np.float64)
    assert z.dtype == np.float64 and z.shape == (300, 1000) and not z.any()
    z[...] = 3
    del z
    again = workspace.zeros((300, 1000), np.float64)              # the same memory, zeroed again
    assert not again.any()
    u8 = workspace.empty((2 ** 21,), np.uint8)
    assert u8.dtype == np.uint8 and u8.size == 2 ** 21


def test_off_switch_and_release(monkeypatch):
    monkeypatch.setenv("ALEXNET_WORKSPACE", "0")
    a = workspace.empty(BIG)
    assert a.base is None and workspace.pooled_bytes() == (0, 0)
    monkeypatch.setenv("ALEXNET_WORKSPACE", "1")
    b = workspace.empty(BIG)
    b[...] = 1.0
    workspace.release()
    assert workspace.pooled_bytes() == (0, 0)
    c = workspace.empty(BIG)
    assert not np.shares_memory(b, c) and np.all(b == 1.0)        # released buffers stay valid


def test_threads_never_get_the_same_live_buffer():
    errors, barrier = [], threading.Barrier(4)

    def worker(k):
        try:
            barrier.wait()
            for i in range(50):
                a = workspace.empty(BIG)
                a.fill(k * 1000 + i)
                if not np.all(a == k * 1000 + i):
                    errors.append((k, i))
                del a
        except Exception as e:                                      # pragma: no cover
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert workspace.pooled_bytes()[0] <= 4 * 2 ** 21


def step(monkeypatch, pooled):
    monkeypatch.setenv("ALEXNET_WORKSPACE", "1" if pooled else "0")
    monkeypatch.setattr(workspace, "MIN_BYTES", 4096)               # pool the small net's arrays too
    rng = np.random.default_rng(0)
    net = AlexNetSmall(num_classes=4, init="he", seed=1)
    opt, crit = SGD(net, lr=0.01), SoftmaxCrossEntropy()
    outputs = []
    for _ in range(3):
        x = rng.standard_normal((9, 3, 64, 64)).astype(np.float32)
        y = rng.integers(0, 4, 9)
        h = x
        for i, layer in enumerate(net.layers):
            h = layer.forward(h, train=True)
            if i == 0:                                              # keep conv1's output
                outputs.append((h, h.copy()))
        crit.forward(h, y)
        net.backward(crit.backward())
        opt.step()
    return outputs, net.state_dict()


def test_training_with_the_pool_is_bit_identical_and_kept_outputs_stay_intact(monkeypatch):
    plain_outputs, plain = step(monkeypatch, pooled=False)
    pooled_outputs, pooled = step(monkeypatch, pooled=True)
    assert workspace.pooled_bytes()[0] > 0
    for k in plain:
        np.testing.assert_array_equal(pooled[k], plain[k], err_msg=k)
    for (kept, snapshot), (plain_out, _) in zip(pooled_outputs, plain_outputs):
        np.testing.assert_array_equal(kept, snapshot)              # later steps did not write into it
        np.testing.assert_array_equal(kept, plain_out)
