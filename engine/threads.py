"""Batch chunks over the cores (threads) for the NumPy path.

NumPy's elementwise operations use one core; its BLAS can use all of them, but only inside a
matrix product. The CPU layers instead split their work (usually the batch) into one chunk per
core and run the chunks in a thread pool: NumPy releases the GIL inside its loops and BLAS calls,
so im2col, LRN, pooling and the products all run on every core at once. BLAS is then limited to
one thread (threadpoolctl), since each chunk already owns a core and nested BLAS threads would
only fight over it.

Layers that split the batch also cap the chunk size (`grain`, BATCH_GRAIN samples): at batch 128
one chunk per core would be 64 images, whose im2col matrices and LRN temporaries (hundreds of MB)
fall out of every cache, and a step then costs more per image than at batch 32. Chunks of at most
BATCH_GRAIN samples go to the threads through a shared queue, so the time per image stays flat as
the batch grows.

ALEXNET_THREADS sets the number of threads (default: the CPU count; 1 turns this off and leaves
BLAS as it was); ALEXNET_BATCH_GRAIN overrides BATCH_GRAIN. Several processes on one machine (the
ranks of an MPI job, engine/comm.py) each take their share of the cores with `share_cores`, which
becomes the default in place of the CPU count and keeps BLAS to one thread even at a share of one.
"""
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_pool = None
_blas_limit = None
_share = None            # this process's share of the cores (share_cores), else None: all of them
_local = threading.local()

BATCH_GRAIN = 8           # samples per chunk at most, for the layers that split the batch


def _env_count(name):
    """The positive integer in environment variable `name`, or None where it is unset."""
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return count


_CPUS = max(1, os.cpu_count() or 1)


def num_threads():
    return _env_count("ALEXNET_THREADS") or _share or _CPUS


def share_cores(threads):
    """This process runs `threads` chunk threads by default (ALEXNET_THREADS still overrides), and
    BLAS one thread per chunk: the other processes on the machine have the other cores."""
    global _share
    if threads < 1:
        raise ValueError(f"share_cores: threads must be >= 1, got {threads}")
    _share = int(threads)
    with _lock:
        _limit_blas()


def _limit_blas():
    global _blas_limit
    if _blas_limit is None:
        from threadpoolctl import threadpool_limits
        _blas_limit = threadpool_limits(limits=1, user_api="blas")


def _get_pool(threads):
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers != threads - 1:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="alexnet-chunk")
            _limit_blas()
        return _pool


def chunk_bounds(n, parts=None):
    """Split range(n) into at most `parts` (default: the thread count) contiguous pieces."""
    return shares(n, min(parts or num_threads(), n))


def shares(n, parts):
    """range(n) as exactly `parts` contiguous (lo, hi) pieces whose sizes differ by at most one, the
    larger ones first; some are empty when n < parts. (The ranks' slices of a batch, the towers'
    halves of a layer.)"""
    step, extra = divmod(n, parts)
    bounds, lo = [], 0
    for i in range(parts):
        hi = lo + step + (i < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def batch_grain(sample_bytes=0, chunk_bytes=0):
    """Samples per chunk: BATCH_GRAIN, or fewer where a layer makes many passes over its chunk
    (LRN, max-pool) and asks for chunks of about `chunk_bytes` so that the passes run from cache
    (measured: LRN forward + backward of conv1's output 27 -> 17 ms with one-sample chunks)."""
    forced = _env_count("ALEXNET_BATCH_GRAIN")
    if forced:
        return forced
    if sample_bytes and chunk_bytes:
        return max(1, min(BATCH_GRAIN, chunk_bytes // sample_bytes))
    return BATCH_GRAIN


def run_chunks(fn, n, grain=None, least=1):
    """Call fn(lo, hi) for each chunk of range(n), in parallel; returns the results in order.
    Chunks are one per thread, or smaller where `grain` caps their size (more chunks than threads
    are then handed out through a shared counter), and of at least `least` items: work too small
    to be worth a thread's hand-over (~0.1 ms) runs here at once. Nested calls (a chunk calling
    run_chunks) run inline, so the pool can't deadlock."""
    threads = num_threads()
    if getattr(_local, "inside", False) or n < 1:
        return [fn(0, n)]
    parts = threads
    if grain is not None:         # enough chunks for the grain, a multiple of the threads (balance)
        parts = threads * -(-n // (grain * threads))
    parts = min(parts, max(1, n // least))
    if parts == 1 or n < 2:
        return [fn(0, n)]
    bounds = chunk_bounds(n, parts)
    results = [None] * len(bounds)
    next_index = iter(range(len(bounds)))
    take = threading.Lock()
    failed = []                        # set by the first chunk that raises: the others stop taking

    def worker():
        _local.inside = True
        try:
            while not failed:
                with take:
                    i = next(next_index, None)
                if i is None:
                    return
                try:
                    results[i] = fn(*bounds[i])
                except BaseException:
                    failed.append(True)
                    raise
        finally:
            _local.inside = False

    helpers = min(threads, len(bounds)) - 1       # ALEXNET_THREADS=1: the chunks run in turn here
    # each helper runs in a copy of the caller's context, so settings that live in context
    # variables (np.errstate among them) hold in the chunks as they do in the caller
    pool = _get_pool(threads) if helpers else None
    futures = [pool.submit(contextvars.copy_context().run, worker) for _ in range(helpers)]
    error = None
    try:
        worker()                       # the calling thread takes chunks too
    except BaseException as e:         # let the helpers finish before raising, so none outlives us
        error = e
    for f in futures:
        try:
            f.result()
        except BaseException as e:
            error = error or e
    if error is not None:
        raise error
    return results
