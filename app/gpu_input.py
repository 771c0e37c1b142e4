"""Feeding a GPU: training batches augmented on the device, and the step run as a CUDA graph.

The CPU pipeline (app/data.py TrainBatches) decodes or reads each image, crops, flips, adds the
lighting, subtracts the mean and scales into float32 NCHW: 620 KB per AlexNet image, and arithmetic
on every pixel, for a step that consumes thousands of images a second. Here the CPU does only what
must happen on the CPU, reading the image (a memory map of a prepared shard, or a JPEG decode) and
copying its c x c crop window (uint8, 155 KB for AlexNet) into pinned host memory; the GPU does the
rest:

    loader threads (slot k)             copy stream                     compute stream
    read images, draw the params,  ->   wait until slot k's last   ->   wait for slot k's copy,
    copy the crops into pinned          batch was augmented; copy       augment (kernels/augment.cu)
    slot k                              slot k's uint8 to the GPU       -> x; the step

so the copy of batch b + 1 overlaps the step of batch b. The draws are the CPU path's own
(augment_params on batch_rng(seed, epoch, b), for the whole global batch, of which a data-parallel
rank takes its rows), and the kernel does the CPU path's arithmetic in the same order, so a batch
comes out bit for bit as TrainBatches makes it (tests/test_gpu_input.py, on the CPU harness, where
"pinned memory" is ordinary memory and the streams are the program order).

`loader_for` picks this on the GPU and the CPU's Prefetcher elsewhere; `step_runner` wraps the
trainer's step in a CUDA graph (engine/graphs.py) where one process trains on a GPU with --graphs.
"""
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from alexnet.app import data
from alexnet.engine import backend, precision
from alexnet.kernels import ops


def loader_for(batches, indices, workers, device, model):
    """What the trainer iterates for an epoch: (b, (x, labels), wait seconds) per batch."""
    if device != "cuda":
        return data.Prefetcher(batches, indices, workers)
    return GpuPrefetcher(batches, indices, workers, backend.gpu_runtime(), precision.activation_dtype(model.precision))


def step_runner(step, config, strategy, model, log):
    """step(x, labels, count), or, for one process on a GPU with --graphs, the same step captured
    as a CUDA graph and replayed (engine/graphs.py GraphedStep; its first full batch runs eagerly)."""
    from alexnet.app.distributed import Alone
    from alexnet.engine.graphs import GraphedStep

    if config.device != "cuda" or not config.graphs or type(strategy) is not Alone:
        return step
    return GraphedStep(step, backend.cupy_or_none(), (model.rng_state, model.set_rng_state), log=log)


# ---- the loader threads' part ----------------------------------------------------------------------
class Slot:
    """Host buffers for one batch: crops (B, c, c, 3) uint8, params (B, 3) int32 (oy, ox, flip),
    shift (B, 3) float32 (the lighting), labels (B,) int64; pinned on a GPU (`alloc`)."""

    def __init__(self, batch_size, crop, alloc):
        self.crops = alloc((batch_size, crop, crop, 3), np.uint8)
        self.params = alloc((batch_size, 3), np.int32)
        self.shift = alloc((batch_size, 3), np.float32)
        self.labels = alloc((batch_size,), np.int64)
        self.count, self.lighting = 0, False


