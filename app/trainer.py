"""The training loop: epochs of SGD steps with background loading, validation, the LR schedule,
checkpoints, exact resume, signals and divergence handling.

    train_step        one step, as llm.c writes it: forward, loss, backward, gradient exchange, update
    Trainer           sets a run up (data, model, optimizer, schedule, a resume) and runs its epochs

The rest lives in units of its own: the configuration (app/config.py), how images become inputs
(app/preprocess.py), the run's files and checkpoints (app/run_files.py, app/run_state.py), its
statistics (app/run_stats.py), validation (app/evaluate.py), signals (app/signals.py), the GPU's
input pipeline and CUDA-graph steps (app/gpu_input.py), and what
differs under `mpiexec -n N` (app/distributed.py: every rank runs this loop; the strategy says
which slice of a batch each loads, how gradients and statistics are summed, what the ranks decide
together, and that rank 0 alone writes). One process and N ranks at the same --batch-size are the
same training (docs/distributed.md).

Exactness of resume rests on three things: every random draw is either owned by the model (the
dropout layers' mask counters, saved through ``model.rng_state()``) or a pure function of
(seed, epoch, batch) in app/data.py; a checkpoint stores the position (epoch, next batch) and
all optimizer/schedule state; the NumPy ops run on the same shapes in the same order. A run
stopped after any step and resumed therefore ends with the same bits as one that never stopped,
which is why a checkpoint can be written after any step: at the end of an epoch, every
--save-every steps or minutes, on SIGINT/SIGTERM, or after --stop-after-steps.
"""

import math
import signal
import sys
import time

import numpy as np

from alexnet.app import run_state
from alexnet.app.config import parse_save_every
from alexnet.app.distributed import CollectiveError
from alexnet.app.errors import UserError
from alexnet.app.evaluate import evaluate, quiet_numerics
from alexnet.app.gpu_input import loader_for, step_runner
from alexnet.app.run_files import RunFiles, resume_hint
from alexnet.app.run_stats import StallWatch, TrainingStats
from alexnet.app.signals import StopNow, StopSignals, signal_name


def train_step(model, criterion, optimizer, strategy, x, labels, count, device="cpu", check=None):
    """One SGD step on this rank's `len(labels)` images of a global batch of `count` (one process:
    the whole batch). Returns (loss, correct, n): this rank's mean loss, correct count and images,
    or, where the strategy sums them every step (data-parallel ranks on the CPU), the global batch's.
    `check(loss)` sees the loss before any weight changes (the trainer stops on a NaN there).
    Where no gradient is exchanged (one process, or a tower), each layer is updated right after its
    backward (SGD.update_layer), while its gradients are in cache: the loss is checked before the
    backward then. The trainer and bench/scaling.py run this same step."""
    n = len(labels)
    x, labels = _on_device(x, labels, device)
    logits = model.forward(x, train=True)                                   # forward
    loss = criterion.forward(logits, labels)                                # loss
    correct = (logits.argmax(axis=1) == labels).sum() if n else 0
    totals = strategy.step_totals(loss, correct, n, count)                  # summed over ranks, if every step
    update_now = strategy.after_layer is None
    if check is not None and update_now:
        check(loss)
    dlogits = criterion.backward(count=count)        # this rank's share of the gradient of the global mean
    if n == 0:
        dlogits[...] = 0
    model.backward(dlogits, need_dx=False, after_layer=optimizer.update_layer if update_now else strategy.after_layer)
    strategy.finish_gradients()                                             # gradient exchange
    loss, correct, n = totals.result()
    if check is not None and not update_now:
        check(loss)
    optimizer.step()                                                        # update (what backward left)
    return loss, correct, n


def _on_device(x, labels, device):
    """The batch on the model's device. Where none of a short last batch is this rank's, a stand-in
    image keeps its layers in step with the other ranks (the dropout counters); its gradient is
    zeroed (train_step), so it contributes nothing."""
    from alexnet.engine import backend

    if len(labels) == 0:
        x, labels = np.zeros((1,) + x.shape[1:], x.dtype), np.zeros(1, labels.dtype)
    return backend.to_device(x, device), backend.to_device(labels, device)


