"""CUDA Graphs: a training step captured once and replayed, and the per-step scalars it reads.

A training step of AlexNet is ~90 kernel launches and cuBLAS calls, each a few microseconds of
Python and driver work on the host: harmless next to a 22 ms step, the bottleneck once a step
nears 5 ms. A CUDA graph records the whole step once (`cupy.cuda.Stream(non_blocking=True)`,
`begin_capture()`, the step, `end_capture()` -> `cupy.cuda.Graph`) and then launches all of it
with one call (`Graph.launch(stream)`). A replay runs the same kernels with the same arguments on
the same memory, which the step must allow for:

- **Memory stays put.** The step allocates from a memory pool of its own (`cupy.cuda.MemoryPool`,
  made current by `cupy.cuda.using_allocator`) that nothing else draws from, so the arrays the
  graph reads and writes are never handed to anyone else. Two eager runs of the step in that pool
  come first (they compile the kernels, let cuBLAS set up, and leave the pool holding blocks of
  every size the step needs in the rotation a step's gradients take, so the capture meets
  addresses it has seen: the SGD kernel's pointer table, engine/optim.py, is then found built;
  one built during the capture is uploaded through pinned memory, which a graph can copy).
- **Inputs go into fixed buffers**: each replay first copies the batch into the arrays the
  captured step read.
- **What changes between steps is read from device memory**: the learning rate
  (engine/optim.py) and each dropout layer's mask counter (layers/dropout.py). Their kernels read
  them from one-element device arrays ("slots"), and `write_scalar` fills a slot: at once in an
  eager step, and while a step is being captured, before every replay instead (with the value
  the step would have used: `refresh()`, which advances the layer's counter exactly as an eager
  forward does). Eager and replayed steps therefore compute the same numbers.

`GraphedStep` runs a step function so: eagerly while warming up (WARM_STEPS), for another shape (the last,
smaller batch of an epoch) and with `enabled=False` (`--no-graphs`); as a replay otherwise. A
capture that fails (an operation that cannot be captured) is reported once through `log`, the
model's random state is put back, and the run goes on eagerly. The capture itself needs a GPU:
bench/gpu_check.sh compares replayed and eager steps there; tests/test_graphs.py checks the
control flow and the slots on the CPU.

CuPy API used (checked against CuPy's source, cupy/cuda/stream.pyx, graph.pyx, memory.pyx and
cupy/cuda/__init__.py): Stream(non_blocking=True), Stream.begin_capture(mode=None) (relaxed mode,
so the pool may still call cudaMalloc during a capture), Stream.end_capture() -> Graph,
Graph.launch(stream=None) (the current stream), Stream.wait_event, Event.record(stream),
MemoryPool().malloc, using_allocator(allocator) (thread-local).
"""
_capture = None     # while a step is being captured: the [(slot, value, refresh)] it registered
WARM_STEPS = 2      # eager steps in the graph's own pool before the capture


def write_scalar(slot, value, refresh):
    """slot[0] = value for the step about to run. While a step is being captured nothing is written
    (a write would be frozen into the graph): `refresh()` gives the value before each replay."""
    if _capture is not None:
        _capture.append((slot, value, refresh))
    else:
        slot.fill(value)


def capturing():
    return _capture is not None


class GraphedStep:
    """Runs fn(x, labels, *args) -> results: eagerly, or as a captured CUDA graph (docstring of the
    module). `rng` = (get, set) of the model's random state, put back when a capture fails."""

    def __init__(self, fn, cupy, rng, enabled=True, log=print):
        self.fn, self.cp, self.rng, self.enabled, self.log = fn, cupy, rng, enabled, log
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.key = None          # the (shapes, dtypes, args) the graph is for
        self.warm_steps = 0
        self.graph = None
        self.inputs = self.results = None
        self.scalars = []        # [(slot, refresh)] to fill before each replay
        self.replays = 0

    def __call__(self, x, labels, *args):
        key = (tuple(x.shape), x.dtype.str, tuple(labels.shape), args)
        if not self.enabled or (self.key is not None and key != self.key):
            return self.fn(x, labels, *args)
        if self.warm_steps < WARM_STEPS:
            self.key, self.warm_steps = key, self.warm_steps + 1
            return self._on_own_stream(lambda: self.fn(x, labels, *args))
        if self.graph is None:
            return self._capture(x, labels, args)
        return self._replay(x, labels, refresh=True)

    def _on_own_stream(self, fn):
        """fn() on the capture stream and in the step's own pool, ordered after the work already
        queued on the current stream and before the work queued after it."""
        cp = self.cp
        ready = cp.cuda.Event()
        ready.record()
        self.stream.wait_event(ready)
        with self.stream, cp.cuda.using_allocator(self.pool.malloc):
            result = fn()
        done = cp.cuda.Event()
        done.record(self.stream)
        cp.cuda.get_current_stream().wait_event(done)
        return result

    def _capture(self, x, labels, args):
        global _capture
        state = self.rng[0]()
        self.inputs = self._on_own_stream(lambda: (self.cp.asarray(x).copy(), self.cp.asarray(labels).copy()))
        registered = _capture = []
        try:
            self.results = self._on_own_stream(lambda: self._record(args))
        except Exception as e:  # an operation CUDA cannot capture: say so once, go on eagerly
            self.enabled, self.graph = False, None
            self.log(f"CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                     f"training on with eager launches")
        finally:
            _capture = None
        if self.graph is None:          # the capture failed: this step again, eagerly, from where it began
            self.rng[1](state)
            return self.fn(x, labels, *args)
        self.scalars = [(slot, refresh) for slot, _, refresh in registered]
        for slot, value, _ in registered:          # this step's values: the capture computed them
            slot.fill(value)
        return self._replay(x, labels, refresh=False)

    def _record(self, args):
        self.stream.begin_capture()
        try:
            results = self.fn(*self.inputs, *args)
        finally:
            self.graph = self.stream.end_capture()
        return results

    def _replay(self, x, labels, refresh):
        """Copy the batch into the captured inputs, fill the scalars, launch the graph."""
        x_in, labels_in = self.inputs
        x_in[...] = x
        if isinstance(labels, self.cp.ndarray):
            labels_in[...] = labels
        else:
            labels_in.set(labels.astype(labels_in.dtype, copy=False))
        if refresh:
            for slot, value_now in self.scalars:
                slot.fill(value_now())
        self.graph.launch()
        self.replays += 1
        return self.results
