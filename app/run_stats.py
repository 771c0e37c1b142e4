"""What a run measures as it trains: the loss and accuracy of its steps, per epoch and over the
last --log-every steps, its speed and its wait for data, and whether it has stalled at chance.

On the GPU a step's loss and count of correct predictions stay on the device (reading them would
make the host wait for the device every step): they are summed there as pending sums and read by
`flush` every --log-every steps and wherever the run saves. On the CPU the trainer flushes after
every step. Under data parallelism each rank adds its share, and `flush` sums the shares over the
ranks (the strategy's `combine`).
"""
import math
from collections import deque

import numpy as np


def new_epoch():
    """An epoch's running totals, as checkpoints store them (a run stopped mid-epoch resumes them)."""
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "steps": 0, "time": 0.0, "wait": 0.0}


class TrainingStats:
    def __init__(self, log_every, epoch=None):
        self.log_every = log_every
        self.epoch = epoch or new_epoch()
        self._pending = self._nothing_pending()
        self._recent = deque()          # (loss sum, steps, correct, seen) per flush

    @staticmethod
    def _nothing_pending():
        return {"loss": 0.0, "loss_n": 0.0, "correct": 0, "seen": 0, "steps": 0}

    def start_epoch(self):
        """The step records of an epoch average over its own steps only."""
        self._recent.clear()

    def add_step(self, loss, correct, n, count):
        """A step's loss (mean over this rank's n images), correct count and images, of a global
        batch of `count` images (device scalars on the GPU)."""
        pending = self._pending
        # a rank's share of the step's mean loss: the flush sums the shares over the ranks
        pending["loss"] = pending["loss"] + (loss if n == count else loss * (n / count))
        pending["loss_n"] = pending["loss_n"] + loss * n
        pending["correct"] = pending["correct"] + correct
        pending["seen"] += n
        pending["steps"] += 1

    def add_time(self, seconds, wait):
        self.epoch["time"] += seconds
        self.epoch["wait"] += wait

    def flush(self, combine=None):
        """Read the steps' sums since the last flush (on the GPU, the one wait for the device),
        summed over the ranks by `combine`, into the epoch's totals. Returns (mean loss of those
        steps, how many), or None when there were none; the mean is not finite when a step diverged
        (the caller stops before anything is saved)."""
        pending, self._pending = self._pending, self._nothing_pending()
        if pending["steps"] == 0:
            return None
        sums = np.array([float(pending["loss"]), float(pending["loss_n"]), float(pending["correct"]),
                         float(pending["seen"])])
        loss_sum, loss_n, correct, seen = (combine(sums) if combine is not None else sums)
        loss_sum, loss_n, correct, seen = float(loss_sum), float(loss_n), int(correct), int(seen)
        if not math.isfinite(loss_n):
            return loss_n / seen, pending["steps"]
        self.epoch["loss_sum"] += loss_n
        self.epoch["correct"] += correct
        self.epoch["seen"] += seen
        self.epoch["steps"] += pending["steps"]
        self._recent.append((loss_sum, pending["steps"], correct, seen))
        return loss_sum / pending["steps"], pending["steps"]

    def recent_means(self):
        """{"loss": mean loss per step, "train_top1": share of correct predictions} over the last
        --log-every steps (as flushed; the training-mode forward's, dropout and augmentation on)."""
        loss, steps, correct, seen = 0.0, 0, 0, 0
        for entry in reversed(self._recent):
            if steps >= self.log_every:
                break
            loss, steps, correct, seen = loss + entry[0], steps + entry[1], correct + entry[2], seen + entry[3]
        while len(self._recent) > self.log_every:
            self._recent.popleft()
        return {"loss": loss / max(steps, 1), "train_top1": correct / max(seen, 1)}

    def bar_text(self):
        e = self.epoch
        busy = max(e["time"], 1e-9)
        return (f"loss {e['loss_sum'] / max(e['seen'], 1):.3f}, {e['seen'] / busy:.0f} img/s, "
                f"data wait {100 * e['wait'] / busy:.0f}%")

    def epoch_summary(self):
        """The finished epoch's training figures for its log record; the totals start again."""
        e, self.epoch = self.epoch, new_epoch()
        seen, busy = max(e["seen"], 1), max(e["time"], 1e-9)
        return {"train_loss": e["loss_sum"] / seen, "train_top1": e["correct"] / seen,
                "images_per_s": e["seen"] / busy, "data_wait": e["wait"] / busy}


class StallWatch:
    """Warns once when the loss has sat at ln(classes), chance level, for a long stretch: the
    network outputs a uniform distribution and is not learning."""

    STEPS = 300

    def __init__(self, num_classes, init, log):
        self.num_classes, self.init, self.log = num_classes, init, log
        self.run, self.warned = 0, False

    def see(self, loss, steps=1):
        """`loss` is the mean of `steps` steps."""
        if self.warned:
            return
        ln_classes = math.log(self.num_classes)
        near = abs(loss - ln_classes) < 0.02 * ln_classes
        self.run = self.run + steps if near else 0
        if self.run >= self.STEPS:
            self.warned = True
            if self.init == "paper":
                hint = ("with the 'paper' init preset this is a known stall (bias 1 in fc6/fc7 on "
                        "N(0, 0.01) weights): try --init caffe")
            else:
                hint = f"the '{self.init}' init preset may not suit this data: try another --init or a lower --lr"
            self.log(f"warning: the loss has stayed at ln({self.num_classes}) = {ln_classes:.3f} "
                     f"(chance) for {self.run} steps: the network is not learning; {hint}")
