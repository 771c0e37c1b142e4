"""`alexnet train --tensorboard`: the run's figures as TensorBoard event files, in RUN_DIR/tensorboard.

    tensorboard --logdir runs/          # every run directory under runs/, side by side

Written with tensorboardX (`pip install -e '.[tensorboard]'`; no TensorFlow or PyTorch needed):

    every --log-every steps   scalars train/loss, train/top1, train/lr; per layer grad_norm/<layer>,
                              weight_norm/<layer>, update_ratio/<layer> (app/grad_stats.py); histograms
                              weights/<layer> and grads/<layer>
    every epoch               scalars epoch/train_loss, epoch/val_loss, epoch/val_top1, epoch/val_top5,
                              epoch/images_per_s; conv1's filters as one image, conv1_filters (the
                              paper's Figure 3, drawn by app/plots.py filter_grid)

The x axis is the global step. A histogram is of at most HISTOGRAM_VALUES values of its tensor,
every k-th one, taken on the device: fc6 of AlexNet has 38M weights, and the step after a log
step should not wait for all of them to be copied and binned. Under --parallel towers the lead
rank writes its tower's halves of the histograms and filters. The writer opens with the run (the
run directory exists then) and is closed when the run ends; each run, or resumed session, adds
an event file of its own.
"""
import os

from alexnet.app.errors import UserError

HISTOGRAM_VALUES = 1 << 16
INSTALL = "pip install -e '.[tensorboard]' (tensorboardX)"


def check_available():
    """A UserError when tensorboardX is not installed (said before the run starts)."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise UserError(f"--tensorboard writes TensorBoard event files with tensorboardX, which is not installed: "
                        f"{INSTALL}") from None


def sample(a):
    """At most HISTOGRAM_VALUES values of array `a` (every k-th), as a NumPy array."""
    from alexnet.engine import backend

    flat = a.reshape(-1)
    return backend.to_numpy(flat[::max(1, flat.size // HISTOGRAM_VALUES)])


class TensorBoardLog:
    def __init__(self, run_dir, lead=True):
        """Refuses, before the run starts, a RUN_DIR/tensorboard that is not a folder (app/files.py's
        rule; the event files themselves are new files, named by the time and the host, so nothing
        there is ever replaced)."""
        from alexnet.app.files import kind_of

        check_available()
        self.directory, self.lead = os.path.join(run_dir, "tensorboard"), lead
        if os.path.lexists(self.directory) and not os.path.isdir(self.directory):
            what = kind_of(os.stat(self.directory).st_mode) if os.path.exists(self.directory) else "a broken link"
            raise UserError(f"--tensorboard writes event files into the folder {self.directory}, which is {what}")
        self._writer = None

    def _open(self):
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self.directory)
        return self._writer

    def step(self, record, layers, model):
        """A step record of log.jsonl and its layers' statistics (app/grad_stats.py)."""
        if not self.lead:
            return
        w, step = self._open(), record["step"]
        for key, tag in (("loss", "train/loss"), ("train_top1", "train/top1"), ("lr", "train/lr")):
            w.add_scalar(tag, record[key], step)
        for name, stats in layers.items():
            for stat, value in stats.items():
                w.add_scalar(f"{stat}/{name}", value, step)
        for layer in model.layers:
            if "W" in layer.params:
                w.add_histogram(f"weights/{layer.name}", sample(layer.params["W"]), step)
                w.add_histogram(f"grads/{layer.name}", sample(layer.grads["W"]), step)
        w.flush()

    def epoch(self, record, model):
        """An epoch record of log.jsonl; conv1's filters as they are now."""
        if not self.lead:
            return
        import numpy as np

        from alexnet.app.plots import filter_grid
        from alexnet.engine import backend

        w, step = self._open(), record["step"]
        for key in ("train_loss", "val_loss", "val_top1", "val_top5", "images_per_s"):
            w.add_scalar(f"epoch/{key}", record[key], step)
        first = next((layer for layer in model.layers if "W" in layer.params and layer.params["W"].ndim == 4), None)
        if first is not None:
            image = np.asarray(filter_grid(backend.to_numpy(first.params["W"])))       # (H, W, 3) uint8
            w.add_image(f"{first.name}_filters", image, step, dataformats="HWC")
        w.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
