"""Large arrays reused from one training step to the next: a caching allocator for the NumPy path.

Why: a training step of AlexNet allocates gigabytes of arrays (patch matrices, LRN scales, layer
outputs and their gradients) and frees them again. Large allocations come from the kernel as fresh
pages, and every fresh page must be faulted in and zeroed: measured at batch 128 on 2 cores, 1.5 s
of kernel time per 4 s step. The shapes repeat exactly every step, so keeping freed arrays and
handing them out again removes almost all of it (PyTorch keeps such a cache on the GPU; its CPU
path does not, and pays the page faults).

How: `empty(shape, dtype)` returns a view of a pooled 1-D byte buffer. A buffer is free when
nothing but the pool refers to it: every NumPy view of it (and anything built on one) keeps a
reference to the buffer, so its reference count says whether any user of the memory is left.
Only then is it handed out again, so a live array is never overwritten. A request takes a free
buffer of its exact size, or else the smallest free one up to twice its size. Arrays under 1 MB
come from `np.empty` (NumPy and malloc reuse those well already).

The pool keeps its buffers until `release()` (the trainer calls it when a run ends; call it
yourself in a long-lived process once you are done training). ALEXNET_WORKSPACE=0 turns the pool
off (every call is `np.empty`).
"""
import math
import os
import sys
import threading

import numpy as np

MIN_BYTES = 1 << 20

_lock = threading.Lock()
_buffers = {}            # nbytes -> list of 1-D uint8 arrays owned by the pool


def _references(buffer):
    return sys.getrefcount(buffer)


def _free_count():
    """The reference count a free buffer shows in the loops below (the pool's list, the loop
    variable, the call's arguments): measured with the same code rather than assumed, since the
    interpreter decides which of those references it actually counts."""
    pool = [np.empty(1, np.uint8)]
    for buffer in pool:
        return _references(buffer)


_FREE_REFCOUNT = _free_count() if hasattr(sys, "getrefcount") else None


def enabled():
    return _FREE_REFCOUNT is not None and os.environ.get("ALEXNET_WORKSPACE", "1") != "0"


def empty(shape, dtype=np.float32):
    """Like np.empty(shape, dtype), from the pool when the array is large."""
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or not enabled():
        return np.empty(shape, dtype)
    with _lock:
        # an exact size first (every step asks for the same sizes), else the smallest free buffer
        # up to twice the size: a smaller last batch of an epoch or a validation batch then fits
        # into the training step's buffers instead of growing the pool by a second set
        sizes = [nbytes] + sorted(k for k in _buffers if nbytes < k <= 2 * nbytes)
        for size in sizes:
            for buffer in _buffers.get(size, ()):
                if _references(buffer) == _FREE_REFCOUNT:
                    # the view's reference to the buffer marks it busy until the view is gone
                    return buffer[:nbytes].view(dtype).reshape(shape)
        buffer = np.empty(nbytes, np.uint8)
        _buffers.setdefault(nbytes, []).append(buffer)
        return buffer.view(dtype).reshape(shape)


def empty_like(a):
    return empty(a.shape, a.dtype)


def zeros(shape, dtype=np.float32):
    out = empty(shape, dtype)
    out.fill(0)
    return out


def pooled_bytes():
    """(bytes held by the pool, bytes of it in use right now)."""
    with _lock:
        total = busy = 0
        for nbytes, pool in _buffers.items():
            for buffer in pool:
                total += nbytes
                busy += nbytes * (_references(buffer) > _FREE_REFCOUNT)
        return total, busy


def release():
    """Drop the pool's own references: free buffers go back to the system, busy ones stay valid
    (their users still hold them) and are simply no longer reused."""
    with _lock:
        _buffers.clear()
