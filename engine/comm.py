"""Communication between the processes of one training job: MPI through mpi4py, NCCL through CuPy.

`mpiexec -n N alexnet train ...` starts N processes (ranks). Everything they say to each other goes
through this module, and nothing here is a transport of our own: MPI moves host arrays and small
Python objects; NCCL moves GPU arrays between ranks that each have a GPU of their own (the way
Chainer's ChainerMN did); GPU arrays of ranks that share a GPU are staged through host memory and
go by MPI.

    world = connect()             Single() without an MPI launcher, else MPIWorld (imports mpi4py)
    world.rank, .size             this process among all of them
    world.local_rank, .local_size among those on this machine (GPU choice, the share of the cores)
    world.allreduce(values)       small host values summed over the ranks (blocking)
    world.allgather(values)       every rank's values, one row per rank (blocking)
    world.bcast(obj)              a picklable object from rank 0
    world.objects(obj)            every rank's picklable object
    world.reducer(device)         .start(array) sums a gradient buffer over the ranks in place
                                  without blocking; .wait() on what it returns (engine/grad_sync.py)
    TowerExchange(world)          what the two towers of the split AlexNet trade (layers/towers.py)

Without an MPI launcher (none of the variables below is set) nothing imports mpi4py, and the
world is `Single`: one process, which never communicates.

A rank that dies ends the job: MPI launchers (MPICH's Hydra, Open MPI's mpirun) kill the other
ranks as soon as one exits abnormally, and say so. For what a launcher cannot see, a rank that
hangs, each wait inside a training step is watched: one that lasts longer than
ALEXNET_COMM_TIMEOUT seconds (default 600) prints one line naming what it waited for and aborts
the whole job (MPI_Abort), rather than leave it hanging.

Every rank counts the bytes it sends (`sent_bytes`, as a bandwidth-optimal ring algorithm sends
them: an allreduce of n bytes over N ranks sends 2 (N-1)/N n per rank) and the seconds it spends
blocked in waits (`wait_seconds`): bench/scaling.py reads both.
"""
import contextlib
import os
import sys
import threading
import time

import numpy as np

from alexnet.engine import backend

# Variables MPI launchers set in every process they start: (rank, size); size None where the
# launcher's variables do not say it.
_LAUNCHERS = (("PMI_RANK", "PMI_SIZE"),                          # MPICH's Hydra, Intel MPI
              ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # Open MPI
              ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),    # MVAPICH2
              ("PMIX_RANK", None))                               # PMIx launchers (srun --mpi=pmix)

DEFAULT_TIMEOUT = 600.0


class CommError(RuntimeError):
    """Training cannot start its processes' communication (a one-line reason)."""


def launched():
    """(rank, size or None) when an MPI launcher started this process, else None. Reads the
    environment only: nothing is imported."""
    for rank_var, size_var in _LAUNCHERS:
        if rank_var in os.environ:
            size = os.environ.get(size_var) if size_var else None
            return int(os.environ[rank_var]), int(size) if size else None
    return None


def connect():
    """The world of this process: MPIWorld under an MPI launcher (mpiexec -n 1 included, so a
    one-rank job runs the multi-rank code), Single otherwise."""
    found = launched()
    if found is None:
        return Single()
    try:
        import mpi4py  # noqa: F401  (only to ask whether it is there; MPI starts in MPIWorld)
    except ImportError:
        _, size = found
        if size == 1:
            return Single()
        ranks = f"{size} ranks" if size else "several ranks"
        raise CommError(f"started by an MPI launcher with {ranks}, but mpi4py is not installed: "
                        f"pip install -e '.[mpi]' (or run without mpiexec)") from None
    return MPIWorld()


def _env_seconds(name, default):
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise CommError(f"{name} must be a number of seconds > 0, got {value!r}")
    return seconds


class _Done:
    """A reduction with nothing left to wait for on the host (NCCL's: ordered on the stream)."""

    def test(self):
        return True

    def wait(self, what=None):
        pass


class Single:
    """One process: nothing to say to anyone. One process trains through app/distributed.py's
    Alone, which never communicates; what is asked of every world is answered here for one."""

    rank, size, local_rank, local_size = 0, 1, 0, 1
    sent_bytes, wait_seconds = 0, 0.0

    def objects(self, obj, what=None):
        return [obj]


