"""CUDA graphs (engine/graphs.py) without a GPU: the per-step scalars and GraphedStep's control flow.

A capture needs a GPU (bench/gpu_check.sh replays captured steps against eager ones there). What
can be checked here is everything around it, with a stand-in for CuPy's streams and graphs whose
"replay" re-runs the captured step's kernels on the CPU harness with the Python side frozen, as a
real replay leaves it: the kernels read the dropout counters and the learning rate from their
device slots, so a replay computes the same numbers as an eager step exactly when GraphedStep
refreshed the slots with the values the eager step would have used. Six steps with dropout and a
learning-rate change, eager against graphed, must give the same bits.
"""
import contextlib

import numpy as np
import pytest

from alexnet.engine import graphs
from alexnet.engine.loss import SoftmaxCrossEntropy
from alexnet.engine.optim import SGD
from alexnet.kernels import ops
from alexnet.models.alexnet import tiny_alexnet


def test_write_scalar_writes_now_or_registers_for_the_replays():
    slot = np.zeros(1, np.uint64)
    graphs.write_scalar(slot, 7, lambda: 8)
    assert slot[0] == 7 and not graphs.capturing()
    graphs._capture = []
    try:
        graphs.write_scalar(slot, 9, lambda: 10)
        assert graphs.capturing() and slot[0] == 7            # a write during a capture is deferred
        (registered,) = graphs._capture
        assert registered[0] is slot and registered[1] == 9 and registered[2]() == 10
    finally:
        graphs._capture = None


def test_the_kernels_read_the_dropout_step_and_the_rate_from_their_slots(harness_rt, rng):
    """Rewriting a slot between launches changes what the same launch computes (as a replay's would)."""
    x = rng.standard_normal((4, 50)).astype(np.float32)
    slot = np.array([3], np.uint64)
    first = ops.dropout_forward(harness_rt, x, 0.5, 1, slot, 2.0)
    slot[0] = 4
    second = ops.dropout_forward(harness_rt, x, 0.5, 1, slot, 2.0)
    np.testing.assert_array_equal(second, ops.dropout_forward(harness_rt, x, 0.5, 1, 4, 2.0))
    assert (first != second).any()
    w, g, v = np.ones(5, np.float32), np.ones(5, np.float32), np.zeros(5, np.float32)
    lr = np.array([0.5], np.float32)
    ops.sgd_update(harness_rt, ops.sgd_table(harness_rt, [(w, g, v, 1.0, 1.0)]), lr, 0.0, 0.0)
    np.testing.assert_array_equal(w, 0.5)


class FakeCuda:
    """cupy.cuda's streams, events, pools and graphs as no-ops; a graph's launch calls `replay`."""

    def __init__(self, fail_capture=False):
        self.replay, self.fail_capture, self.launches = None, fail_capture, 0
        self.on_capture = lambda: contextlib.nullcontext()
        outer = self

        class Stream:
            def __init__(self, non_blocking=False):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def wait_event(self, event):
                pass

            def begin_capture(self):
                if outer.fail_capture:
                    raise RuntimeError("operation not permitted when stream is capturing")
                self.capture = outer.on_capture()
                self.capture.__enter__()

            def end_capture(self):
                self.capture.__exit__(None, None, None)
                return Graph()

        class Graph:
            def launch(self, stream=None):
                outer.launches += 1
                outer.replay()

        class Event:
            def record(self, stream=None):
                pass

        self.Stream, self.Event = Stream, Event
        self.MemoryPool = lambda: type("Pool", (), {"malloc": None})()
        self.using_allocator = lambda malloc: contextlib.nullcontext()
        self.get_current_stream = lambda: Stream()


class FakeCupy:
    ndarray = np.ndarray

    def __init__(self, **kw):
        self.cuda = FakeCuda(**kw)

    @staticmethod
    def asarray(a):
        return np.asarray(a)


