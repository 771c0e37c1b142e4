"""The training loop: epochs of SGD steps with background loading, validation, the LR schedule,
checkpoints, exact resume, Ctrl-C and divergence handling.

A run directory holds everything about one run:

    RUN_DIR/config.json            the hyperparameters and data path (what --resume restores)
    RUN_DIR/log.jsonl              one JSON object per line: {"type": "epoch", ...} after each
                                   epoch's validation, {"type": "step", ...} every log_every steps
    RUN_DIR/checkpoints/ckpt-<step>.npz   the last `keep` checkpoints (end of epoch, or where a run
                                   was stopped); best.npz, the one with the highest val top-1
    RUN_DIR/plots/                 written by `alexnet plot`

Exactness of resume rests on three things: every random draw is either owned by the model (the
dropout layers' mask counters, saved through ``model.rng_state()``) or a pure function of
(seed, epoch, batch) in app/data.py; a checkpoint stores the position (epoch, next batch) and
all optimizer/schedule state; the NumPy ops run on the same shapes in the same order. A run
stopped after any step and resumed therefore ends with the same bits as one that never stopped.
"""

import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections import deque

import numpy as np

from alexnet.app import checkpoint as ckpt
from alexnet.app.errors import UserError


@dataclasses.dataclass
class TrainConfig:
    """What defines a run; stored as config.json. Defaults are the paper's (section 5)."""

    data: str
    model: str = "alexnet"
    epochs: int = 90
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    init: str = "paper"
    seed: int = 0
    device: str = "cpu"
    workers: int = 2
    strict_data: bool = False
    keep: int = 3
    patience: int = 1
    max_drops: int = 3
    log_every: int = 50
    input_scale: float = 1.0
    dropout: float = 0.5
    dropout_variant: str = "inverted"
    demo: bool = False

    def validate(self):
        """Reject impossible values with one clear line, before anything touches the disk."""
        if self.model not in ("alexnet", "alexnet-small"):
            raise UserError(f"unknown model {self.model!r}: expected alexnet or alexnet-small")
        from alexnet.engine.init import PRESETS

        if self.init not in PRESETS:
            raise UserError(f"unknown init preset {self.init!r}: expected one of {', '.join(PRESETS)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "momentum", "weight_decay"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise UserError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        if self.lr == 0:
            raise UserError("--lr must be greater than 0")
        if not math.isfinite(self.input_scale) or self.input_scale <= 0:
            raise UserError(f"--input-scale must be a finite number > 0, got {self.input_scale}")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.workers}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        from alexnet.layers.dropout import VARIANTS

        if self.dropout_variant not in VARIANTS:
            raise UserError(f"unknown --dropout-variant {self.dropout_variant!r}: expected one of "
                            f"{', '.join(VARIANTS)}")
        if self.log_every < 1:
            raise UserError(f"--log-every must be at least 1, got {self.log_every}")
        if self.keep < 1:
            raise UserError(f"--keep must be at least 1, got {self.keep}")
        if self.device not in ("cpu", "cuda"):
            raise UserError(f"unknown device {self.device!r}: expected cpu or cuda")
        if self.device == "cuda":
            from alexnet.engine import backend

            if not backend.cuda_available():
                raise UserError(f"--device cuda is not usable: {backend.cuda_unavailable_reason()}")

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)  # (N, K)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk_correct(probs, labels, k):
    """How many rows have their label among the k highest scores."""
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]  # (N, k), unordered
    return int((top == labels[:, None]).any(axis=1).sum())