class MPIWorld:
    """The ranks of an MPI job, through mpi4py (MPI starts when this is made)."""

    def __init__(self):
        from mpi4py import MPI

        self._MPI = MPI
        # a communicator of our own, so that no library's traffic in COMM_WORLD can mix with ours
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.host = MPI.Get_processor_name()
        self.timeout = _env_seconds("ALEXNET_COMM_TIMEOUT", DEFAULT_TIMEOUT)
        self.sent_bytes, self.wait_seconds = 0, 0.0
        self._watchdog = None
        self._nccl = None

    # ---- waits, watched -------------------------------------------------------------------------
    @contextlib.contextmanager
    def waiting(self, what):
        """Time a blocking wait and, when `what` names it, abort the job if it outlasts the timeout."""
        t0 = time.perf_counter()
        if what is not None:
            if self._watchdog is None:
                self._watchdog = _Watchdog(self)
            self._watchdog.arm(what)
        try:
            yield
        finally:
            if what is not None:
                self._watchdog.disarm()
            self.wait_seconds += time.perf_counter() - t0

    def abort(self, code):
        """End every rank of the job now (the launcher kills them): the way out when this rank
        cannot go on and the others would wait for it for ever. The launcher forwards output
        asynchronously and stops forwarding when it kills the job: the pause lets this rank's
        last line (why it aborts) reach the terminal first."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)
        self._MPI.COMM_WORLD.Abort(code)

    def count_allreduce(self, nbytes):
        """Add what an allreduce of `nbytes` sends from this rank: a ring sends 2 (N-1)/N of the
        buffer, whatever the transport (docs/distributed.md)."""
        self.sent_bytes += 2 * (self.size - 1) * nbytes // self.size

    # ---- small host values -------------------------------------------------------------------------
    def allreduce(self, values, what=None):
        buf = np.array(values, dtype=np.float64)
        self.count_allreduce(buf.nbytes)
        with self.waiting(what):
            self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf

    def allgather(self, values, what=None):
        mine = np.array(values, dtype=np.float64)
        out = np.empty((self.size,) + mine.shape, np.float64)
        self.sent_bytes += (self.size - 1) * mine.nbytes
        with self.waiting(what):
            self.comm.Allgather(mine, out)
        return out

    def bcast(self, obj, what=None):
        with self.waiting(what):
            return self.comm.bcast(obj, root=0)

    def objects(self, obj, what=None):
        """Every rank's picklable object, in rank order."""
        with self.waiting(what):
            return self.comm.allgather(obj)

    # ---- gradient buffers ------------------------------------------------------------------------------
    def reducer(self, device):
        """How this job sums gradient buffers on `device` (collective: every rank calls it)."""
        if device == "cpu":
            return _MPIReducer(self)
        # NCCL needs a GPU per rank; on every machine, or on none (the choice must be the same everywhere)
        crowded = self.allreduce([self.local_size > backend.gpu_count()])[0] > 0
        nccl, why = backend.nccl_or_reason()
        if crowded or nccl is None:
            reason = "ranks share a GPU" if crowded else why
            return _StagedReducer(self, reason)
        if self._nccl is None:
            uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return _NcclReducer(self, nccl, self._nccl)

    def _start_host(self, array):
        self.count_allreduce(array.nbytes)
        return self.comm.Iallreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM)

    # ---- what the towers of the split model trade -----------------------------------------------------
    def allgatherv(self, mine, counts, what):
        """Every rank's flat host array (rank r's has counts[r] elements), concatenated in rank order."""
        out = np.empty(sum(counts), mine.dtype)
        self.sent_bytes += (self.size - 1) * mine.nbytes
        with self.waiting(what):
            self.comm.Allgatherv(mine, [out, list(counts)])
        return out

    def reduce_scatter(self, full, counts, what):
        """The sum over the ranks of a flat host array, of which rank r keeps the counts[r] elements
        of its own part (the parts in rank order)."""
        out = np.empty(counts[self.rank], full.dtype)
        self.sent_bytes += (full.size - counts[self.rank]) * full.itemsize
        with self.waiting(what):
            self.comm.Reduce_scatter(full, out, list(counts), op=self._MPI.SUM)
        return out

    def swap(self, mine, peer, shape, what):
        """Send a host array to rank `peer` and receive one of `shape` from it."""
        got = np.empty(shape, mine.dtype)
        self.sent_bytes += mine.nbytes
        with self.waiting(what):
            self.comm.Sendrecv(np.ascontiguousarray(mine), dest=peer, recvbuf=got, source=peer)
        return got


class _Watchdog:
    """A thread that aborts the job when one armed wait outlasts the world's timeout. mpi4py
    releases the GIL while it blocks in MPI, so this thread runs while the main one waits."""

    def __init__(self, world):
        self.world = world
        self._cond = threading.Condition()
        self._what, self._since = None, None
        threading.Thread(target=self._run, name="alexnet-comm-watchdog", daemon=True).start()

    def arm(self, what):
        with self._cond:
            self._what, self._since = what, time.monotonic()
            self._cond.notify()

    def disarm(self):
        with self._cond:
            self._what = None

    def _run(self):
        while True:
            with self._cond:
                while self._what is None:
                    self._cond.wait()
                what, since = self._what, self._since
                left = since + self.world.timeout - time.monotonic()
                if left > 0:
                    self._cond.wait(timeout=left)
                    continue
            w = self.world
            os.write(2, (f"alexnet: error: rank {w.rank} of {w.size} (pid {os.getpid()} on {w.host}) waited "
                         f"{w.timeout:g} s for {what}: another rank stopped answering (hung, or died without its "
                         f"launcher noticing); aborting the job (ALEXNET_COMM_TIMEOUT sets the limit)\n").encode())
            w.abort(1)
            return                 # MPI_Abort may return to this thread before the launcher acts


