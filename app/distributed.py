"""Training on several processes: `mpiexec -n N alexnet train ...` (docs/distributed.md).

The trainer (app/trainer.py) runs the same loop on every rank and asks its strategy wherever one
process and several differ:

    Alone          no MPI launcher: one process, the trainer exactly as it always was
    DataParallel   N ranks (the default): rank r loads slice r of every global batch of
                   --batch-size, computes its gradients, and the ranks sum them (engine/grad_sync.py);
                   validation is sharded the same way and its counts summed
    TowerParallel  2 ranks, --parallel towers: the paper's two towers, one per rank (models/towers.py)

What every strategy answers: which slice of a batch this rank loads (`train_part`, `eval_part`),
the global count of a batch and the dropout layers' place in it (`batch_count`), the gradient
hooks (`after_layer`, `finish_gradients`), the step's statistics (`step_totals`, `combine`), the
decisions all ranks must take together (`agree`: a signal, a time-based save), and who writes:
rank 0 alone logs, holds the run directory's lock and writes checkpoints (`lead_does`), and every
rank learns how that went, so a failed write stops all of them with the same line.

Errors. A UserError raised on every rank at the same point (a bad argument, a diverged loss, a
failed write that `lead_does` shared) is a CollectiveError: rank 0 prints it and every rank exits
normally. Anything raised on one rank alone would leave the others waiting in their next
collective for ever, so `guarded` prints it (naming the rank) and aborts the whole job.
"""
import os
import sys

import numpy as np

from alexnet.app.errors import UserError, report
from alexnet.engine import comm

PARALLEL_CHOICES = ("data", "towers")


class CollectiveError(UserError):
    """Raised on every rank at the same point with the same message: rank 0 reports it."""


# ---- start-up ---------------------------------------------------------------------------------


