"""The paper's SGD with momentum and weight decay, and its learning-rate schedules.

Paper, section 5:
    v <- m v - wd lr w - lr g          (m = 0.9, wd = 0.0005, lr = 0.01)
    w <- w + v

This is NOT PyTorch's SGD, which keeps buf <- m buf + (g + wd w) and steps w <- w - lr buf. The two
agree while lr is constant (v = -lr buf), but differ when lr changes: here the velocity keeps the
old learning rate's steps and only new gradients see the new rate; in PyTorch the whole buffer is
rescaled by the new rate at once. So after the paper's "divide by 10", the weights here keep
travelling with the old velocity (with momentum m = 0.9, about 9 more of the old steps:
0.9 + 0.81 + ... = m / (1 - m) = 9), while each new gradient pulls back with a tenth of its old force.
`SGD(..., rescale_velocity=True)` multiplies v by new_lr / old_lr whenever the learning rate changes,
which is exactly PyTorch's behaviour (v = -lr buf at every step); the default is the paper's rule.

Per-tensor options, as in Caffe: `layer_lr_mults` maps a layer's name to a learning-rate multiplier
for all its tensors (0 freezes the layer: its velocity stays 0 and its weights do not move, weight
decay included; fine-tuning uses it). Biases may also get a learning-rate multiplier (`bias_lr_mult`, Caffe
uses 2) and a decay multiplier (`bias_decay`, Caffe uses 0). For a tensor with multipliers
(lr_mult, decay_mult) the rule is v <- m v - decay_mult wd (lr lr_mult) w - (lr lr_mult) g.

Reference loop: layers/reference.py sgd_step. On the CPU the update walks each tensor in cache-
sized blocks on every core, and in training each layer's tensors are updated right after that
layer's backward (update_layer, as Sequential.backward's after_layer), while its gradients are
still in cache, rather than all at the end; on the GPU one launch of kernels/sgd.cu updates every tensor, and
under --precision bf16 also writes the BF16 copies of the weights the products read (the
layers' `low_params`): the masters, the velocity and the update stay float32. The kernel reads the
learning rate from a one-element device array (`lr_slot`, written through engine/graphs.py
write_scalar), so a training step captured as a CUDA graph replays with each step's rate.

Schedules: `PlateauSchedule` is the paper's "divide the learning rate by 10 when the validation
error stops improving", at most 3 times; `MilestoneSchedule` divides by 10 after given epochs.
"""
from collections import OrderedDict

import numpy as np

from alexnet.engine import backend
from alexnet.engine.graphs import capturing, write_scalar
from alexnet.engine.threads import run_chunks
from alexnet.kernels import ops


def _paper_update(w, g, v, momentum, decay, lr, block=1 << 16):
    """In place: v <- momentum v - decay w - lr g; w <- w + v (decay = decay_mult wd lr_eff).
    The update is memory-bound (fc6 alone is 150 MB per array), so it walks the arrays in blocks
    of 64K floats: the scratch and each block of w, g, v stay in cache across the five operations,
    and main memory sees each array once rather than once per operation.
    A term whose coefficient is 0 is left out rather than multiplied by 0 (kernels/sgd.cu too): a
    frozen tensor (lr 0, hence decay 0) stays put even where its gradient is NaN, and an infinite
    weight without decay keeps a finite velocity."""
    scratch = np.empty(min(block, w.size), w.dtype)
    decayed = np.empty_like(scratch) if decay else None
    for lo in range(0, w.size, block):
        hi = min(lo + block, w.size)
        wb, gb, vb, s = w[lo:hi], g[lo:hi], v[lo:hi], scratch[:hi - lo]
        vb *= momentum
        if lr:
            np.multiply(gb, lr, out=s)
            if decay:
                s += np.multiply(wb, decay, out=decayed[:hi - lo])
            vb -= s
        wb += vb