def fill_slot(batches, b, slot):
    """Batch b of `batches` (a TrainBatches) into `slot`: its images' crop windows and the draws of
    the CPU augmentation (TrainBatches.__call__ makes the same batch on the CPU)."""
    prep, c = batches.prep, batches.prep.input_size
    idx = batches.order[b * batches.batch_size:(b + 1) * batches.batch_size]
    mine = data.batch_part(idx, batches.part)
    imgs, labels, kept = batches.source.load(idx[mine], with_kept=True)
    n, side = len(imgs), imgs.shape[1]
    if batches.augment == "none":                       # the centre crop, as at test time
        oy = ox = np.full(n, (side - c) // 2)
        flips, alpha = np.zeros(n, bool), None
    else:
        lighting = data.LIGHTING_STD if batches.augment == "paper" else 0.0
        draws = data.augment_params(data.batch_rng(batches.seed, batches.epoch, b), len(idx), side, c,
                                    lighting=lighting)
        oy, ox, flips, alpha = (None if p is None else p[mine[kept]] for p in draws)
    for i in range(n):
        slot.crops[i] = imgs[i, oy[i]:oy[i] + c, ox[i]:ox[i] + c]
    slot.params[:n] = np.stack([oy, ox, flips], axis=1)
    slot.shift[:n] = data.lighting_shift(alpha) if alpha is not None else 0.0
    slot.labels[:n] = labels
    slot.count, slot.lighting = n, alpha is not None


# ---- host and device: where the batches go --------------------------------------------------------
class _HostMoves:
    """The CPU harness's stand-in for pinned memory and streams: plain arrays, program order."""

    def __init__(self, rt):
        self.rt = rt

    def pinned(self, shape, dtype):
        return np.empty(shape, dtype)

    def device(self, shape, dtype):
        return np.empty(shape, dtype)

    def upload_slot(self, k, pairs, n):
        """The first n rows of each host buffer of slot k into its device buffer."""
        for host, dev in pairs:
            dev[:n] = host[:n]

    def uploaded(self, k):
        """Slot k's host buffers may be written again (its copy is done)."""

    def consumed(self, k):
        """Slot k's device buffers were read by the augmentation queued last."""


class _CudaMoves(_HostMoves):
    """Pinned host buffers, a copy stream, and the events that order it with the compute stream:
    slot k's copy waits until the augmentation of its previous batch has read the device buffers,
    the augmentation waits for the copy, and a loader thread waits for the copy before it writes
    slot k's host buffers again."""

    def __init__(self, rt, slots):
        super().__init__(rt)
        self.cp = rt.xp
        self.stream = self.cp.cuda.Stream(non_blocking=True)
        self.copied = [None] * slots        # event: slot k's upload finished
        self.read = [None] * slots          # event: slot k's device buffers were augmented from
        self._keep = []

    def pinned(self, shape, dtype):
        count = int(np.prod(shape))
        memory = self.cp.cuda.alloc_pinned_memory(max(1, count * np.dtype(dtype).itemsize))
        self._keep.append(memory)
        return np.frombuffer(memory, dtype, count).reshape(shape)

    def device(self, shape, dtype):
        return self.cp.empty(shape, dtype)

    def upload_slot(self, k, pairs, n):
        """Slot k's host buffers to its device buffers on the copy stream; the current (compute)
        stream then waits for the copy."""
        if self.read[k] is not None:
            self.stream.wait_event(self.read[k])
        for host, dev in pairs:
            dev[:n].set(host[:n], stream=self.stream)
        self.copied[k] = self.cp.cuda.Event()
        self.copied[k].record(self.stream)
        self.cp.cuda.get_current_stream().wait_event(self.copied[k])

    def uploaded(self, k):
        if self.copied[k] is not None:
            self.copied[k].synchronize()

    def consumed(self, k):
        self.read[k] = self.cp.cuda.Event()
        self.read[k].record()


class GpuPrefetcher:
    """data.Prefetcher's interface for batches augmented on the device (the module's docstring):
    iterating gives (b, (x, labels), wait), x a device array of the model's storage dtype (float32,
    or BF16 under --precision bf16), labels int64 on the host; wait is how long the step waited
    for the loader threads."""

    def __init__(self, batches, indices, workers, rt, dtype=np.float32, depth=None):
        self._time = time.perf_counter
        self.batches, self.indices, self.rt, self.dtype = batches, list(indices), rt, np.dtype(dtype)
        slots = depth or workers + 2
        self.moves = _CudaMoves(rt, slots) if rt.name == "cupy" else _HostMoves(rt)
        B, c = batches.batch_size, batches.prep.input_size
        self.slots = [Slot(B, c, self.moves.pinned) for _ in range(slots)]
        self.dev = [{name: self.moves.device(getattr(s, name).shape, getattr(s, name).dtype)
                     for name in ("crops", "params", "shift")} for s in self.slots]
        mean = np.ascontiguousarray(batches.prep.mean, np.float32)
        self.mean = rt.xp.asarray(mean)
        self.scale = float(batches.prep.input_scale)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="gpu-loader")
        self._pending = []

    def _fill(self, k, b):
        self.moves.uploaded(k)                 # the slot's last upload must be done before rewriting it
        fill_slot(self.batches, b, self.slots[k])
        return k

    def __iter__(self):
        try:
            n_slots = len(self.slots)
            for j, b in enumerate(self.indices[:n_slots]):
                self._pending.append(self._pool.submit(self._fill, j % n_slots, b))
            for j, b in enumerate(self.indices):
                t0 = self._time()
                k = self._pending.pop(0).result()
                wait = self._time() - t0
                x, labels = self._to_device(k)
                if j + n_slots < len(self.indices):
                    self._pending.append(self._pool.submit(self._fill, k, self.indices[j + n_slots]))
                yield b, (x, labels), wait
        finally:
            self.close()

    def _to_device(self, k):
        """Slot k's batch on the device, augmented: (x, labels)."""
        slot, dev, n = self.slots[k], self.dev[k], self.slots[k].count
        self.moves.upload_slot(k, [(getattr(slot, name), dev[name]) for name in ("crops", "params", "shift")], n)
        x = ops.augment(self.rt, dev["crops"][:n], dev["params"][:n], dev["shift"][:n], self.mean, self.scale,
                        slot.lighting, dtype=self.dtype)
        self.moves.consumed(k)
        return x, slot.labels[:n].copy()

    def close(self):
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
