"""Gradients you can watch: per layer, every --log-every steps, the gradient's norm, the weights'
norm and the update-to-weight ratio, in log.jsonl (and TensorBoard with --tensorboard).

For each layer with weights W (the biases left out: they start at 0, and their ratio says nothing):

    grad_norm     |dL/dW|, the gradient of the last step (layer.grads["W"])
    weight_norm   |W| after the last update
    update_ratio  |dW_step| / |W|: the last update's size relative to the weights. The paper's rule
                  moves W by its velocity (w <- w + v), so the step is |v|. A healthy layer sits
                  near 1e-3 (cs231n's rule of thumb): far below, it barely learns; near 1e-1, the
                  learning rate is too high for it.

The trainer hands every record it writes to `GradientWatch.saw`; at a step record the watch adds a
record of its own, {"type": "grads", "epoch", "step", "layers": {"conv1": {...}, ...}}, which
`alexnet plot` draws as the gradient flow (app/plots.py gradient_flow). The cost is paid at those
steps only: three sums of squares per layer, computed where the arrays live (on the GPU, on the
device), then read in one transfer, so the steps in between never wait for the device. Under
--parallel towers each rank holds half of every layer, and the sums of both halves are added
(the strategy's model_sums); data-parallel ranks hold the same tensors and need nothing summed.
"""
import numpy as np

STATS = ("grad_norm", "weight_norm", "update_ratio")


def weighted_layers(model):
    """[(layer name, layer)] of the layers with weights, in order."""
    return [(layer.name, layer) for layer in model.layers if "W" in layer.params]


def layer_stats(model, optimizer, model_sums=None):
    """{layer name: {grad_norm, weight_norm, update_ratio}} after a step (the module's docstring)."""
    from alexnet.engine import backend

    layers = weighted_layers(model)
    if not layers:
        return {}
    squares = []
    for name, layer in layers:
        w, g, v = layer.params["W"], layer.grads["W"], optimizer.velocity[f"{name}.W"]
        squares += [(a.reshape(-1) @ a.reshape(-1)) for a in (g, w, v)]     # on the arrays' device
    xp = backend.get_array_module(layers[0][1].params["W"])
    sums = backend.to_numpy(xp.stack(squares)).astype(np.float64)          # one read for every layer
    if model_sums is not None:
        sums = np.asarray(model_sums(sums), np.float64)
    norms = np.sqrt(sums).reshape(len(layers), 3)
    return {name: {"grad_norm": float(g), "weight_norm": float(w), "update_ratio": float(v / w) if w else 0.0}
            for (name, _), (g, w, v) in zip(layers, norms)}


class GradientWatch:
    """Sees every record the trainer writes to log.jsonl (`saw`): at a step record it measures the
    layers and writes their "grads" record; with a TensorBoard log (app/tensorboard_log.py) it
    also sends the step's and the epoch's figures there."""

    def __init__(self, model, optimizer, append_log, model_sums=None, tensorboard=None):
        self.model, self.optimizer, self.append_log = model, optimizer, append_log
        self.model_sums, self.tensorboard = model_sums, tensorboard

    def saw(self, record):
        if record.get("type") == "step":
            layers = layer_stats(self.model, self.optimizer, self.model_sums)
            if layers:
                self.append_log({"type": "grads", "epoch": record["epoch"], "step": record["step"], "layers": layers})
            if self.tensorboard is not None:
                self.tensorboard.step(record, layers, self.model)
        elif record.get("type") == "epoch" and self.tensorboard is not None:
            self.tensorboard.epoch(record, self.model)

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_grads(records):
    """{"steps": [...], layer name: {stat: [...]}} of the "grads" records of a log (in file order;
    a resumed run's repeated steps keep their last record), for plotting."""
    by_step = {}
    for rec in records:
        if rec.get("type") == "grads" and isinstance(rec.get("layers"), dict) and isinstance(rec.get("step"), int):
            by_step[rec["step"]] = rec["layers"]
    steps = sorted(by_step)
    names = [name for name in (by_step[steps[-1]] if steps else {})]
    series = {"steps": steps}
    for name in names:
        series[name] = {stat: [_number(by_step[s].get(name), stat) for s in steps] for stat in STATS}
    return series


def _number(entry, stat):
    """entry[stat] when it is a number; None (a gap in the plot) for anything else."""
    value = entry.get(stat) if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