class SGD:
    def __init__(self, model, lr=0.01, momentum=0.9, weight_decay=5e-4, bias_lr_mult=1.0,
                 bias_decay=1.0, rescale_velocity=False, layer_lr_mults=None):
        for label, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                         ("bias_lr_mult", bias_lr_mult), ("bias_decay", bias_decay)):
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"SGD: {label} must be a finite number >= 0, got {v!r}")
        self.model = model
        self._lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.bias_lr_mult, self.bias_decay = float(bias_lr_mult), float(bias_decay)
        self.rescale_velocity = bool(rescale_velocity)
        self.layer_lr_mults = dict(layer_lr_mults or {})
        names = {layer.name for layer in model.layers}
        unknown = sorted(set(self.layer_lr_mults) - names)
        if unknown or any(not np.isfinite(m) or m < 0 for m in self.layer_lr_mults.values()):
            raise ValueError(f"SGD: layer_lr_mults needs layers of the model and multipliers >= 0, got "
                             f"{self.layer_lr_mults!r}")
        self.lr_slot = None      # the GPU path's device copy of the learning rate
        self._updated = set()    # layers updated during this step's backward (update_layer)
        self.velocity = {}
        for full, layer, key in model.named_parameters():
            p = layer.params[key]
            self.velocity[full] = backend.get_array_module(p).zeros_like(p)

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, new_lr):
        """A schedule (or the user) changes the rate; with rescale_velocity the velocity follows."""
        new_lr = float(new_lr)
        if self.rescale_velocity and self._lr > 0 and new_lr != self._lr:
            factor = new_lr / self._lr
            for v in self.velocity.values():
                v *= v.dtype.type(factor)
        self._lr = new_lr

    def _multipliers(self, layer, key):
        """(lr_mult, decay_mult) of a parameter tensor: the layer's multiplier, times the bias
        options for biases (named "b")."""
        layer_mult = self.layer_lr_mults.get(layer.name, 1.0)
        return (layer_mult * self.bias_lr_mult, self.bias_decay) if key == "b" else (layer_mult, 1.0)

    def update_layer(self, layer):
        """Update `layer`'s parameters now, right after its backward wrote their gradients, while
        those are still in cache: Sequential.backward's `after_layer` (the trainer's one-process
        CPU step). The same arithmetic as step(), which then leaves these out. On a GPU the update
        waits for step()'s one launch for every tensor."""
        entries = self._entries(layer)
        if entries and backend.kernel_runtime_of(entries[0][0]) is None:
            self._cpu_update(entries)
            self._updated.add(layer.name)

    def step(self, runtime=None):
        """Update every parameter not updated during this step's backward (update_layer)."""
        entries = [e for layer in self.model.layers if layer.name not in self._updated for e in self._entries(layer)]
        self._updated.clear()
        rt = runtime or (backend.kernel_runtime_of(entries[0][0]) if entries else None)
        if rt is not None:
            if self.lr_slot is None or not isinstance(self.lr_slot, rt.xp.ndarray):
                self.lr_slot = rt.xp.zeros(1, np.float32)
            write_scalar(self.lr_slot, self.lr, lambda: self.lr)
            # the kernel computes v = m v - decay_mult wd lr w - lr_mult lr g: fold lr_mult into decay
            sgd_update_cuda(rt, [(w, g, v, lm, dm * lm, low) for w, g, v, lm, dm, low in entries],
                            self.lr_slot, self.momentum, self.weight_decay)
            return
        self._cpu_update(entries)

    def _entries(self, layer):
        """(w, g, v, lr_mult, decay_mult, BF16 copy) of each parameter of `layer`."""
        entries = []
        for key in layer.params:
            full = f"{layer.name}.{key}"
            if key not in layer.grads:
                raise ValueError(f"SGD: no gradient for {full}: call backward() before step()")
            lr_mult, decay_mult = self._multipliers(layer, key)
            entries.append((layer.params[key], layer.grads[key], self.velocity[full], lr_mult, decay_mult,
                            layer.low_params.get(key)))
        return entries

    def _cpu_update(self, entries):
        for w, g, v, lr_mult, decay_mult, _ in entries:
            dt = w.dtype.type
            lr, decay = dt(self.lr * lr_mult), dt(decay_mult * self.weight_decay * self.lr * lr_mult)
            w, g, v = w.reshape(-1), g.reshape(-1), v.reshape(-1)
            run_chunks(lambda lo, hi: _paper_update(w[lo:hi], g[lo:hi], v[lo:hi], dt(self.momentum),
                                                    decay, lr), w.size, least=1 << 16)

    def state_dict(self):
        return {"lr": self.lr, "velocity": {k: backend.to_numpy(v).copy() for k, v in self.velocity.items()}}

    def load_state_dict(self, state):
        vel = state["velocity"]
        missing = sorted(set(self.velocity) - set(vel))
        extra = sorted(set(vel) - set(self.velocity))
        if missing or extra:
            raise ValueError(f"SGD: momentum buffers do not match the model (missing {missing}, "
                             f"unexpected {extra})")
        for k, v in self.velocity.items():
            if tuple(vel[k].shape) != tuple(v.shape):
                raise ValueError(f"SGD: momentum buffer {k} has shape {tuple(vel[k].shape)}, "
                                 f"the model needs {tuple(v.shape)}")
            v[...] = backend.get_array_module(v).asarray(vel[k], dtype=v.dtype)
        self._lr = float(state["lr"])          # restoring, not changing: the buffers are as saved