def _count(n, noun):
    """'1 epoch', '2 epochs'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


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
    ``resume`` is a checkpoint path, or (path, arrays, meta) already read. ``stop_after_steps``
    stops (and checkpoints) after that many steps of this invocation; it exists to test resume and
    to take a run apart into pieces. ``strategy`` is this rank's under mpiexec (app/distributed.py);
    None: one process. Nothing here talks to the other ranks before ``run()``, so a rank that fails
    in ``__init__`` cannot leave the others waiting.
    """

    def __init__(self, config, run_dir, resume=None, stop_after_steps=None, progress=True, log=None,
                 lr_override=None, strategy=None):
        from alexnet.app import distributed
        from alexnet.app.rundir import check_not_in_use
        from alexnet.engine.comm import Single
        from alexnet.engine.loss import SoftmaxCrossEntropy

        self.config, self.run_dir, self.stop_after_steps = config, run_dir, stop_after_steps
        self.strategy = strategy or distributed.Alone(Single(), config.device)
        self.progress = progress and self.strategy.lead
        self.log = (log or (lambda msg: print(msg, flush=True))) if self.strategy.lead else (lambda msg: None)
        self.save_every = parse_save_every(config.save_every) if config.save_every is not None else None
        self.files = RunFiles(run_dir, config.keep, self.strategy, lambda msg: self.log(msg))
        check_not_in_use(run_dir)       # said first: a live run in the way matters more than anything else
        state = self._read_resume(resume)
        self.dataset = self._open_data()
        self.model, self.prep = self._build_model()
        self.position, self.stats = run_state.Position(), TrainingStats(config.log_every)
        layer_lr_mults = {}
        if state is None and config.init_from:
            layer_lr_mults = self._start_from()
        elif state is not None:
            layer_lr_mults = self._restore(*state)
        self.model = self.strategy.build(self.model).to(config.device, config.precision)  # towers: cut from the whole
        self.optimizer, self.schedule = self._optimizer(layer_lr_mults)
        if state is not None:
            run_state.restore_optimizer(*state[1:], self.optimizer, self.schedule,
                                        lambda tensors: self.strategy.own_tensors(self.model, tensors))
            if lr_override is not None:
                # A deliberate change (e.g. after a divergence): the resumed run is no longer
                # bit-identical to the original, which is the point.
                self.optimizer.lr = float(lr_override)
        self.criterion = SoftmaxCrossEntropy() if not config.layers_from else self.model.criterion()
        self._run_step = step_runner(self._eager_step, config, self.strategy, self.model, self.log)
        self.watch = self._gradient_watch()
        self.stall = StallWatch(self.model.num_classes, config.init, lambda msg: self.log(msg))
        # on the GPU the loss is read every --log-every steps, not after each step (no host sync)
        self.read_every_step = config.device == "cpu"
        self._clock = time.monotonic
        self._last_save = None      # clock time of this session's last save (--save-every in minutes)
        self._saved_path = None     # the checkpoint this session wrote last
        if self.position.epoch >= config.epochs:
            raise UserError(f"the checkpoint is already at epoch {self.position.epoch} of {config.epochs}; "
                            f"pass a larger --epochs to train further")

    # ---- setting up ----------------------------------------------------------------------------------
    def _read_resume(self, resume):
        """(path, arrays, meta) of the checkpoint to continue from, or None for a new run."""
        from alexnet.app import checkpoint as ckpt

        if resume is None:
            self.files.refuse_a_finished_run()
            return None
        path, arrays, meta = resume if isinstance(resume, tuple) else (resume, *ckpt.load(resume))
        self.files.resumed_from, self.files.resumed_step = path, meta["step"]
        return path, arrays, meta

    def _open_data(self):
        """The dataset (a subset with --max-train); the recipe's settings for its size."""
        from alexnet.app.data import SubsetSource, open_dataset
        from alexnet.models.registry import sizes

        cfg = self.config
        input_size, resize_size = sizes(cfg.model)
        dataset = open_dataset(cfg.data, resize_size, strict=cfg.strict_data)
        if 0 < cfg.max_train < len(dataset.train):
            dataset.train = SubsetSource(dataset.train, cfg.max_train)
        if dataset.image_side < input_size:
            side = dataset.image_side
            raise UserError(f"{cfg.data} holds {side}x{side} images, smaller than {cfg.model}'s "
                            f"{input_size}x{input_size} crops (prepare it with --model {cfg.model})")
        cfg.resolve(len(dataset.train))       # the recipe's settings, for this much data
        self.strategy.check(cfg)
        return dataset

    def _build_model(self):
        """(the model, its preprocessing: the training mean, the input scale, its sizes)."""
        from alexnet.app.preprocess import Preprocessing
        from alexnet.models.registry import build_model

        cfg = self.config
        try:
            model = build_model(cfg.model, len(self.dataset.classes), init=cfg.init, seed=cfg.seed,
                                dropout=cfg.dropout, dropout_variant=cfg.dropout_variant, **cfg.model_options())
        except ValueError as e:      # options that build no network, e.g. a pool window larger than its input
            raise UserError(f"cannot build {cfg.model} with these options: {e}") from None
        if cfg.layers_from:         # the learner's own passes (app/learner_network.py): their files run here
            from alexnet.app.learner_network import LearnerNetwork

            model = LearnerNetwork(model, cfg.layers_from, log=self.log)
        prep = Preprocessing(self.dataset.mean, cfg.input_scale, model.resize_size, model.input_size)
        return model, prep.for_side(self.dataset.image_side)

    def _start_from(self):
        """Fine-tuning: the checkpoint's weights (a new head when the classes differ), its input
        normalisation; returns the layers' learning-rate multipliers (app/finetune.py)."""
        from alexnet.app import finetune

        cfg, classes = self.config, self.dataset.classes
        loaded, replaced, prep = finetune.start_from(cfg.init_from, self.model, cfg.model, cfg.model_options(), classes)
        # the weights were learned on inputs normalised so: the recipe's scale would feed them others
        self.prep = prep.for_side(self.dataset.image_side)
        cfg.input_scale = prep.input_scale
        if cfg.pretrained_lr_mult is None:
            cfg.pretrained_lr_mult = finetune.DEFAULT_PRETRAINED_LR_MULT
        frozen = finetune.parse_freeze(cfg.freeze, self.model)
        self.log(f"fine-tuning from {cfg.init_from}: {len(loaded)} layers loaded"
                 + (f", {replaced} new for {len(classes)} classes" if replaced else "")
                 + (f", frozen: {', '.join(frozen)}" if frozen else ""))
        return finetune.learning_rate_multipliers(loaded, frozen, cfg.pretrained_lr_mult, replaced)

    def _restore(self, path, arrays, meta):
        """Continue from a checkpoint: its weights, position, statistics and training mean; returns
        its layers' learning-rate multipliers (fine-tuning's)."""
        from alexnet.app import finetune

        run_state.check_resumable(path, arrays, meta, self.model, self.dataset, self.config)
        self.position, epoch_stats = run_state.restore_model(arrays, meta, self.model)
        self.stats = TrainingStats(self.config.log_every, epoch_stats)
        self.prep.mean = arrays["data/mean"].astype(np.float32)
        if "layer_lr_mults" in meta or not self.config.init_from:
            return meta.get("layer_lr_mults", {})
        # a fine-tuning checkpoint from before the multipliers were saved: all loaded but the head
        cfg = self.config
        loaded = finetune.weight_layers(self.model)[:-1]
        return finetune.learning_rate_multipliers(loaded, finetune.parse_freeze(cfg.freeze, self.model),
                                                  cfg.pretrained_lr_mult)

    def _optimizer(self, layer_lr_mults):
        from alexnet.engine.optim import SGD, MilestoneSchedule, PlateauSchedule

        cfg = self.config
        optimizer = SGD(self.model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                        rescale_velocity=cfg.rescale_velocity, layer_lr_mults=layer_lr_mults)
        if cfg.lr_drops:
            return optimizer, MilestoneSchedule(optimizer, cfg.lr_drops)
        return optimizer, PlateauSchedule(optimizer, factor=0.1, patience=cfg.patience, max_drops=cfg.max_drops)

    def _gradient_watch(self):
        """Per-layer gradient statistics at every step record, and TensorBoard (app/grad_stats.py)."""
        from alexnet.app.grad_stats import GradientWatch
        from alexnet.app.tensorboard_log import TensorBoardLog

        board = TensorBoardLog(self.run_dir, self.strategy.lead) if self.config.tensorboard else None
        return GradientWatch(self.model, self.optimizer, self.files.append_log, self.strategy.model_sums, board)

    @property
    def step(self):
        return self.position.step

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self):
        from alexnet.engine import workspace

        try:
            with StopSignals() as signals, self.files.locked(), quiet_numerics():
                self.files.open(self.config)
                self.strategy.attach(self.model)
                return self._run(signals)
        except StopNow as e:
            newest = self.files.newest_good()
            self.log(f"second {signal_name(e.signum)}: stopped at once, without saving"
                     + (f"; the newest checkpoint is {newest} (resume with: {resume_hint(newest)})"
                        if newest else "; no checkpoint was written"))
            return 128 + e.signum
        finally:
            self.watch.close()
            workspace.release()        # the pooled arrays of the training steps go back to the system

    def _run(self, signals):
        cfg, pos = self.config, self.position
        self._announce()
        t_start = time.perf_counter()
        start_step = pos.step
        self._last_save = self._clock()
        while pos.epoch < cfg.epochs:
            if self._agreed_signal(signals):
                # Before the first step, or while the last epoch's checkpoint was being written.
                if pos.step > start_step:
                    return self._interrupted(signals, f"after epoch {pos.epoch}", self._saved_path)
                return self._interrupted(signals, "before the first step")
            stopped = self._train_epoch(signals, start_step)
            if stopped is not None:
                return stopped
            if not self._end_epoch(signals):
                # A signal during validation: the epoch's steps are all done; save them and
                # validate on resume (the loop finds no batch left and goes straight to it).
                return self._interrupted(signals, f"during the validation of epoch {pos.epoch + 1}", self._save())
        self._summary(time.perf_counter() - t_start)
        return 0

    def _train_epoch(self, signals, start_step):
        """Train from the position to the end of its epoch. Returns None when the epoch is done, or
        an exit code when the run stopped (a signal or stop_after_steps)."""
        from tqdm import tqdm

        from alexnet.app.data import TrainBatches

        cfg, pos = self.config, self.position
        batches = TrainBatches(self.dataset.train, cfg.batch_size, self.prep, cfg.seed, pos.epoch,
                               augment=cfg.augment, part=self.strategy.train_part)
        bar = tqdm(total=batches.num_batches, initial=pos.batch, desc=f"epoch {pos.epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=not self.progress, file=sys.stderr, dynamic_ncols=True, leave=True)
        loader = loader_for(batches, range(pos.batch, batches.num_batches), cfg.workers, cfg.device, self.model)
        self.stats.start_epoch()
        t_last = time.perf_counter()
        try:
            for b, (x, labels), wait in loader:
                count = self.strategy.batch_count(len(labels), self.model)    # the global batch's images
                if count:
                    self._train_step(x, labels, count)
                pos.batch = b + 1
                if not count:
                    continue
                now = time.perf_counter()
                self.stats.add_time(now - t_last, wait)
                t_last = now
                stopped = self._after_step(signals, bar, batches.num_batches, start_step)
                if stopped is not None:
                    return stopped
            self._flush()
        finally:
            loader.close()
            bar.close()
        return None

    def _train_step(self, x, labels, count):
        """One SGD step (train_step); its loss and correct count join the statistics' pending sums
        (device scalars on the GPU; on data-parallel ranks on the CPU, already summed over the ranks)."""
        loss, correct, n = self._run_step(x, labels, count)
        self.position.step += 1
        self.stats.add_step(loss, correct, n, count)

    def _eager_step(self, x, labels, count):
        """train_step on this run's model; on one GPU it may run captured as a CUDA graph (_run_step)."""
        return train_step(self.model, self.criterion, self.optimizer, self.strategy, x, labels, count,
                          self.config.device, check=self._check_loss if self.read_every_step else None)

    def _after_step(self, signals, bar, num_batches, start_step):
        """What a step may call for: reading the statistics, a step record, a periodic save, or
        stopping (a signal or --stop-after-steps: the exit code)."""
        cfg, pos = self.config, self.position
        log_now = pos.step % cfg.log_every == 0
        stop_now = self.stop_after_steps is not None and pos.step - start_step >= self.stop_after_steps
        signum, save_now = self.strategy.agree(signals.signum, self._periodic_save_due(num_batches))
        signals.adopt(signum)
        if self.read_every_step or log_now or stop_now or save_now or signals.requested:
            self._flush()
            bar.set_postfix_str(self.stats.bar_text(), refresh=False)
        bar.update(1)
        if log_now:
            self._log_record({"type": "step", "epoch": pos.epoch + 1, "batch": pos.batch, "step": pos.step,
                              "lr": self.optimizer.lr, **self.stats.recent_means()})
        if signals.requested or stop_now:
            return self._stop_mid_epoch(signals, num_batches)
        if save_now:
            self._save_mid_epoch(f"--save-every {cfg.save_every}")
        return None

    def _log_record(self, record):
        """A record for log.jsonl, seen by the gradient watch, which adds its own at step records."""
        self.files.append_log(record)
        self.watch.saw(record)

    def _check_loss(self, loss):
        if not math.isfinite(loss):
            self._diverged(loss)

    def _flush(self):
        """Read the steps' statistics since the last flush; stop on a NaN; watch for a stall."""
        flushed = self.stats.flush(self.strategy.combine)
        if flushed is None:
            return
        loss, steps = flushed
        if not math.isfinite(loss):
            pos = self.position
            self._diverged(loss, where=f"the mean loss of steps {pos.step - steps + 1}-{pos.step}",
                           at=f"epoch {pos.epoch + 1}")
        self.stall.see(loss, steps)

    def _periodic_save_due(self, num_batches):
        """--save-every: every N global steps (the same steps whatever the run's sessions), or
        when N seconds have passed since this session's last save. Not at an epoch's last batch:
        the end of the epoch saves right after validation."""
        if self.save_every is None or self.position.batch >= num_batches:
            return False
        steps, seconds = self.save_every
        if steps is not None:
            return self.position.step % steps == 0
        return self._clock() - self._last_save >= seconds

    def _agreed_signal(self, signals):
        """Whether a signal stops the run here: on several ranks, whether any rank received one."""
        signum, _ = self.strategy.agree(signals.signum, False)
        signals.adopt(signum)
        return signum is not None

    # ---- the end of an epoch -------------------------------------------------------------------------
    def _end_epoch(self, signals):
        """Validate, log and checkpoint the finished epoch. Returns False when a signal cut the
        validation short (nothing logged or saved yet)."""
        cfg, pos = self.config, self.position
        val = evaluate(self.model, self.dataset.val, self.prep, batch_size=cfg.batch_size, workers=cfg.workers,
                       device=cfg.device, progress=self.progress, stop=lambda: self._agreed_signal(signals),
                       part=self.strategy.eval_part, combine=self.strategy.eval_sums)
        if val is None:
            return False
        if not math.isfinite(val["loss"]):
            # Weights gone to inf/NaN in the epoch's last steps must not become a checkpoint.
            self._diverged(val["loss"], where="the validation loss")
        lr_used = self.optimizer.lr
        dropped = self.schedule.step(1.0 - val["top1"], epoch=pos.epoch + 1)
        pos.epoch, pos.batch = pos.epoch + 1, 0
        is_best = val["top1"] > pos.best_top1
        if is_best:
            pos.best_top1, pos.best_epoch = val["top1"], pos.epoch
        bad = len(getattr(self.dataset.train, "bad", {})) + len(getattr(self.dataset.val, "bad", {}))
        record = {"type": "epoch", "epoch": pos.epoch, "step": pos.step, "lr": lr_used, **self.stats.epoch_summary(),
                  "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                  "unreadable_images": bad, "time": time.time()}
        # The record goes first: should the checkpoint then fail (a full disk), the resumed run
        # redoes this epoch and logs it again, and readers keep an epoch's last record. The other
        # order would leave a checkpoint whose epoch the log never mentions.
        self._log_record(record)
        self._save(is_best=is_best, val=val)
        self.log(f"epoch {pos.epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f} top-1 "
                 f"{100 * record['train_top1']:.1f}% | val loss {val['loss']:.4f} top-1 {100 * val['top1']:.1f}% "
                 f"top-5 {100 * val['top5']:.1f}% | lr {lr_used:g} | {record['images_per_s']:.0f} img/s, "
                 f"data wait {100 * record['data_wait']:.0f}%"
                 + (f" | {bad} unreadable images skipped" if bad else "") + (" | best" if is_best else ""))
        if dropped:
            self.log(f"validation error stopped improving: learning rate divided by 10 to {self.optimizer.lr:g}")
        return True

    # ---- saving and stopping -------------------------------------------------------------------------
    def _save(self, is_best=False, val=None):
        """Write a checkpoint of the current position. Every save point comes through here, so
        every one first reads the steps' losses (on the GPU they are summed on the device: a NaN
        must stop the run, not be saved) and refuses weights that the last update made
        non-finite (the loss that would show it is only computed in the next step)."""
        self._flush()
        pos = self.position
        weights, velocity = self.strategy.full_state(self.model, self.optimizer.velocity)   # collective
        arrays, meta = run_state.capture(weights, velocity, self, val) if weights is not None else (None, None)

        def refuse_non_finite():
            bad = run_state.non_finite(arrays)
            if bad:
                self._diverged("non-finite", where=f"the weights ({bad})", at=f"epoch {pos.epoch + 1}, step {pos.step}")

        path = self.files.save_checkpoint(pos.step, arrays, meta, is_best=is_best, check=refuse_non_finite)
        self._saved_path, self._last_save = path, self._clock()
        return path

    def _save_mid_epoch(self, why):
        pos = self.position
        path = self._save()
        self.files.append_log({"type": "checkpoint", "epoch": pos.epoch + 1, "batch": pos.batch, "step": pos.step,
                               "path": path, "why": why})
        return path

    def _stop_mid_epoch(self, signals, num_batches):
        pos = self.position
        where = f"at epoch {pos.epoch + 1}, batch {pos.batch}/{num_batches}, step {pos.step}"
        if signals.requested:
            path = self._save_mid_epoch(signal.Signals(signals.signum).name)
            return self._interrupted(signals, where, path)
        path = self._save_mid_epoch("--stop-after-steps")
        self.log(f"stopped after {self.stop_after_steps} steps {where}; saved {path}")
        self.log(f"resume with: {resume_hint(path)}")
        return 0

    def _interrupted(self, signals, where, path=None):
        """Say where a signal stopped the run and how to continue; the exit code 128 + signum."""
        name = signal_name(signals.signum)
        if path is not None:
            self.log(f"interrupted by {name} {where}; saved {path}")
        else:
            path = self.files.newest_good()
            self.log(f"interrupted by {name} {where}: nothing new to save"
                     + ("" if path else " (no checkpoint was written)"))
        if path is not None:
            self.log(f"resume with: {resume_hint(path)}")
        return 128 + signals.signum

    def _diverged(self, loss, where="the loss", at=None):
        latest, resumed_from = self.files.ckpts.latest(), self.files.resumed_from
        lower = f"--lr {self.optimizer.lr / 10:g}"
        if latest:
            keep = (f"the last good checkpoint is {latest} (resume from it with a lower --lr: "
                    f"{resume_hint(latest)} {lower})")
        elif resumed_from:
            keep = (f"this session has written no checkpoint; the last good one is the checkpoint it resumed "
                    f"from, {resumed_from} (try: {resume_hint(resumed_from)} {lower})")
        else:
            keep = "no checkpoint was written yet; try a lower --lr"
        at = at or f"epoch {self.position.epoch + 1}, step {self.position.step + 1}"
        raise CollectiveError(f"training diverged: {where} became {loss} at {at}; stopped without saving. {keep}")

    # ---- what the run says ---------------------------------------------------------------------------
    def _announce(self):
        cfg, ds, pos = self.config, self.dataset, self.position
        self.log(f"data: {ds.root} ({ds.kind}), {len(ds.classes)} classes, {len(ds.train)} train / "
                 f"{len(ds.val)} val images" + (f", {len(ds.skipped)} files skipped (e.g. {ds.skipped[0][0]}: "
                                                f"{ds.skipped[0][1]})" if ds.skipped else ""))
        self.log(f"model: {cfg.model} ({self.model.num_params():,} parameters, init {cfg.init}) on {cfg.device} "
                 f"in {cfg.precision}{' with CUDA graphs' if self._run_step != self._eager_step else ''}; "
                 f"batch {cfg.batch_size}, lr {self.optimizer.lr:g}, momentum {cfg.momentum:g}, "
                 f"weight decay {cfg.weight_decay:g}, {_count(cfg.epochs, 'epoch')}")
        if self.strategy.describe():
            self.log(self.strategy.describe())
        if self.files.resumed_from:
            self.log(f"resumed from {self.files.resumed_from} at epoch {pos.epoch + 1}, batch {pos.batch}, "
                     f"step {pos.step}")
        self.log(f"run directory: {self.run_dir}")

    def _summary(self, seconds):
        ds, pos, ckpts = self.dataset, self.position, self.files.ckpts
        bad = {**getattr(ds.train, "bad", {}), **getattr(ds.val, "bad", {})}
        self.log(f"done: {_count(self.config.epochs, 'epoch')}, {_count(pos.step, 'step')} in {_fmt_time(seconds)} "
                 f"(this session); "
                 f"best val top-1 {100 * pos.best_top1:.1f}% at epoch {pos.best_epoch} "
                 f"(chance {100 / self.model.num_classes:.1f}%)")
        if bad:
            first = next(iter(bad.items()))
            self.log(f"skipped {len(bad)} unreadable images, e.g. {first[0]}: {first[1]}")
        self.log(f"checkpoints: {ckpts.directory} (best: {ckpts.best_path})")
        self.log(f"evaluate with 10 crops: alexnet eval --checkpoint {ckpts.best_path} --data {ds.root} --ten-crop")
        self.log(f"plot the curves and conv1 filters: alexnet plot {self.run_dir}")
