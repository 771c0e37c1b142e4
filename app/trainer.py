"""The training loop: epochs of SGD steps with background loading, validation, the LR schedule,
checkpoints, exact resume, signals and divergence handling.

A run directory holds everything about one run, and one live process owns it (app/rundir.py):

    RUN_DIR/.lock                  flock'ed for the run's life; the holder's pid, host, start time
    RUN_DIR/config.json            the hyperparameters and data path (what --resume restores)
    RUN_DIR/log.jsonl              one JSON object per line: {"type": "epoch", ...} after each
                                   epoch's validation, {"type": "step", ...} every log_every steps,
                                   {"type": "checkpoint", ...} for each save inside an epoch
    RUN_DIR/checkpoints/ckpt-<step>.npz   the last `keep` checkpoints (end of epoch, --save-every,
                                   or where a run was stopped); best.npz, the highest val top-1
    RUN_DIR/plots/                 written by `alexnet plot`

Under `mpiexec -n N` every rank runs this loop; app/distributed.py's strategy says where ranks
differ (which slice of a batch each loads, how gradients and statistics are summed, what they must
decide together) and rank 0 alone writes the files above. One process and N ranks at the same
--batch-size are the same training (docs/distributed.md).

Exactness of resume rests on three things: every random draw is either owned by the model (the
dropout layers' mask counters, saved through ``model.rng_state()``) or a pure function of
(seed, epoch, batch) in app/data.py; a checkpoint stores the position (epoch, next batch) and
all optimizer/schedule state; the NumPy ops run on the same shapes in the same order. A run
stopped after any step and resumed therefore ends with the same bits as one that never stopped,
which is why a checkpoint can be written after any step: at the end of an epoch, every
--save-every steps or minutes, on SIGINT/SIGTERM, or after --stop-after-steps.
"""

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections import deque

import numpy as np

from alexnet.app import checkpoint as ckpt
from alexnet.app import rundir
from alexnet.app.distributed import CollectiveError
from alexnet.app.config import parse_save_every
from alexnet.app.errors import UserError


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)  # (N, K)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk_correct(probs, labels, k):
    """How many rows have their label among the k highest scores."""
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]  # (N, k), unordered
    return int((top == labels[:, None]).any(axis=1).sum())