def evaluate(model, source, crop, mean, batch_size=128, ten_crop=False, workers=2, device="cpu",
             progress=False, desc="val", scale=1.0):
    """Loss, top-1 and top-5 accuracy of ``model`` on ``source`` (centre crop, or the average of the
    softmax over the 10 views). Returns a dict with loss, top1, top5 (fractions) and count."""
    from tqdm import tqdm

    from alexnet.engine import backend
    from alexnet.app.data import EvalBatches, Prefetcher

    batches = EvalBatches(source, batch_size, crop, mean, ten_crop, scale)
    loss_sum, c1, c5, n = 0.0, 0, 0, 0
    bar = tqdm(total=batches.num_batches, desc=desc, unit="batch", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        for _, (views, labels), _ in Prefetcher(batches, range(batches.num_batches), workers):
            bar.update(1)
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
        bar.close()
    if n == 0:
        raise UserError("no validation image could be decoded")
    return {"loss": loss_sum / n, "top1": c1 / n, "top5": c5 / n, "count": n}


class _Interrupt:
    """SIGINT handler that asks the loop to stop after the current step; a second Ctrl-C stops
    at once (KeyboardInterrupt) for a user who does not want to wait."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


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
    created; ``run()`` then trains and returns the process exit code (0 done, 130 interrupted).
    ``stop_after_steps`` stops (and checkpoints) after that many steps of this invocation; it
    exists to test resume and to take a run apart into pieces.
    """

    def __init__(self, config, run_dir, resume=None, stop_after_steps=None, progress=True, log=None,
                 lr_override=None):
        from alexnet.app.data import open_dataset, peek_classes
        from alexnet.engine.loss import SoftmaxCrossEntropy
        from alexnet.engine.optim import SGD, PlateauSchedule
        from alexnet.models.alexnet import AlexNet, AlexNetSmall

        config.validate()
        self.config = config
        self.run_dir = run_dir
        self.progress = progress
        self.log = log or (lambda msg: print(msg, flush=True))
        self.stop_after_steps = stop_after_steps
        self.ckpts = ckpt.CheckpointDir(os.path.join(run_dir, "checkpoints"), config.keep)

        state = None
        if isinstance(resume, tuple):  # (path, arrays, meta) already read by the caller
            resume, *state = resume
        elif resume is not None:
            state = ckpt.load(resume)
        elif self.ckpts.list():
            raise UserError(f"run directory {run_dir} already has checkpoints: continue it with "
                            f"--resume {run_dir}, or choose another --out")

        classes = peek_classes(config.data)
        build = AlexNet if config.model == "alexnet" else AlexNetSmall
        self.model = build(len(classes), init=config.init, seed=config.seed, dropout=config.dropout,
                           dropout_variant=config.dropout_variant)
        self.dataset = open_dataset(config.data, self.model.resize_size, strict=config.strict_data)
        self.classes = self.dataset.classes
        if self.dataset.size < self.model.input_size:
            raise UserError(f"{config.data} holds {self.dataset.size}x{self.dataset.size} images, smaller than "
                            f"{config.model}'s {self.model.input_size}x{self.model.input_size} crops "
                            f"(prepare it with --model {config.model})")
        self.mean = self.dataset.mean
        self.optimizer = None
        self.epoch, self.batch, self.step = 0, 0, 0
        self.best_top1, self.best_epoch = -1.0, 0
        self.epoch_stats = self._new_stats()
        self.resumed_from = None
        self._stuck_run, self._stuck_warned = 0, False
        # on the GPU the loss is read every --log-every steps, not after each step (no host sync)
        self.read_every_step = config.device == "cpu"
        if state is not None:
            self._restore(resume, *state)
        self.model.to(config.device)
        self.optimizer = SGD(self.model, lr=config.lr, momentum=config.momentum,
                             weight_decay=config.weight_decay)
        self.schedule = PlateauSchedule(self.optimizer, factor=0.1, patience=config.patience,
                                        max_drops=config.max_drops)
        if state is not None:
            arrays, meta = state
            self.optimizer.load_state_dict({"lr": meta["lr"], "velocity": ckpt.split(arrays, "optim")})
            self.schedule.load_state_dict(meta["schedule"])
            if lr_override is not None:
                # A deliberate change (e.g. after a divergence): the resumed run is no longer
                # bit-identical to the original, which is the point.
                self.optimizer.lr = float(lr_override)
        self.criterion = SoftmaxCrossEntropy()
        if self.epoch >= config.epochs:
            raise UserError(f"the checkpoint is already at epoch {self.epoch} of {config.epochs}; "
                            f"pass a larger --epochs to train further")

    @staticmethod
    def _new_stats():
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "steps": 0, "time": 0.0, "wait": 0.0}

    def _restore(self, path, arrays, meta):
        weights = ckpt.split(arrays, "model")
        ckpt.check_model(path, meta, weights, self.model)
        if meta.get("classes") != self.classes:
            raise UserError(f"checkpoint {path} was trained on other classes than {self.config.data}")
        if meta.get("train_size") != len(self.dataset.train):
            raise UserError(f"checkpoint {path} was trained on {meta.get('train_size')} images, "
                            f"{self.config.data} now has {len(self.dataset.train)}: resume would not be exact")
        self.model.load_state_dict(weights)
        self.model.set_rng_state(meta["rng"])
        self.mean = arrays["data/mean"].astype(np.float32)
        self.epoch, self.batch, self.step = meta["epoch"], meta["batch"], meta["step"]
        self.best_top1, self.best_epoch = meta.get("best_top1", -1.0), meta.get("best_epoch", 0)
        self.epoch_stats = meta["epoch_stats"]
        self.resumed_from = path

    # ---- checkpoints -----------------------------------------------------------------------------

    def _save(self, is_best=False, val=None):
        from alexnet.engine import backend

        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        arrays.update({f"optim/{k}": backend.to_numpy(v) for k, v in opt["velocity"].items()})
        arrays["data/mean"] = np.asarray(self.mean, dtype=np.float32)
        cfg_scale = self.config.input_scale
        meta = {
            "arch": self.model.arch, "num_classes": self.model.num_classes, "classes": self.classes,
            "input_size": self.model.input_size, "resize_size": self.model.resize_size,
            "input_scale": cfg_scale, "dropout": self.config.dropout,
            "dropout_variant": self.config.dropout_variant,
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "lr": opt["lr"], "schedule": self.schedule.state_dict(), "rng": self.model.rng_state(),
            "data_seed": self.config.seed, "train_size": len(self.dataset.train),
            "epoch_stats": self.epoch_stats, "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "val": val, "config": self.config.to_json(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return self.ckpts.save(self.step, arrays, meta, is_best=is_best)

    def _append_log(self, record):
        with open(os.path.join(self.run_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def _resume_hint(self, path):
        return f"alexnet train --resume {path}"

    # ---- the loop ----------------------------------------------------------------------------------

    def run(self):
        try:
            return self._run()
        finally:
            from alexnet.engine import workspace
            workspace.release()        # the pooled arrays of the training steps go back to the system

    def _run(self):
        cfg = self.config
        os.makedirs(self.run_dir, exist_ok=True)
        if self.resumed_from is None or not os.path.exists(os.path.join(self.run_dir, "config.json")):
            with open(os.path.join(self.run_dir, "config.json"), "w") as f:
                json.dump(cfg.to_json(), f, indent=1)
        ds = self.dataset
        self.log(f"data: {ds.root} ({ds.kind}), {len(self.classes)} classes, {len(ds.train)} train / "
                 f"{len(ds.val)} val images" + (f", {len(ds.skipped)} non-image files skipped" if ds.skipped else ""))
        self.log(f"model: {cfg.model} ({self.model.num_params():,} parameters, init {cfg.init}) on {cfg.device}; "
                 f"batch {cfg.batch_size}, lr {self.optimizer.lr:g}, momentum {cfg.momentum:g}, "
                 f"weight decay {cfg.weight_decay:g}, {cfg.epochs} epochs")
        if self.resumed_from:
            self.log(f"resumed from {self.resumed_from} at epoch {self.epoch + 1}, batch {self.batch}, step {self.step}")
        self.log(f"run directory: {self.run_dir}")
        t_start = time.perf_counter()
        start_step = self.step
        with _Interrupt() as interrupt:
            while self.epoch < cfg.epochs:
                stopped = self._train_epoch(interrupt, start_step)
                if stopped is not None:
                    return stopped
                path = self._end_epoch()
                if interrupt.requested and self.epoch < cfg.epochs:
                    # Ctrl-C during validation: the epoch's checkpoint is the place to stop.
                    self.log(f"interrupted after epoch {self.epoch}; saved {path}")
                    self.log(f"resume with: {self._resume_hint(path)}")
                    return 130
        self._summary(time.perf_counter() - t_start)
        return 0

    def _train_epoch(self, interrupt, start_step):
        """Train from (self.epoch, self.batch) to the end of the epoch. Returns None when the
        epoch is done, or an exit code when the run stopped (Ctrl-C or stop_after_steps).

        On the GPU a step never waits for the device: the loss and the count of correct
        predictions are summed on the device and read (and checked for NaN) every --log-every
        steps and wherever the run saves; on the CPU they are read after every step."""
        from tqdm import tqdm

        from alexnet.app.data import Prefetcher, TrainBatches
        from alexnet.engine import backend

        cfg = self.config
        batches = TrainBatches(self.dataset.train, cfg.batch_size, self.model.input_size, self.mean,
                               cfg.seed, self.epoch, cfg.input_scale)
        self._recent = deque()
        self._pending = self._no_pending()
        on_device = not self.read_every_step
        stats = self.epoch_stats
        bar = tqdm(total=batches.num_batches, initial=self.batch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=not self.progress, file=sys.stderr, dynamic_ncols=True, leave=True)
        loader = Prefetcher(batches, range(self.batch, batches.num_batches), cfg.workers)
        t_last = time.perf_counter()
        try:
            for b, (x, labels), wait in loader:
                if len(labels) == 0:
                    self.batch = b + 1
                    continue
                labels_dev = backend.to_device(labels, cfg.device)
                logits = self.model.forward(backend.to_device(x, cfg.device), train=True)
                loss = self.criterion.forward(logits, labels_dev)
                if not on_device and not math.isfinite(loss):
                    self._diverged(loss)
                self.model.backward(self.criterion.backward(), need_dx=False)
                self.optimizer.step()
                self.step += 1
                self.batch = b + 1
                now = time.perf_counter()
                stats["time"] += now - t_last
                stats["wait"] += wait
                t_last = now
                pending = self._pending
                pending["loss"] = pending["loss"] + loss                     # a device scalar on the GPU
                pending["loss_n"] = pending["loss_n"] + loss * len(labels)
                pending["correct"] = pending["correct"] + (logits.argmax(axis=1) == labels_dev).sum()
                pending["seen"] += len(labels)
                pending["steps"] += 1
                log_now = self.step % cfg.log_every == 0
                stop_now = self.stop_after_steps is not None and self.step - start_step >= self.stop_after_steps
                if not on_device or log_now or stop_now or interrupt.requested:
                    self._flush()
                    bar.set_postfix_str(
                        f"loss {stats['loss_sum'] / stats['seen']:.3f}, "
                        f"{stats['seen'] / max(stats['time'], 1e-9):.0f} img/s, "
                        f"data wait {100 * stats['wait'] / max(stats['time'], 1e-9):.0f}%", refresh=False)
                bar.update(1)
                if log_now:
                    self._append_log({"type": "step", "epoch": self.epoch + 1, "batch": self.batch, "step": self.step,
                                      "loss": self._recent_loss(), "lr": self.optimizer.lr})
                if interrupt.requested or stop_now:
                    loader.close()
                    bar.close()
                    self._flush()              # a Ctrl-C may land after this step's flush decision
                    path = self._save()
                    where = f"epoch {self.epoch + 1}, batch {self.batch}/{batches.num_batches}, step {self.step}"
                    if interrupt.requested:
                        self.log(f"interrupted at {where}; saved {path}")
                        self.log(f"resume with: {self._resume_hint(path)}")
                        return 130
                    self.log(f"stopped after {self.stop_after_steps} steps at {where}; saved {path}")
                    self.log(f"resume with: {self._resume_hint(path)}")
                    return 0
            self._flush()
        finally:
            loader.close()
            bar.close()
        return None

    @staticmethod
    def _no_pending():
        return {"loss": 0.0, "loss_n": 0.0, "correct": 0, "seen": 0, "steps": 0}

    def _flush(self):
        """Read the steps' loss and correct counts summed since the last flush (on the GPU this is
        the one wait for the device), stop on a NaN, and add them to the epoch's statistics."""
        pending, self._pending = self._pending, self._no_pending()
        if pending["steps"] == 0:
            return
        loss_sum, loss_n = float(pending["loss"]), float(pending["loss_n"])
        if not math.isfinite(loss_n):
            first = self.step - pending["steps"] + 1
            self._diverged(loss_n / pending["seen"], where=f"the mean loss of steps {first}-{self.step}",
                           at=f"epoch {self.epoch + 1}")
        stats = self.epoch_stats
        stats["loss_sum"] += loss_n
        stats["correct"] += int(pending["correct"])
        stats["seen"] += pending["seen"]
        stats["steps"] += pending["steps"]
        self._recent.append((loss_sum, pending["steps"]))
        self._watch_stuck(loss_sum / pending["steps"], math.log(self.model.num_classes), pending["steps"])

    def _recent_loss(self):
        """Mean loss per step over the last --log-every steps (as flushed)."""
        total, steps = 0.0, 0
        for loss_sum, n in reversed(self._recent):
            if steps >= self.config.log_every:
                break
            total, steps = total + loss_sum, steps + n
        while len(self._recent) > self.config.log_every:
            self._recent.popleft()
        return total / max(steps, 1)

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
        keep = (f"the last good checkpoint is {latest} (resume from it with a lower --lr: "
                f"{self._resume_hint(latest)} --lr {self.optimizer.lr / 10:g})") if latest else \
            "no checkpoint was written yet; try a lower --lr"
        at = at or f"epoch {self.epoch + 1}, step {self.step + 1}"
        raise UserError(f"training diverged: {where} became {loss} at {at}; stopped without saving. {keep}")

    def _end_epoch(self):
        cfg = self.config
        stats = self.epoch_stats
        val = evaluate(self.model, self.dataset.val, self.model.input_size, self.mean,
                       batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device, progress=self.progress,
                       scale=cfg.input_scale)
        if not math.isfinite(val["loss"]):
            # Weights gone to inf/NaN in the epoch's last steps must not become a checkpoint.
            self._diverged(val["loss"], where="the validation loss")
        lr_used = self.optimizer.lr
        dropped = self.schedule.step(1.0 - val["top1"])
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
        path = self._save(is_best=is_best, val=val)
        self._append_log(record)
        self.log(f"epoch {self.epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f} top-1 "
                 f"{100 * record['train_top1']:.1f}% | val loss {val['loss']:.4f} top-1 {100 * val['top1']:.1f}% "
                 f"top-5 {100 * val['top5']:.1f}% | lr {lr_used:g} | {record['images_per_s']:.0f} img/s, "
                 f"data wait {100 * record['data_wait']:.0f}%"
                 + (f" | {bad} unreadable images skipped" if bad else "")
                 + (" | best" if is_best else ""))
        if dropped:
            self.log(f"validation error stopped improving: learning rate divided by 10 to {self.optimizer.lr:g}")
        return path

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