# ---- the GPU path: one launch of kernels/sgd.cu for every tensor -----------------------------------
# The kernel reads a device table of the tensors' addresses. Building it copies to the device, so
# tables are kept, keyed by the addresses: the parameters and momentum buffers never move, and the
# gradients come from CuPy's memory pool, which hands the same few blocks back step after step (an
# LRU of a few tables covers its rotation). A key of addresses and sizes cannot go stale: equal
# addresses with equal sizes are the same tensors' storage. A table built while a step is being
# captured as a CUDA graph (engine/graphs.py) is one the graph copies at every replay: it is kept
# for good, outside the LRU.
_TABLES = OrderedDict()
_TABLES_KEPT = 8
_GRAPH_TABLES = {}


def sgd_update_cuda(rt, entries, lr, momentum, weight_decay):
    """v <- m v - decay_mult wd lr w - lr_mult lr g;  w <- w + v, for every entry
    (w, g, v, lr_mult, decay_mult, low), in one launch, and low <- w as BF16 where low is not
    None. `lr` is the rate or its one-element float32 device array."""
    ops.check_sgd_entries(rt, entries, who="SGD")
    entries = ops.sgd_entries(entries)
    key = (rt.name,) + tuple((rt.pointer(w), rt.pointer(g), rt.pointer(v), 0 if low is None else rt.pointer(low),
                              w.size, float(lm), float(dm)) for w, g, v, lm, dm, low in entries)
    table = _GRAPH_TABLES.get(key) or _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = ops.sgd_table(rt, entries)
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)
    elif key in _TABLES:
        _TABLES.move_to_end(key)
    if capturing():
        _GRAPH_TABLES[key] = table
    ops.sgd_update(rt, table, lr, momentum, weight_decay)


class PlateauSchedule:
    """Divide the LR by 1/factor when the validation error has not improved by more than
    `threshold` for `patience` epochs in a row; at most `max_drops` times (the paper: 3)."""

    def __init__(self, optimizer, factor=0.1, patience=1, max_drops=3, threshold=1e-4):
        if not 0 < factor < 1:
            raise ValueError(f"PlateauSchedule: factor must be in (0, 1), got {factor!r}")
        if patience < 1 or max_drops < 0:
            raise ValueError("PlateauSchedule: patience must be >= 1 and max_drops >= 0")
        self.optimizer = optimizer
        self.factor, self.patience, self.max_drops = float(factor), int(patience), int(max_drops)
        self.threshold = float(threshold)
        self.best = float("inf")
        self.bad_epochs = 0
        self.drops = 0

    def step(self, val_error, epoch=None):
        """Record one epoch's validation error; returns True when it divided the LR."""
        if val_error < self.best - self.threshold:
            self.best = float(val_error)
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience and self.drops < self.max_drops:
            self.optimizer.lr *= self.factor
            self.drops += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self):
        return {"kind": "plateau", "factor": self.factor, "patience": self.patience,
                "max_drops": self.max_drops, "threshold": self.threshold, "best": self.best,
                "bad_epochs": self.bad_epochs, "drops": self.drops}

    def load_state_dict(self, state):
        for key in ("factor", "threshold", "best"):
            setattr(self, key, float(state[key]))
        for key in ("patience", "max_drops", "bad_epochs", "drops"):
            setattr(self, key, int(state[key]))


class MilestoneSchedule:
    """Divide the LR by 1/factor at the end of each of the given epochs (1-based), whatever the
    validation error does: a drop at a known place, for experiments that study it."""

    def __init__(self, optimizer, milestones, factor=0.1):
        if not 0 < factor < 1 or any(int(m) < 1 for m in milestones):
            raise ValueError(f"MilestoneSchedule: need epochs >= 1 and 0 < factor < 1, got {milestones!r}, {factor!r}")
        self.optimizer = optimizer
        self.milestones, self.factor = sorted(int(m) for m in milestones), float(factor)

    def step(self, val_error, epoch=None):
        """`epoch` (1-based) has just ended; returns True when it divided the LR."""
        if epoch in self.milestones:
            self.optimizer.lr *= self.factor
            return True
        return False

    def state_dict(self):
        return {"kind": "milestones", "milestones": self.milestones, "factor": self.factor}

    def load_state_dict(self, state):
        self.milestones, self.factor = [int(m) for m in state["milestones"]], float(state["factor"])