@contextlib.contextmanager
def quiet_numerics():
    """No NumPy RuntimeWarnings for overflow, NaN or division by zero inside the block.

    Training reports a non-finite loss itself, as one line that names the step and the last good
    checkpoint; the warnings NumPy prints on the way there (LRN's squares, Winograd's products
    overflowing) would only precede it. np.errstate covers this thread; the warnings filter
    covers the layers' chunk threads (engine/parallel.py), which do not inherit errstate."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered",
                                RuntimeWarning)
        yield


def evaluate(model, source, crop, mean, batch_size=128, ten_crop=False, workers=2, device="cpu",
             progress=False, desc="val", scale=1.0, stop=None, part=None, combine=None):
    """Loss, top-1 and top-5 accuracy of ``model`` on ``source`` (centre crop, or the average of the
    softmax over the 10 views). Returns a dict with loss, top1, top5 (fractions) and count, or
    None when ``stop()`` became true between batches (a signal: the caller saves and exits).
    Sharded over data-parallel ranks: ``part`` (rank, ranks) is this rank's slice of each batch,
    and ``combine`` sums (loss, top-1, top-5, count) over the ranks."""
    from tqdm import tqdm

    from alexnet.engine import backend
    from alexnet.app.data import EvalBatches, Prefetcher

    batches = EvalBatches(source, batch_size, crop, mean, ten_crop, scale, part=part)
    loss_sum, c1, c5, n = 0.0, 0, 0, 0
    bar = tqdm(total=batches.num_batches, desc=desc, unit="batch", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    with quiet_numerics():
        loader = Prefetcher(batches, range(batches.num_batches), workers)
        try:
            for _, (views, labels), _ in loader:
                bar.update(1)
                if stop is not None and stop():
                    return None
                if len(labels) == 0:
                    continue
                probs = 0.0
                for x in views:
                    logits = backend.to_numpy(model.forward(backend.to_device(x, device), keep_cache=False))
                    probs = probs + softmax(logits.astype(np.float64))
                probs = probs / len(views)  # (N, K)
                loss_sum += float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).sum())
                c1 += topk_correct(probs, labels, 1)
                c5 += topk_correct(probs, labels, 5)
                n += len(labels)
        finally:
            loader.close()  # the loader threads end before the warnings filter is restored
            bar.close()
    if combine is not None:
        loss_sum, c1, c5, n = combine(np.array([loss_sum, c1, c5, n], np.float64))
        c1, c5, n = int(c1), int(c5), int(n)
    if n == 0:
        raise CollectiveError("no validation image could be decoded")
    return {"loss": loss_sum / n, "top1": c1 / n, "top5": c5 / n, "count": n}


def train_step(model, criterion, optimizer, par, x, labels, count, device="cpu", check=None):
    """One SGD step on this rank's `len(labels)` images of a global batch of `count` (one process:
    the whole batch). Returns (loss, correct, n): this rank's mean loss, correct count and images,
    or, where the strategy sums them every step (data-parallel ranks on the CPU), the global batch's.
    `check(loss)` sees the loss before any weight changes (the trainer stops on a NaN there).
    The trainer and bench/scaling.py run this same step."""
    from alexnet.engine import backend

    n = len(labels)
    if n == 0:
        # none of the batch is this rank's (a short last batch): a stand-in image keeps its
        # layers in step with the other ranks (the dropout counters) and contributes nothing
        x, labels = np.zeros((1,) + x.shape[1:], x.dtype), np.zeros(1, labels.dtype)
    labels_dev = backend.to_device(labels, device)
    logits = model.forward(backend.to_device(x, device), train=True)
    loss = criterion.forward(logits, labels_dev)
    correct = (logits.argmax(axis=1) == labels_dev).sum() if n else 0
    stats = par.start_stats(loss, correct, n, count)
    if stats is None and check is not None:
        check(loss)
    dlogits = criterion.backward(count=count)          # this rank's share of the global mean's gradient
    if n == 0:
        dlogits[...] = 0
    model.backward(dlogits, need_dx=False, after_layer=par.after_layer)
    par.finish_gradients()
    if stats is not None:
        loss_sum, correct = stats.wait()
        loss, n = loss_sum / count, count
        if check is not None:
            check(loss)
    optimizer.step()
    return loss, correct, n


class _StopNow(KeyboardInterrupt):
    """A second Ctrl-C: stop at once, without saving."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT (Ctrl-C) and SIGTERM (docker stop, Kubernetes, Slurm's preemption and time limit)
    ask the loop to save and stop after the current step; ``signum`` is the first one received.

    A second Ctrl-C stops at once, unsaved, for a user who will not wait. A second SIGTERM is
    ignored: a scheduler may send it to every process of a job, and cutting the save short would
    lose what the first one asked to keep; SIGKILL is the way to stop at once."""

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._old = {}

    @property
    def requested(self):
        return self.signum is not None

    def adopt(self, signum):
        """Act on a signal the ranks agreed on (app/distributed.py), received here or not."""
        if signum is not None and self.signum is None:
            self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.HANDLED:
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:
            raise _StopNow(signum)

    def __exit__(self, *exc):
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old = {}
        return False


def signal_name(signum):
    name = signal.Signals(signum).name
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


def _fmt_time(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Trainer:
    """Sets up a run (data, model, optimizer, schedule, optional resume) and runs it.

    Everything that can fail on bad input happens in ``__init__``, before the run directory is
    created; ``run()`` then takes the run directory's lock, trains and returns the process exit
    code (0 done, 128 + the signal's number when SIGINT or SIGTERM stopped it: 130, 143).
    ``stop_after_steps`` stops (and checkpoints) after that many steps of this invocation; it
    exists to test resume and to take a run apart into pieces. ``parallel`` is this rank's strategy
    under mpiexec (app/distributed.py); None: one process. Nothing here talks to the other ranks
    before ``run()``, so a rank that fails in ``__init__`` cannot leave the others waiting.
    """

    def __init__(self, config, run_dir, resume=None, stop_after_steps=None, progress=True, log=None,
                 lr_override=None, parallel=None):
        from alexnet.app import distributed
        from alexnet.app.data import SubsetSource, open_dataset, peek_classes
        from alexnet.engine.comm import Single
        from alexnet.engine.loss import SoftmaxCrossEntropy
        from alexnet.engine.optim import SGD, MilestoneSchedule, PlateauSchedule
        from alexnet.models import registry

        self.config = config
        self.run_dir = run_dir
        self.par = parallel or distributed.Alone(Single(), config.device)
        self.progress = progress and self.par.lead
        self.log = log or (lambda msg: print(msg, flush=True))
        if not self.par.lead:
            self.log = lambda msg: None          # rank 0 speaks for the job
        self.stop_after_steps = stop_after_steps
        self.save_every = parse_save_every(config.save_every) if config.save_every is not None else None
        self.ckpts = ckpt.CheckpointDir(os.path.join(run_dir, "checkpoints"), config.keep)
        # Said first: a live run in the way matters more than anything else about this one.
        rundir.check_not_in_use(run_dir)

        state = None
        if isinstance(resume, tuple):  # (path, arrays, meta) already read by the caller
            resume, *state = resume
        elif resume is not None:
            state = ckpt.load(resume)
        elif self.ckpts.list():
            raise UserError(f"run directory {run_dir} already has checkpoints: continue it with "
                            f"--resume {run_dir}, or choose another --out")

        classes = peek_classes(config.data)
        input_size, resize_size = registry.sizes(config.model)
        self.dataset = open_dataset(config.data, resize_size, strict=config.strict_data)
        if 0 < config.max_train < len(self.dataset.train):
            self.dataset.train = SubsetSource(self.dataset.train, config.max_train)
        config.resolve(len(self.dataset.train))       # the recipe's settings, for this much data
        self.par.check(config)
        self.model = registry.build_model(config.model, len(classes), init=config.init, seed=config.seed,
                                          dropout=config.dropout, dropout_variant=config.dropout_variant,
                                          **config.model_options())
        self.classes = self.dataset.classes
        if self.dataset.size < input_size:
            raise UserError(f"{config.data} holds {self.dataset.size}x{self.dataset.size} images, smaller than "
                            f"{config.model}'s {input_size}x{input_size} crops "
                            f"(prepare it with --model {config.model})")
        self.mean = self.dataset.mean
        self.layer_lr_mults = {}
        if config.init_from and state is None:
            self._start_from(config)
        self.optimizer = None
        self.epoch, self.batch, self.step = 0, 0, 0
        self.best_top1, self.best_epoch = -1.0, 0
        self.epoch_stats = self._new_stats()
        self.resumed_from = None
        self._resumed_step = 0
        self._stuck_run, self._stuck_warned = 0, False
        self._pending, self._recent = self._no_pending(), deque()
        self._clock = time.monotonic
        self._last_save = None  # clock time of this session's last save (--save-every in minutes)
        self._saved_path = None  # the checkpoint this session wrote last
        # on the GPU the loss is read every --log-every steps, not after each step (no host sync)
        self.read_every_step = config.device == "cpu"
        if state is not None:
            self._restore(resume, *state)
        self.model = self.par.build(self.model)      # the towers cut their halves from the (restored) whole
        self.model.to(config.device)
        if state is not None and config.init_from:
            self._fine_tuning_rates(config, loaded=None)
        self.optimizer = SGD(self.model, lr=config.lr, momentum=config.momentum,
                             weight_decay=config.weight_decay, rescale_velocity=config.rescale_velocity,
                             layer_lr_mults=self.layer_lr_mults)
        if config.lr_drops:
            self.schedule = MilestoneSchedule(self.optimizer, config.lr_drops)
        else:
            self.schedule = PlateauSchedule(self.optimizer, factor=0.1, patience=config.patience,
                                            max_drops=config.max_drops)
        if state is not None:
            arrays, meta = state
            velocity = self.par.own_tensors(self.model, ckpt.split(arrays, "optim"))
            self.optimizer.load_state_dict({"lr": meta["lr"], "velocity": velocity})
            self.schedule.load_state_dict(meta["schedule"])
            if lr_override is not None:
                # A deliberate change (e.g. after a divergence): the resumed run is no longer
                # bit-identical to the original, which is the point.
                self.optimizer.lr = float(lr_override)
        self.criterion = SoftmaxCrossEntropy()
        if self.epoch >= config.epochs:
            raise UserError(f"the checkpoint is already at epoch {self.epoch} of {config.epochs}; "
                            f"pass a larger --epochs to train further")

    def _start_from(self, config):
        """Fine-tuning: the checkpoint's weights (a new head when the classes differ), its input
        normalisation, the layers' learning-rate multipliers (app/finetune.py)."""
        from alexnet.app import finetune

        loaded, replaced, mean, scale = finetune.start_from(config.init_from, self.model, config.model,
                                                            config.model_options(), self.classes)
        from alexnet.app.data import fit_mean
        self.mean = fit_mean(mean, self.dataset.size)
        if not math.isclose(scale, config.input_scale):
            # the weights were learned on inputs scaled so: the recipe's scale would feed them others
            config.input_scale = scale
        self._fine_tuning_rates(config, loaded)
        self.log(f"fine-tuning from {config.init_from}: {len(loaded)} layers loaded"
                 + (f", {replaced} new for {len(self.classes)} classes" if replaced else "")
                 + (f", frozen: {', '.join(config.freeze)}" if config.freeze else ""))

    def _fine_tuning_rates(self, config, loaded):
        """The layers' learning-rate multipliers: frozen 0, loaded (None: all but the last layer,
        as when resuming) pretrained_lr_mult, the head 1."""
        from alexnet.app import finetune

        if config.pretrained_lr_mult is None:
            config.pretrained_lr_mult = finetune.DEFAULT_PRETRAINED_LR_MULT
        config.freeze = tuple(finetune.parse_freeze(config.freeze, self.model))
        if loaded is None:
            loaded = finetune.weight_layers(self.model)[:-1]
        self.layer_lr_mults = finetune.learning_rate_multipliers(loaded, config.freeze, config.pretrained_lr_mult)

    @staticmethod
    def _new_stats():
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "steps": 0, "time": 0.0, "wait": 0.0}

    def _restore(self, path, arrays, meta):
        from alexnet.app.data import class_difference

        weights = ckpt.split(arrays, "model")
        ckpt.check_model(path, meta, weights, self.model)
        if meta.get("classes") != self.classes:
            raise UserError(f"checkpoint {path} was trained on other classes than {self.config.data} "
                            f"({class_difference(meta.get('classes') or [], self.classes, 'the checkpoint', 'the data')})")
        if meta.get("train_size") != len(self.dataset.train):
            raise UserError(f"checkpoint {path} was trained on {meta.get('train_size')} images, "
                            f"{self.config.data} now has {len(self.dataset.train)}: resume would not be exact")
        bad = _non_finite(arrays)
        if bad:
            raise UserError(f"checkpoint {path} has non-finite weights ({bad}): the run had already diverged "
                            f"when it was saved; resume from an earlier checkpoint with a lower --lr")
        self.model.load_state_dict(weights)
        self.model.set_rng_state(meta["rng"])
        self.mean = arrays["data/mean"].astype(np.float32)
        self.epoch, self.batch, self.step = meta["epoch"], meta["batch"], meta["step"]
        self.best_top1, self.best_epoch = meta.get("best_top1", -1.0), meta.get("best_epoch", 0)
        self.epoch_stats = meta["epoch_stats"]
        self.resumed_from = path
        self._resumed_step = self.step

    # ---- checkpoints and the run directory -------------------------------------------------------

    def _state(self, val=None):
        """The arrays and metadata of a checkpoint at the current position, on the rank that writes
        (None, None on the others; the towers' halves are gathered, which takes both)."""
        from alexnet.engine import backend

        weights, velocity = self.par.full_state(self.model, self.optimizer.velocity)
        if weights is None:
            return None, None
        arrays = {f"model/{k}": v for k, v in weights.items()}
        arrays.update({f"optim/{k}": backend.to_numpy(v) for k, v in velocity.items()})
        arrays["data/mean"] = np.asarray(self.mean, dtype=np.float32)
        meta = {
            "arch": self.model.arch, "num_classes": self.model.num_classes, "classes": self.classes,
            "input_size": self.model.input_size, "resize_size": self.model.resize_size,
            "input_scale": self.config.input_scale, "dropout": self.config.dropout,
            "dropout_variant": self.config.dropout_variant, "model_options": self.config.model_options(),
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "ranks": self.par.world.size, "parallel": self.config.parallel,
            "lr": self.optimizer.lr, "schedule": self.schedule.state_dict(), "rng": self.model.rng_state(),
            "data_seed": self.config.seed, "train_size": len(self.dataset.train),
            "epoch_stats": self.epoch_stats, "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "val": val, "config": self.config.to_json(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return arrays, meta

    def _save(self, is_best=False, val=None):
        """Write a checkpoint of the current position. Every save point comes through here, so
        every one first reads the steps' losses (on the GPU they are summed on the device: a NaN
        must stop the run, not be saved) and refuses weights that the last update made
        non-finite (the loss that would show it is only computed in the next step)."""
        self._flush()
        arrays, meta = self._state(val)

        def write():
            bad = _non_finite(arrays)
            if bad:
                self._diverged("non-finite", where=f"the weights ({bad})", at=f"epoch {self.epoch + 1}, step {self.step}")
            target = self.ckpts.path_for(self.step)
            try:
                return self.ckpts.save(self.step, arrays, meta, is_best=is_best)
            except OSError as e:
                raise self._write_failed(e, target, self._checkpoint_size(arrays)) from None

        path = self.par.lead_does(write)
        self._saved_path, self._last_save = path, self._clock()
        return path

    def _checkpoint_size(self, arrays):
        """Bytes the next checkpoint takes: the size of the last one written, else an estimate."""
        latest = self.ckpts.latest()
        try:
            return os.path.getsize(latest) if latest else ckpt.estimate_size(arrays)
        except OSError:
            return ckpt.estimate_size(arrays)

    def _newest_good(self):
        return self.ckpts.latest() or self.resumed_from

    def _write_failed(self, error, path, needed):
        """The UserError for a write that failed: the file, the space it needs, what survives."""
        if isinstance(error.filename, str):
            path = error.filename
        return UserError(rundir.write_failed_message(path, error, needed, self._newest_good(), self._resume_hint))

    def _append_log(self, record):
        path = os.path.join(self.run_dir, "log.jsonl")
        line = json.dumps(record)

        def append():
            try:
                rundir.append_line(path, line)
            except OSError as e:
                raise self._write_failed(e, path, len(line) + 1) from None

        self.par.lead_does(append)

    def _resume_hint(self, path):
        return f"alexnet train --resume {path}"

    def _open_run(self):
        """With the lock held: check again what __init__ checked without it (another trainer may
        have written here in between), remove what killed writes left, write config.json."""
        cfg = self.config
        later = [p for p in self.ckpts.list() if ckpt.CheckpointDir.step_of(p) > self._resumed_step]
        if later and self.resumed_from is None:
            raise UserError(f"run directory {self.run_dir} already has checkpoints: continue it with "
                            f"--resume {self.run_dir}, or choose another --out")
        if later:
            raise UserError(f"{self.run_dir} already has a later checkpoint ({os.path.basename(later[-1])}) "
                            f"than {os.path.basename(self.resumed_from)}: continue from the latest, or give "
                            f"--out NEW_RUN_DIR to branch off from this one")
        count, size = rundir.remove_stale_temporaries(self.run_dir)
        if count:
            self.log(f"removed {count} temporary file{'s' * (count > 1)} ({rundir.fmt_bytes(size)}) left in "
                     f"{self.run_dir} by writes that a kill cut short")
        log_path = os.path.join(self.run_dir, "log.jsonl")
        config_path = os.path.join(self.run_dir, "config.json")
        try:
            rundir.end_cut_line(log_path)
            if self.resumed_from is None or not os.path.exists(config_path):
                text = json.dumps(cfg.to_json(), indent=1).encode()
                ckpt.atomic_write(config_path, lambda f: f.write(text))
        except OSError as e:
            raise self._write_failed(e, config_path, 4096) from None

    # ---- the loop ----------------------------------------------------------------------------------

    def run(self):
        from alexnet.engine import workspace

        try:
            with _Signals() as signals, self._run_lock(), quiet_numerics():
                self.par.lead_does(self._open_run)
                self.par.attach(self.model)
                return self._run(signals)
        except _StopNow as e:
            newest = self._newest_good()
            self.log(f"second {signal_name(e.signum)}: stopped at once, without saving"
                     + (f"; the newest checkpoint is {newest} (resume with: {self._resume_hint(newest)})"
                        if newest else "; no checkpoint was written"))
            return 128 + e.signum
        finally:
            workspace.release()        # the pooled arrays of the training steps go back to the system

    @contextlib.contextmanager
    def _run_lock(self):
        """Rank 0 holds the run directory's lock for the run; every rank learns whether it got it."""
        lock = rundir.RunLock(self.run_dir, self.log)
        self.par.lead_does(lambda: lock.__enter__() and None)   # the others get None, not the lock
        try:
            yield
        finally:
            if self.par.lead:
                lock.__exit__(None, None, None)

    def _agreed_signal(self, signals):
        """Whether a signal stops the run here: on several ranks, whether any rank received one."""
        signum, _ = self.par.agree(signals.signum, False)
        signals.adopt(signum)
        return signum is not None

    def _announce(self):
        cfg, ds = self.config, self.dataset
        self.log(f"data: {ds.root} ({ds.kind}), {len(self.classes)} classes, {len(ds.train)} train / "
                 f"{len(ds.val)} val images" + (f", {len(ds.skipped)} files skipped (e.g. {ds.skipped[0][0]}: "
                                                f"{ds.skipped[0][1]})" if ds.skipped else ""))
        self.log(f"model: {cfg.model} ({self.model.num_params():,} parameters, init {cfg.init}) on {cfg.device}; "
                 f"batch {cfg.batch_size}, lr {self.optimizer.lr:g}, momentum {cfg.momentum:g}, "
                 f"weight decay {cfg.weight_decay:g}, {cfg.epochs} epochs")
        if self.par.describe():
            self.log(self.par.describe())
        if self.resumed_from:
            self.log(f"resumed from {self.resumed_from} at epoch {self.epoch + 1}, batch {self.batch}, step {self.step}")
        self.log(f"run directory: {self.run_dir}")

    def _run(self, signals):
        cfg = self.config
        self._announce()
        t_start = time.perf_counter()
        start_step = self.step
        self._last_save = self._clock()
        while self.epoch < cfg.epochs:
            if self._agreed_signal(signals):
                # Before the first step, or while the last epoch's checkpoint was being written.
                if self.step > start_step:
                    return self._interrupted(signals, f"after epoch {self.epoch}", self._saved_path)
                return self._interrupted(signals, "before the first step")
            stopped = self._train_epoch(signals, start_step)
            if stopped is not None:
                return stopped
            if not self._end_epoch(signals):
                # A signal during validation: the epoch's steps are all done; save them and
                # validate on resume (the loop finds no batch left and goes straight to it).
                return self._interrupted(signals, f"during the validation of epoch {self.epoch + 1}", self._save())
        self._summary(time.perf_counter() - t_start)
        return 0

    def _interrupted(self, signals, where, path=None):
        """Say where a signal stopped the run and how to continue; the exit code 128 + signum."""
        name = signal_name(signals.signum)
        if path is not None:
            self.log(f"interrupted by {name} {where}; saved {path}")
        else:
            path = self._newest_good()
            self.log(f"interrupted by {name} {where}: nothing new to save"
                     + ("" if path else " (no checkpoint was written)"))
        if path is not None:
            self.log(f"resume with: {self._resume_hint(path)}")
        return 128 + signals.signum

    def _train_epoch(self, signals, start_step):
        """Train from (self.epoch, self.batch) to the end of the epoch. Returns None when the
        epoch is done, or an exit code when the run stopped (a signal or stop_after_steps).

        On the GPU a step never waits for the device: the loss and the count of correct
        predictions are summed on the device and read (and checked for NaN) every --log-every
        steps and wherever the run saves; on the CPU they are read after every step."""
        from tqdm import tqdm

        from alexnet.app.data import Prefetcher, TrainBatches

        cfg = self.config
        batches = TrainBatches(self.dataset.train, cfg.batch_size, self.model.input_size, self.mean,
                               cfg.seed, self.epoch, cfg.input_scale, augment=cfg.augment, part=self.par.train_part)
        self._recent = deque()
        self._pending = self._no_pending()
        bar = tqdm(total=batches.num_batches, initial=self.batch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=not self.progress, file=sys.stderr, dynamic_ncols=True, leave=True)
        loader = Prefetcher(batches, range(self.batch, batches.num_batches), cfg.workers)
        t_last = time.perf_counter()
        try:
            for b, (x, labels), wait in loader:
                count = self.par.batch_count(len(labels), self.model)    # the global batch's images
                if count == 0:
                    self.batch = b + 1
                    continue
                self._train_step(x, labels, count)
                self.batch = b + 1
                now = time.perf_counter()
                self.epoch_stats["time"] += now - t_last
                self.epoch_stats["wait"] += wait
                t_last = now
                log_now = self.step % cfg.log_every == 0
                stop_now = self.stop_after_steps is not None and self.step - start_step >= self.stop_after_steps
                signum, save_now = self.par.agree(signals.signum, self._periodic_save_due(batches.num_batches))
                signals.adopt(signum)
                if self.read_every_step or log_now or stop_now or save_now or signals.requested:
                    self._flush()
                    bar.set_postfix_str(self._bar_text(), refresh=False)
                bar.update(1)
                if log_now:
                    self._append_log({"type": "step", "epoch": self.epoch + 1, "batch": self.batch, "step": self.step,
                                      "lr": self.optimizer.lr, **self._recent_means()})
                if signals.requested or stop_now:
                    loader.close()
                    bar.close()
                    return self._stop_mid_epoch(signals, batches.num_batches)
                if save_now:
                    self._save_mid_epoch(f"--save-every {cfg.save_every}")
            self._flush()
        finally:
            loader.close()
            bar.close()
        return None

    def _train_step(self, x, labels, count):
        """One SGD step (train_step); its loss and correct count join the pending sums (device
        scalars on the GPU; on data-parallel ranks on the CPU, already summed over the ranks)."""
        loss, correct, n = train_step(self.model, self.criterion, self.optimizer, self.par, x, labels, count,
                                      self.config.device, check=self._check_loss if self.read_every_step else None)
        self.step += 1
        pending = self._pending
        # a rank's share of the step's mean loss: the flush sums the shares over the ranks
        pending["loss"] = pending["loss"] + (loss if n == count else loss * (n / count))
        pending["loss_n"] = pending["loss_n"] + loss * n
        pending["correct"] = pending["correct"] + correct
        pending["seen"] += n
        pending["steps"] += 1

    def _check_loss(self, loss):
        if not math.isfinite(loss):
            self._diverged(loss)

    def _bar_text(self):
        stats = self.epoch_stats
        busy = max(stats["time"], 1e-9)
        return (f"loss {stats['loss_sum'] / max(stats['seen'], 1):.3f}, {stats['seen'] / busy:.0f} img/s, "
                f"data wait {100 * stats['wait'] / busy:.0f}%")

    def _periodic_save_due(self, num_batches):
        """--save-every: every N global steps (the same steps whatever the run's sessions), or
        when N seconds have passed since this session's last save. Not at an epoch's last batch:
        the end of the epoch saves right after validation."""
        if self.save_every is None or self.batch >= num_batches:
            return False
        steps, seconds = self.save_every
        if steps is not None:
            return self.step % steps == 0
        return self._clock() - self._last_save >= seconds

    def _save_mid_epoch(self, why):
        path = self._save()
        self._append_log({"type": "checkpoint", "epoch": self.epoch + 1, "batch": self.batch, "step": self.step,
                          "path": path, "why": why})
        return path

    def _stop_mid_epoch(self, signals, num_batches):
        where = f"at epoch {self.epoch + 1}, batch {self.batch}/{num_batches}, step {self.step}"
        if signals.requested:
            path = self._save_mid_epoch(signal.Signals(signals.signum).name)
            return self._interrupted(signals, where, path)
        path = self._save_mid_epoch("--stop-after-steps")
        self.log(f"stopped after {self.stop_after_steps} steps {where}; saved {path}")
        self.log(f"resume with: {self._resume_hint(path)}")
        return 0

    @staticmethod
    def _no_pending():
        return {"loss": 0.0, "loss_n": 0.0, "correct": 0, "seen": 0, "steps": 0}

    def _flush(self):
        """Read the steps' loss and correct counts summed since the last flush (on the GPU this is
        the one wait for the device), stop on a NaN, and add them to the epoch's statistics."""
        pending, self._pending = self._pending, self._no_pending()
        if pending["steps"] == 0:
            return
        sums = self.par.combine(np.array([float(pending["loss"]), float(pending["loss_n"]),
                                          float(pending["correct"]), float(pending["seen"])]))
        loss_sum, loss_n = float(sums[0]), float(sums[1])
        pending["correct"], pending["seen"] = int(sums[2]), int(sums[3])
        if not math.isfinite(loss_n):
            first = self.step - pending["steps"] + 1
            self._diverged(loss_n / pending["seen"], where=f"the mean loss of steps {first}-{self.step}",
                           at=f"epoch {self.epoch + 1}")
        stats = self.epoch_stats
        stats["loss_sum"] += loss_n
        stats["correct"] += int(pending["correct"])
        stats["seen"] += pending["seen"]
        stats["steps"] += pending["steps"]
        self._recent.append((loss_sum, pending["steps"], int(pending["correct"]), pending["seen"]))
        self._watch_stuck(loss_sum / pending["steps"], math.log(self.model.num_classes), pending["steps"])

    def _recent_means(self):
        """{"loss": mean loss per step, "train_top1": share of correct predictions} over the last
        --log-every steps (as flushed; the training-mode forward's, dropout and augmentation on)."""
        loss, steps, correct, seen = 0.0, 0, 0, 0
        for entry in reversed(self._recent):
            if steps >= self.config.log_every:
                break
            loss, steps, correct, seen = loss + entry[0], steps + entry[1], correct + entry[2], seen + entry[3]
        while len(self._recent) > self.config.log_every:
            self._recent.popleft()
        return {"loss": loss / max(steps, 1), "train_top1": correct / max(seen, 1)}

    def _watch_stuck(self, loss, ln_classes, steps=1):
        """Warn once when the loss has sat at ln(classes), chance level, for a long stretch: the
        network outputs a uniform distribution and is not learning. `loss` is the mean of `steps`
        steps."""
        if self._stuck_warned:
            return
        near = abs(loss - ln_classes) < 0.02 * ln_classes
        self._stuck_run = self._stuck_run + steps if near else 0
        if self._stuck_run >= 300:
            self._stuck_warned = True
            if self.config.init == "paper":
                hint = ("with the 'paper' init preset this is a known stall (bias 1 in fc6/fc7 on "
                        "N(0, 0.01) weights): try --init caffe")
            else:
                hint = f"the '{self.config.init}' init preset may not suit this data: try another --init or a lower --lr"
            self.log(f"warning: the loss has stayed at ln({self.model.num_classes}) = {ln_classes:.3f} "
                     f"(chance) for {self._stuck_run} steps: the network is not learning; {hint}")

    def _diverged(self, loss, where="the loss", at=None):
        latest = self.ckpts.latest()
        lower = f"--lr {self.optimizer.lr / 10:g}"
        if latest:
            keep = (f"the last good checkpoint is {latest} (resume from it with a lower --lr: "
                    f"{self._resume_hint(latest)} {lower})")
        elif self.resumed_from:
            keep = (f"this session has written no checkpoint; the last good one is the checkpoint it resumed "
                    f"from, {self.resumed_from} (try: {self._resume_hint(self.resumed_from)} {lower})")
        else:
            keep = "no checkpoint was written yet; try a lower --lr"
        at = at or f"epoch {self.epoch + 1}, step {self.step + 1}"
        raise CollectiveError(f"training diverged: {where} became {loss} at {at}; stopped without saving. {keep}")

    def _end_epoch(self, signals):
        """Validate, log and checkpoint the finished epoch. Returns False when a signal cut the
        validation short (nothing logged or saved yet)."""
        cfg = self.config
        stats = self.epoch_stats
        val = evaluate(self.model, self.dataset.val, self.model.input_size, self.mean,
                       batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device, progress=self.progress,
                       scale=cfg.input_scale, stop=lambda: self._agreed_signal(signals),
                       part=self.par.eval_part, combine=self.par.eval_sums)
        if val is None:
            return False
        if not math.isfinite(val["loss"]):
            # Weights gone to inf/NaN in the epoch's last steps must not become a checkpoint.
            self._diverged(val["loss"], where="the validation loss")
        lr_used = self.optimizer.lr
        dropped = self.schedule.step(1.0 - val["top1"], epoch=self.epoch + 1)
        self.epoch += 1
        self.batch = 0
        is_best = val["top1"] > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = val["top1"], self.epoch
        seen = max(stats["seen"], 1)
        bad = len(getattr(self.dataset.train, "bad", {})) + len(getattr(self.dataset.val, "bad", {}))
        record = {
            "type": "epoch", "epoch": self.epoch, "step": self.step, "lr": lr_used,
            "train_loss": stats["loss_sum"] / seen, "train_top1": stats["correct"] / seen,
            "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
            "images_per_s": stats["seen"] / max(stats["time"], 1e-9),
            "data_wait": stats["wait"] / max(stats["time"], 1e-9),
            "unreadable_images": bad, "time": time.time(),
        }
        self.epoch_stats = self._new_stats()
        # The record goes first: should the checkpoint then fail (a full disk), the resumed run
        # redoes this epoch and logs it again, and readers keep an epoch's last record. The other
        # order would leave a checkpoint whose epoch the log never mentions.
        self._append_log(record)
        self._save(is_best=is_best, val=val)
        self.log(f"epoch {self.epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f} top-1 "
                 f"{100 * record['train_top1']:.1f}% | val loss {val['loss']:.4f} top-1 {100 * val['top1']:.1f}% "
                 f"top-5 {100 * val['top5']:.1f}% | lr {lr_used:g} | {record['images_per_s']:.0f} img/s, "
                 f"data wait {100 * record['data_wait']:.0f}%"
                 + (f" | {bad} unreadable images skipped" if bad else "")
                 + (" | best" if is_best else ""))
        if dropped:
            self.log(f"validation error stopped improving: learning rate divided by 10 to {self.optimizer.lr:g}")
        return True

    def _summary(self, seconds):
        ds = self.dataset
        bad = {**getattr(ds.train, "bad", {}), **getattr(ds.val, "bad", {})}
        self.log(f"done: {self.config.epochs} epochs, {self.step} steps in {_fmt_time(seconds)} (this session); "
                 f"best val top-1 {100 * self.best_top1:.1f}% at epoch {self.best_epoch} "
                 f"(chance {100 / self.model.num_classes:.1f}%)")
        if bad:
            first = next(iter(bad.items()))
            self.log(f"skipped {len(bad)} unreadable images, e.g. {first[0]}: {first[1]}")
        self.log(f"checkpoints: {self.ckpts.directory} (best: {self.ckpts.best_path})")
        self.log(f"evaluate with 10 crops: alexnet eval --checkpoint {self.ckpts.best_path} --data {ds.root} --ten-crop")
        self.log(f"plot the curves and conv1 filters: alexnet plot {self.run_dir}")


def _non_finite(arrays):
    """'conv1.W: 12 of 34848 NaN/inf, ...' for the weights and momentum buffers that are not all
    finite; '' when every one is."""
    bad = []
    for name, a in arrays.items():
        if name.startswith(("model/", "optim/")) and np.issubdtype(a.dtype, np.floating):
            count = a.size - int(np.count_nonzero(np.isfinite(a)))
            if count:
                bad.append(f"{name}: {count} of {a.size} NaN/inf")
    return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