def _setup(rt):
    net = tiny_alexnet(5, seed=0)
    crit, opt = SoftmaxCrossEntropy(), SGD(net, lr=0.05)
    calls = []

    def step(x, labels, count):
        calls.append(len(labels))
        loss = crit.forward(net.forward(x, train=True, runtime=rt), labels, runtime=rt)
        net.backward(crit.backward(runtime=rt), need_dx=False, runtime=rt)
        opt.step(runtime=rt)
        return loss, count
    return net, opt, step, calls


def _state_arrays(net, opt):
    """The arrays a step updates in place: weights, their BF16 copies, momentum buffers."""
    return ([layer.params[k] for layer in net.layers for k in layer.params] +
            [a for layer in net.layers for a in layer.low_params.values()] + list(opt.velocity.values()))


def _batches(rng):
    """Five full batches of 4 and a last one of 3 (another shape: eager)."""
    return [(rng.standard_normal((n, 3, 31, 31)).astype(np.float32), rng.integers(0, 5, n)) for n in (4,) * 5 + (3,)]


def _train(rt, batches, run, opt):
    losses = []
    for i, (x, labels) in enumerate(batches):
        if i == 3:
            opt.lr = 0.02                   # a schedule's change between steps: the slot must follow
        loss, _ = run(x, labels, len(labels))
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("fail_capture", [False, True], ids=["replayed", "capture fails"])
def test_graphed_steps_compute_what_eager_steps_do(harness_rt, rng, monkeypatch, fail_capture):
    monkeypatch.setattr(ops, "BLOCK", 32)
    batches = _batches(rng)
    net, opt, step, _ = _setup(harness_rt)
    eager = _train(harness_rt, batches, step, opt)

    net_g, opt_g, step_g, calls = _setup(harness_rt)
    cupy, said = FakeCupy(fail_capture=fail_capture), []
    graphed = graphs.GraphedStep(step_g, cupy, (net_g.rng_state, net_g.set_rng_state), log=said.append)

    def replay():
        """What a replay does: the captured kernels again, on the captured inputs, reading the
        slots; no Python state moves (the dropout counters advanced in GraphedStep's refresh)."""
        state = net_g.rng_state()
        graphs._capture = []               # slot writes are the graph's business, not the kernels'
        try:
            loss, _ = step_g(*graphed.inputs, len(graphed.inputs[1]))
        finally:
            graphs._capture = None
            net_g.set_rng_state(state)
        graphed.results[0][...] = loss     # the captured step's output buffer, rewritten

    @contextlib.contextmanager
    def nothing_runs():
        """A capture records work without doing it; here the harness does it, so undo it after."""
        saved = [a.copy() for a in _state_arrays(net_g, opt_g)]
        yield
        for a, before in zip(_state_arrays(net_g, opt_g), saved):
            a[...] = before
    cupy.cuda.replay, cupy.cuda.on_capture = replay, nothing_runs
    graphed_losses = _train(harness_rt, batches, graphed, opt_g)

    assert graphed_losses == eager
    for (name, a), (_, b) in zip(net.state_dict().items(), net_g.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert net.rng_state() == net_g.rng_state()
    if fail_capture:                       # said once, then eager: every step ran the Python step
        assert len(said) == 1 and "CUDA graph capture failed (RuntimeError" in said[0]
        assert cupy.cuda.launches == 0 and calls == [4, 4, 4, 4, 4, 3]
    else:                                  # 2 warm-up steps, the capture (replayed at once), 2 replays, eager last
        assert said == [] and cupy.cuda.launches == 3 and graphed.replays == 3
        assert calls == [4, 4, 4] + [4] * 3 + [3]    # the replays re-ran the step only in this stand-in


def test_without_graphs_every_step_is_eager(harness_rt, rng, monkeypatch):
    monkeypatch.setattr(ops, "BLOCK", 32)
    net, opt, step, calls = _setup(harness_rt)
    cupy = FakeCupy()
    graphed = graphs.GraphedStep(step, cupy, (net.rng_state, net.set_rng_state), enabled=False)
    _train(harness_rt, _batches(rng)[:3], graphed, opt)
    assert calls == [4, 4, 4] and cupy.cuda.launches == 0
