"""Data-parallel gradients: every parameter gradient summed over the ranks while backward runs.

Each rank computes the gradients of its slice of the global batch, scaled so that the ranks' sum
is the global batch's mean gradient (engine/loss.py, `backward(count=global batch)`). Summing them
is one allreduce per tensor; issued after backward, it would leave all of the communication time
exposed. Instead the tensors go into buckets of about BUCKET_BYTES in the order backward writes
them (the last layers first: fc8, fc7, fc6, ..., conv1), and a bucket's allreduce starts, without
blocking, as soon as its last gradient is written (Sequential.backward's after_layer hook), while
the layers below are still being computed. `finish()` waits for every bucket before the optimizer
reads the gradients. (The scheme of PyTorch's DistributedDataParallel and of Horovod.)

A tensor of BUCKET_BYTES or more is a bucket of its own and is summed in place: fc6's 151 MB
weight gradient is never copied. Smaller tensors (biases, the conv weights) are copied into one
flat buffer per bucket, summed in one message and handed back as views of it: a few large
messages cost less than many small ones, each of which pays a latency.

MPI moves data only while the program is inside an MPI call (MPICH and Open MPI run no progress
thread by default), so after each layer the hook also tests the buckets in flight: that keeps
them moving through the backward of the layers below.
"""
import time

from alexnet.engine import backend

BUCKET_BYTES = 25 << 20


class GradientSync:
    def __init__(self, model, reducer, bucket_bytes=BUCKET_BYTES):
        self.reducer = reducer
        self.buckets = []                 # [[(layer, key), ...]] in the order backward fills them
        small, small_bytes = [], 0
        for layer in reversed(model.layers):
            for key in layer.params:
                nbytes = layer.params[key].nbytes
                if nbytes >= bucket_bytes:
                    if small:
                        self.buckets.append(small)
                        small, small_bytes = [], 0
                    self.buckets.append([(layer, key)])
                    continue
                small.append((layer, key))
                small_bytes += nbytes
                if small_bytes >= bucket_bytes:
                    self.buckets.append(small)
                    small, small_bytes = [], 0
        if small:
            self.buckets.append(small)
        self._layers_of = [{id(layer) for layer, _ in bucket} for bucket in self.buckets]
        self._buffers = [None] * len(self.buckets)
        self.wait_seconds = 0.0           # blocked in finish(), summed over the steps (bench/scaling.py)
        self._begin()

    def _begin(self):
        self._waiting = [set(layers) for layers in self._layers_of]
        self._started = [None] * len(self.buckets)

    def after_layer(self, layer):
        """Sequential.backward's hook: start every bucket whose last layer this was, then give the
        buckets in flight a chance to progress."""
        for i, waiting in enumerate(self._waiting):
            if id(layer) in waiting:
                waiting.discard(id(layer))
                if not waiting:
                    self._started[i] = self._start(i)
        for handle in self._started:
            if handle is not None:
                handle.test()

    def _start(self, i):
        bucket = self.buckets[i]
        if len(bucket) == 1:
            layer, key = bucket[0]
            grad = layer.grads[key]
            if not grad.flags.c_contiguous:
                grad = layer.grads[key] = backend.get_array_module(grad).ascontiguousarray(grad)
            return self.reducer.start(grad)
        grads = [layer.grads[key] for layer, key in bucket]
        buffer = self._buffers[i]
        if buffer is None or buffer.dtype != grads[0].dtype:
            buffer = self._buffers[i] = backend.get_array_module(grads[0]).empty(sum(g.size for g in grads),
                                                                                 grads[0].dtype)
        lo = 0
        for g in grads:
            buffer[lo:lo + g.size] = g.reshape(-1)
            lo += g.size
        return self.reducer.start(buffer)

    def finish(self, what="the gradient allreduce"):
        """Wait for every bucket; the layers' grads are then the sums over the ranks."""
        missing = [self.buckets[i][0][0].name for i, handle in enumerate(self._started) if handle is None]
        if missing:
            raise RuntimeError(f"GradientSync: no gradient from layers {missing}: backward must run with "
                               f"after_layer=sync.after_layer")
        t0 = time.perf_counter()
        for i, handle in enumerate(self._started):
            handle.wait(what)
            if len(self.buckets[i]) > 1:
                lo, buffer = 0, self._buffers[i]
                for layer, key in self.buckets[i]:
                    shape = layer.params[key].shape
                    size = layer.params[key].size
                    layer.grads[key] = buffer[lo:lo + size].reshape(shape)
                    lo += size
        self.wait_seconds += time.perf_counter() - t0
        self._begin()
