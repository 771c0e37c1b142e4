"""Batch-chunk parallelism for the NumPy path.

NumPy's elementwise operations use one core; its BLAS can use all of them, but only inside a
matrix product. The CPU layers instead split their work (usually the batch) into one chunk per
core and run the chunks in a thread pool: NumPy releases the GIL inside its loops and BLAS calls,
so im2col, LRN, pooling and the products all run on every core at once. BLAS is then limited to
one thread (threadpoolctl), since each chunk already owns a core and nested BLAS threads would
only fight over it.

ALEXNET_THREADS sets the number of threads (default: the CPU count; 1 turns this off and leaves
BLAS as it was).
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_pool = None
_blas_limit = None
_local = threading.local()


def num_threads():
    value = os.environ.get("ALEXNET_THREADS", "")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ValueError(f"ALEXNET_THREADS must be a positive integer, got {value!r}") from None
    return max(1, os.cpu_count() or 1)


def _get_pool(threads):
    global _pool, _blas_limit
    with _lock:
        if _pool is None or _pool._max_workers != threads - 1:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="alexnet-chunk")
            if _blas_limit is None:
                from threadpoolctl import threadpool_limits
                _blas_limit = threadpool_limits(limits=1, user_api="blas")
        return _pool


def chunk_bounds(n, parts=None):
    """Split range(n) into at most `parts` (default: the thread count) contiguous pieces."""
    parts = min(parts or num_threads(), n)
    step, extra = divmod(n, parts)
    bounds, lo = [], 0
    for i in range(parts):
        hi = lo + step + (i < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def run_chunks(fn, n):
    """Call fn(lo, hi) for each chunk of range(n), in parallel; returns the results in order.
    Nested calls (a chunk calling run_chunks) run inline, so the pool can't deadlock."""
    threads = num_threads()
    if threads == 1 or n < 2 or getattr(_local, "inside", False):
        return [fn(0, n)]
    bounds = chunk_bounds(n, threads)
    pool = _get_pool(threads)

    def call(lo, hi):
        _local.inside = True
        try:
            return fn(lo, hi)
        finally:
            _local.inside = False

    futures = [pool.submit(call, lo, hi) for lo, hi in bounds[1:]]
    first = call(*bounds[0])           # the calling thread does the first chunk itself
    return [first] + [f.result() for f in futures]