class _HostReduction:
    def __init__(self, world, request, done=None):
        self.world, self.request, self.done = world, request, done

    def test(self):
        return self.request.Test()

    def wait(self, what=None):
        with self.world.waiting(what):
            self.request.Wait()
        if self.done is not None:
            self.done()


class _MPIReducer:
    name = "MPI"

    def __init__(self, world):
        self.world = world

    def start(self, array):
        return _HostReduction(self.world, self.world._start_host(array))


class _StagedReducer:
    """GPU arrays through host memory and MPI: for ranks that share a GPU, or without NCCL."""

    def __init__(self, world, reason):
        self.world = world
        self.name = f"MPI, staged through host memory ({reason})"

    def start(self, array):
        host = backend.to_numpy(array)              # waits for the GPU to have written it
        return _HostReduction(self.world, self.world._start_host(host), done=lambda: array.set(host))


class _NcclReducer:
    """GPU arrays by NCCL, enqueued on the current stream: the update that reads the sum runs after
    it on that stream, so nothing on the host waits (the transfer is ordered, not overlapped, with
    the kernels of the layers below)."""

    name = "NCCL"

    def __init__(self, world, nccl, communicator):
        self.world, self.nccl, self.communicator = world, nccl, communicator
        self.types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def start(self, array):
        self.world.count_allreduce(array.nbytes)
        self.communicator.allReduce(array.data.ptr, array.data.ptr, array.size, self.types[array.dtype],
                                    self.nccl.NCCL_SUM, backend.current_stream_pointer())
        return _Done()


class TowerExchange:
    """What the two towers of the split AlexNet trade (models/towers.py, layers/towers.py): tower g
    is rank g. Arrays are (N, C, ...) with tower g holding channels (or features) counts[g] of
    axis 1; GPU arrays go through host memory."""

    def __init__(self, world):
        if world.size != 2:
            raise CommError(f"the tower split runs the paper's two towers on 2 ranks, this job has {world.size}")
        self.world = world
        self.tower, self.towers = world.rank, world.size
        self.peer = 1 - self.tower

    def gather(self, x, counts, what):
        """(N, counts[g], ...) from each tower -> (N, sum(counts), ...) on both."""
        host = backend.to_numpy(x)
        n, rest = host.shape[0], host.shape[2:]
        inner = int(np.prod(rest, dtype=np.int64))
        flat = self.world.allgatherv(np.ascontiguousarray(host).reshape(-1),
                                     [n * c * inner for c in counts], what)
        parts, lo = [], 0
        for c in counts:                                             # tower-major -> channel-major
            parts.append(flat[lo:lo + n * c * inner].reshape((n, c) + rest))
            lo += n * c * inner
        return self._back(np.concatenate(parts, axis=1), x)

    def scatter_sum(self, dx, counts, what):
        """(N, sum(counts), ...) partial gradients on each tower -> the towers' sum, this tower's
        counts[g] channels of it."""
        host = backend.to_numpy(dx)
        bounds = np.cumsum([0] + list(counts))
        flat = np.concatenate([np.ascontiguousarray(host[:, lo:hi]).reshape(-1)
                               for lo, hi in zip(bounds[:-1], bounds[1:])])  # channel-major -> tower-major
        size = host.size // host.shape[1]
        mine = self.world.reduce_scatter(flat, [c * size for c in counts], what)
        return self._back(mine.reshape((host.shape[0], counts[self.tower]) + host.shape[2:]), dx)

    def sum(self, x, what):
        """The towers' sum of an array each holds whole (the input gradient of the image, which
        both towers' conv1 read)."""
        host = backend.to_numpy(x)
        return self._back(self.world.allreduce(host, what).astype(host.dtype), x)

    def halo(self, x, width, what):
        """The `width` channels of the other tower next to this one's (tower 0: the other's first;
        tower 1: the other's last), (N, width, ...)."""
        host = backend.to_numpy(x)
        edge = host[:, -width:] if self.tower == 0 else host[:, :width]
        return self._back(self.world.swap(edge, self.peer, edge.shape, what), x)

    def halo_back(self, dhalo, what):
        """Send the gradient of the halo (the other tower's channels) home; receive the gradient of
        this tower's edge channels that the other tower's halo produced."""
        host = backend.to_numpy(dhalo)
        return self._back(self.world.swap(host, self.peer, host.shape, what), dhalo)

    @staticmethod
    def _back(host, like):
        return backend.to_device(host, backend.device_of(like))
