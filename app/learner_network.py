"""A model trained on a learner's own passes: `alexnet train --layers-from DIR`.

    LearnerNetwork(model, folder)   `model` with the forward and backward of the workbook's network.py
                                    on the workbook's layer functions (app/learner_passes.py); its
                                    layers, parameters, names, checkpoints and dropout counters are the
                                    model's own, so the trainer, evaluation and checkpoints run it as
                                    they run the engine's
    LearnerLoss(ops, folder)        the workbook's softmax cross-entropy as the trainer's criterion

Dropout masks are the engine's (Dropout.next_mask): the same seed and counter draw the same masks,
so training on correct passes follows the engine's own run within float rounding
(tests/test_exercise.py). Building one runs the workbook's checks and says how many pass: a
function that fails them trains as it is, which is a lesson too.
"""
import numpy as np

from alexnet.app.errors import UserError
from alexnet.app.learner_passes import FILES, architecture, learner_error, load
from alexnet.models.network import Network


def _checked(folder, what, value, shape, dtype):
    """`value` as an array of `shape` in `dtype`; a UserError naming the workbook's function when
    it is something else (the trainer cannot go on with it)."""
    if not isinstance(value, np.ndarray) or value.shape != tuple(shape):
        got = f"shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise UserError(f"{what} of {folder} is {got}, the model needs shape {tuple(shape)} "
                        f"(alexnet exercise check {folder} says what differs)")
    return value.astype(dtype, copy=False)


class LearnerNetwork(Network):
    """`model` run on a workbook's passes (the module's docstring): the same layers, parameters and
    dropout counters, the forward and backward of the workbook's network.py on its ops. NumPy only."""

    def __init__(self, model, folder, log=None):
        super().__init__(model.layers, [layer.name for layer in model.layers], arch=model.arch,
                         num_classes=model.num_classes, input_size=model.input_size,
                         resize_size=model.resize_size, options=model.options)
        self.folder = folder
        self.settings = architecture(model)
        self.ops, self.network = load(folder)
        side = model.input_size
        self._sample_shapes = {name: shape for name, _, shape, _, _ in self.summary_rows((3, side, side))}
        self._kept = None               # (inputs, masks, train) of the last forward that kept its caches
        summary = checks_summary(folder)           # refuses a workbook with functions not written yet
        if log is not None:
            log(summary)

    def criterion(self):
        """The workbook's softmax cross-entropy, as the trainer's criterion."""
        return LearnerLoss(self.ops, self.folder)

    def _run(self, what, *args):
        """network.py's forward or backward: what the workbook's code raises is the user's to mend."""
        try:
            return getattr(self.network, what)(*args)
        except Exception as e:              # the learner's code, not ours: said as the user's error
            raise learner_error(e, self.folder, f"network.py's {what}") from e

    def _params(self):
        return {full: layer.params[key] for full, layer, key in self.named_parameters()}

    def _masks(self, n, train):
        """The dropout layers' keep masks for a batch of n: the engine's own (Dropout.next_mask)
        while training, all kept otherwise."""
        from alexnet.layers import Dropout

        masks = {}
        for layer in self.layers:
            if isinstance(layer, Dropout):
                shape = (n,) + self._sample_shapes[layer.name]
                masks[layer.name] = layer.next_mask(shape) if train and layer.p > 0 else np.ones(shape, bool)
        return masks

    def forward(self, x, train=False, keep_cache=True, runtime=None):
        if runtime is not None or not isinstance(x, np.ndarray):
            raise UserError("a workbook's passes are NumPy code: they train on the CPU only")
        masks = self._masks(len(x), train)
        logits, inputs = self._run("forward", self.ops, self._params(), self.settings, x, masks, train)
        self._kept = (x.shape, inputs, masks, train) if keep_cache else None
        return _checked(self.folder, "the logits of network.py's forward", logits, (len(x), self.num_classes),
                        x.dtype)

    def backward(self, dout, need_dx=True, runtime=None, after_layer=None):
        """network.py's backward; each layer's gradients are written, then `after_layer(layer)`
        is called, last layer first, as Sequential.backward does."""
        if self._kept is None:
            raise ValueError("backward() needs a forward() that kept its caches first")
        x_shape, inputs, masks, train = self._kept
        dx, grads = self._run("backward", self.ops, self._params(), self.settings, inputs, masks, dout, train)
        for layer in reversed(self.layers):
            for key, p in layer.params.items():
                full = f"{layer.name}.{key}"
                layer.grads[key] = _checked(self.folder, f"grads[{full!r}] of network.py's backward",
                                            grads.get(full), p.shape, p.dtype)
            if after_layer is not None:
                after_layer(layer)
        return _checked(self.folder, "the dx of network.py's backward", dx, x_shape, dout.dtype) if need_dx else None


def checks_summary(folder):
    """One line: how many of the workbook's functions pass `alexnet exercise check`, and which fail.
    A function not written yet cannot train at all: refused here, before the run directory exists."""
    from alexnet.app.exercise import check_exercise

    results = [r for name in FILES for r in check_exercise(folder, name)]
    unwritten = [r.function for r in results if r.status == "not implemented"]
    if unwritten:
        raise UserError(f"{folder}: {', '.join(unwritten[:3])}{' and more' if len(unwritten) > 3 else ''} "
                        f"{'is' if len(unwritten) == 1 else 'are'} not written yet (alexnet exercise status "
                        f"{folder} lists what is left)")
    failing = [r.function for r in results if r.status != "passed"]
    if not failing:
        return f"forward and backward passes: yours, from {folder} (all {len(results)} functions pass their checks)"
    verb = "does not pass its" if len(failing) == 1 else "do not pass their"
    return (f"forward and backward passes: yours, from {folder}; warning: {', '.join(failing)} {verb} checks "
            f"(alexnet exercise check {folder}): training goes on with them as they are")


class LearnerLoss:
    """The workbook's softmax cross-entropy with the engine's criterion interface (engine/loss.py)."""

    def __init__(self, ops, folder):
        self.ops, self.folder = ops, folder
        self.cache = None

    def _run(self, what, *args):
        try:
            return getattr(self.ops, what)(*args)
        except Exception as e:              # the learner's code
            raise learner_error(e, self.folder, what) from e

    def forward(self, logits, labels, runtime=None):
        self.cache = (logits, labels)
        return float(self._run("softmax_xent_forward", logits, labels))

    def backward(self, runtime=None, count=None):
        """dL/dlogits of the mean over `count` samples (default: this batch's), as engine/loss.py's."""
        logits, labels = self.cache
        dlogits = _checked(self.folder, "softmax_xent_backward", self._run("softmax_xent_backward", logits, labels),
                           logits.shape, logits.dtype)
        return dlogits * logits.dtype.type(len(labels) / count) if count else dlogits