def connect():
    """The world of this process (engine/comm.py) with its share of the machine's cores: cores /
    ranks on this machine chunk threads, or the cores the launcher bound it to (ALEXNET_THREADS
    overrides both)."""
    world = comm.connect()
    if isinstance(world, comm.Single):
        return world
    from alexnet.engine import threads

    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    bound = visible < (os.cpu_count() or visible)       # the launcher pinned this rank to its cores
    threads.share_cores(visible if bound else max(1, visible // world.local_size))
    return world


def everywhere(world, fn):
    """fn() on every rank; a UserError on any of them stops all with the first rank's message
    (setup errors: a rank that failed alone would leave the others waiting). One process: fn()."""
    if isinstance(world, comm.Single):
        return fn()
    try:
        result, error = fn(), None
    except UserError as e:
        result, error = None, e
    errors = world.objects(str(error) if error else None)
    first = next((e for e in errors if e), None)
    if first is not None:
        raise CollectiveError(first) from error      # this rank's own error, if any, with its traceback
    return result


def guarded(world, fn):
    """Run a multi-rank command: collective errors end every rank with rank 0's line; any other
    exception ends the whole job (MPI_Abort) with this rank's line, since the other ranks would
    wait for this one for ever."""
    if isinstance(world, comm.Single):
        return fn()
    try:
        return fn()
    except CollectiveError:
        if world.rank == 0:
            raise
        return 2
    except KeyboardInterrupt:
        print(f"alexnet: error: rank {world.rank} of {world.size}: interrupted; stopping every rank",
              file=sys.stderr, flush=True)
        code = 130
    except BaseException as e:
        code = report(e, where=f"rank {world.rank} of {world.size}: ", then="; stopping every rank")
    world.abort(code)


def strategy(world, parallel, device):
    """This rank's strategy; on the GPU, local rank r takes device r (mod the devices there are),
    before anything is allocated."""
    if parallel not in PARALLEL_CHOICES:
        raise UserError(f"unknown --parallel {parallel!r}: expected one of {', '.join(PARALLEL_CHOICES)}")
    if device == "cuda" and not isinstance(world, comm.Single):
        from alexnet.engine import backend

        if backend.cuda_available():
            backend.use_gpu(world.local_rank % backend.gpu_count())
    if parallel == "towers":
        return TowerParallel(world, device)
    if isinstance(world, comm.Single):
        return Alone(world, device)
    return DataParallel(world, device)


# ---- strategies -------------------------------------------------------------------------------


class Alone:
    """One process: every hook is what the single-process trainer did."""

    train_part = eval_part = None
    after_layer = None

    def __init__(self, world, device):
        self.world, self.device = world, device
        self.lead = world.rank == 0

    def describe(self):
        return None

    def check(self, config):
        """A UserError for a run this strategy cannot do (called once the config is resolved)."""

    def build(self, model):
        return model

    def attach(self, model):
        """Set up what needs the other ranks (collective), once the model is on its device."""

    def batch_count(self, n, model):
        return n

    def finish_gradients(self):
        pass

    def step_totals(self, loss, correct, n, count):
        """A step's (loss, correct, n), as `train_step` returns them: this rank's."""
        return _Local((loss, correct, n))

    def combine(self, values):
        return values

    def agree(self, signum, save_due):
        return signum, save_due

    def eval_sums(self, sums):
        return sums

    def lead_does(self, fn):
        return fn()

    def full_state(self, model, velocity):
        return model.state_dict(), velocity

    def own_tensors(self, model, tensors):
        return tensors

    def model_sums(self, values):
        """Sums over the model's tensors (squared norms), completed over the ranks that hold parts of it."""
        return values


class _Ranks(Alone):
    """What data and tower parallelism share: collective decisions and rank 0's writes."""

    def agree(self, signum, save_due):
        """(the signal any rank received, rank 0's time-based save) on every rank. A signal
        reaches the ranks at different moments (mpiexec forwards Ctrl-C to each), so what they
        act on is what they agree on after the same step."""
        got = self.world.allgather([signum or 0, save_due and self.lead], "the other ranks after a step")
        signals = [int(s) for s in got[:, 0] if s]
        return (max(signals) if signals else None), bool(got[:, 1].any())

    def lead_does(self, fn):
        """fn() on rank 0 alone (a write); its result, or its UserError, on every rank."""
        outcome = None
        if self.lead:
            try:
                outcome = ("ok", fn())
            except UserError as e:
                outcome = ("error", str(e))
        outcome = self.world.bcast(outcome, "rank 0's write")
        if outcome[0] == "error":
            raise CollectiveError(outcome[1])
        return outcome[1]


class DataParallel(_Ranks):
    def __init__(self, world, device):
        super().__init__(world, device)
        self.train_part = self.eval_part = (world.rank, world.size)
        self.sync = None
        self._dropouts = []

    def describe(self):
        from alexnet.engine import backend, threads

        count = threads.num_threads()
        if self.device == "cpu":
            share = f"{count} thread{'s' * (count > 1)} each"
        else:
            gpus = backend.gpu_count()
            share = ("one GPU each" if self.world.local_size <= gpus
                     else f"{self.world.local_size} on {gpus} GPU{'s' * (gpus > 1)} of this machine")
        ranks = f"{self.world.size} rank{'s' * (self.world.size > 1)}"
        return (f"data parallel over {ranks} ({share}): each loads 1/{self.world.size} of every "
                f"batch; gradients summed by {self.sync.reducer.name}")

    def attach(self, model):
        from alexnet.engine.grad_sync import GradientSync
        from alexnet.layers import Dropout

        self.sync = GradientSync(model, self.world.reducer(self.device))
        self.after_layer = self.sync.after_layer
        self._dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]

    def batch_count(self, n, model):
        """The global batch's count of decoded images; the dropout layers learn where this rank's
        samples sit in it (the images decoded before them on lower ranks)."""
        counts = self.world.allgather([n], "the batch sizes of the other ranks")[:, 0].astype(np.int64)
        for layer in self._dropouts:
            layer.place(int(counts[:self.world.rank].sum()))
        return int(counts.sum())

    def finish_gradients(self):
        self.sync.finish()

    def step_totals(self, loss, correct, n, count):
        """On the CPU the step's loss and correct count, summed over the ranks before the update
        (a NaN must stop every rank before it is applied); on the GPU they stay on the device
        until the next flush (`combine`)."""
        if self.device != "cpu":
            return _Local((loss, correct, n))
        return _SummedStep(self.world.reducer("cpu"), loss, correct, n, count)

    def combine(self, values):
        if self.device == "cpu":                  # summed after every step already
            return values
        return self.world.allreduce(values, "the other ranks' losses")

    def eval_sums(self, sums):
        return self.world.allreduce(sums, "the other ranks' validation counts")

    def full_state(self, model, velocity):
        return (model.state_dict(), velocity) if self.lead else (None, None)


class _Local:
    """A step's figures as they are: `result()` returns them."""

    def __init__(self, figures):
        self.figures = figures

    def result(self):
        return self.figures


class _SummedStep:
    """A step's (loss sum, correct count) summed over the ranks while backward runs; `result()`
    waits for the sum and returns the global batch's (mean loss, correct, count)."""

    def __init__(self, reducer, loss, correct, n, count):
        self.count = count
        self.buf = np.array([loss * n, float(correct)], np.float64)
        self.handle = reducer.start(self.buf)

    def result(self):
        self.handle.wait("the other ranks' losses")
        return float(self.buf[0]) / self.count, int(self.buf[1]), self.count


class TowerParallel(_Ranks):
    def __init__(self, world, device):
        super().__init__(world, device)
        self.exchange = None

    def describe(self):
        return ("the paper's two towers, one per rank (models/towers.py): conv3 and fc6-fc8 trade "
                "activations and input gradients; each rank updates its own halves")

    def check(self, config):
        if self.world.size != 2:
            raise UserError(f"--parallel towers runs the paper's two towers on 2 ranks "
                            f"(mpiexec -n 2 alexnet train ...), this job has {self.world.size}")
        if config.model not in ("alexnet", "alexnet-small") or config.groups != 2:
            raise UserError(f"--parallel towers splits the two-tower alexnet or alexnet-small (--groups 2), "
                            f"not {config.model} with --groups {config.groups}")
        if config.precision == "bf16":
            raise UserError("--parallel towers trades float32 activations between the towers: use --precision "
                            "fp32 or tf32 with it")

    def build(self, model):
        from alexnet.models.towers import TowerModel

        self.exchange = comm.TowerExchange(self.world)
        return TowerModel(model, self.exchange)

    def batch_count(self, n, model):
        counts = self.world.allgather([n], "the other tower's batch size")[:, 0]
        if counts.min() != counts.max():
            raise CollectiveError(f"the towers decoded different numbers of images of one batch "
                                  f"({int(counts[0])} and {int(counts[1])}): the files changed while training?")
        return n

    def full_state(self, model, velocity):
        weights, velocity = model.state_dict(), model.gather_tensors(velocity)    # collective
        return (weights, velocity) if self.lead else (None, None)

    def own_tensors(self, model, tensors):
        return model.own_tensors(tensors)

    def model_sums(self, values):
        """Each rank holds half of every layer: the halves' sums add up to the whole's."""
        return self.world.allreduce(np.asarray(values, np.float64), "the other tower's sums")
