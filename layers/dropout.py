"""Dropout: while training, drop each unit with probability p. Two variants of the same idea.

Paper: section 4.2, after fc6 and fc7 with p = 0.5: "we use all the neurons but multiply their
outputs by 0.5" at test time.

With m[i] ~ Bernoulli(1 - p) the keep mask (1 keeps unit i):

    variant      forward (train)          forward (test)       backward (train)      backward (test)
    "inverted"   out = x * m / (1 - p)    out = x              dx = dout * m/(1-p)   dx = dout
    "paper"      out = x * m              out = x * (1 - p)    dx = dout * m         dx = dout * (1-p)

A dropped unit is multiplied by 0, not set to 0, on both paths: a NaN or infinity stays NaN.

Inverted dropout (the default, as in every current framework) computes the same function as the
paper's but does NOT train the same. Both make the test-time output the expected training output.
Under inverted dropout the next layer (y = W h) sees inputs 1/(1-p) times larger, so it computes
the paper's function with W_inv = (1-p) W_paper. Its gradient is then dL/dW_inv = dy^T h_inv =
dL/dW_paper / (1-p), and one SGD step with the same learning rate moves W_inv by lr/(1-p) times the
paper's gradient, which is lr/(1-p)^2 in the paper's units (W_paper = W_inv / (1-p)): 4x the
paper's step for fc7 and fc8 at p = 0.5. Likewise the paper's init N(0, 0.01^2) given to W_inv is
N(0, 0.02^2) in the paper's units. tests/test_dropout.py checks both factors on one step.
`variant="paper"` trains as the paper did (AlexNet(dropout_variant=...), `alexnet train
--dropout-variant paper`).

The mask. Unit i of the layer's `step`-th training forward is kept when the top 24 bits of a
counter-based hash of (seed, step, i) (two rounds of splitmix64) divided by 2^24 are >= p. It is a
pure function, never stored: the backward regenerates it, the NumPy path (`keep_mask`) and the CUDA
kernels (kernels/dropout.cu) draw bit-identical masks, and the state of the layer's random numbers
is one integer, `step` (checkpointed through rng_state()). `freeze_mask = True` makes every
training forward reuse the last mask (gradient checks evaluate one mask many times).

Whose unit i. The index i is the unit's place in the tensor one process would see, so that
splitting the work does not change the masks: a data-parallel rank holding samples s0.. of the
global batch, or a tower of the split model holding units u0.. of each sample, says so with
`place(first_sample, first_unit, units)`, and its element (n, j) draws the bits of unit
(s0 + n) * units + u0 + j. The default (0, 0, its own width) is the whole tensor.

On the CUDA path the kernels read the step from a one-element device array the layer keeps
(`step_slot`), written through engine/graphs.py write_scalar: at once in an ordinary step, before
each replay when the training step runs as a captured CUDA graph (the layer's counter then
advances there, through `_next_step`, exactly as it does here).

Cached (DropoutCache, both paths): the step whose mask the forward used (None when it drew none:
inference, or p = 0), the factor the kept units were multiplied by, and the layout of the units
(None for the whole tensor, else (base, width, stride), as keep_mask takes it).
Reference loops: layers/reference.py dropout_forward / dropout_backward.
"""
from collections import namedtuple

import numpy as np

from alexnet.engine import workspace
from alexnet.engine.graphs import write_scalar
from alexnet.engine.layer import Layer
from alexnet.engine.threads import run_chunks
from alexnet.kernels import ops

VARIANTS = ("inverted", "paper")
DropoutCache = namedtuple("DropoutCache", "step scale layout", defaults=(None,))

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MASK64 = (1 << 64) - 1
_MIX = ((np.uint64(30), np.uint64(0xBF58476D1CE4E5B9)), (np.uint64(27), np.uint64(0x94D049BB133111EB)))


def _mix(z, scratch):
    """The splitmix64 finalizer, in place on uint64 arrays (multiplication wraps mod 2^64)."""
    for shift, multiplier in _MIX:
        np.right_shift(z, shift, out=scratch)
        z ^= scratch
        z *= multiplier
    np.right_shift(z, np.uint64(31), out=scratch)
    z ^= scratch
    return z


def keep_threshold(p):
    """Unit kept when (hash >> 40) >= this: u = (hash >> 40) / 2^24 >= p, with p as the float32 the
    kernel compares against (exact: both sides are whole multiples of 2^-24 or compared as such)."""
    return int(np.ceil(float(np.float32(p)) * 2.0 ** 24))


def keep_mask(seed, step, count, p, start=0, layout=None):
    """Bool keep mask of the elements start .. start + count - 1 (flat indices) of mask `step`,
    the same bits kernels/dropout.cu draws. `layout` (base, width, stride) places element e at unit
    base + (e // width) * stride + e % width of a larger tensor; None: element e is unit e."""
    with np.errstate(over="ignore"):
        stream = np.array([(seed + (step + 1) * int(_GOLDEN)) & _MASK64], np.uint64)
        stream = _mix(stream, np.empty_like(stream))[0]
        z = np.arange(start, start + count, dtype=np.uint64)
        if layout is not None:
            base, width, stride = (np.uint64(v) for v in layout)
            z = base + z // width * stride + z % width                 # the units' own indices
        z += np.uint64(1)                                                # i + 1
        z *= _GOLDEN
        z += stream
        _mix(z, np.empty_like(z))
    z >>= np.uint64(40)
    return z >= np.uint64(keep_threshold(p))


class Dropout(Layer):
    def __init__(self, p=0.5, seed=0, variant="inverted"):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        if variant not in VARIANTS:
            raise ValueError(f"Dropout: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.p, self.variant = float(p), variant
        self.seed = int(seed) & _MASK64
        self.step = 0                      # masks drawn so far: the next training forward draws this one
        self.freeze_mask = False
        self._frozen_step = None
        self.placement = (0, 0, None)      # (first sample, first unit, units per sample): place()
        self.step_slot = None              # the CUDA path's device copy of the mask's step

    def describe(self):
        return f"Dropout(p={self.p}" + (", paper variant)" if self.variant == "paper" else ")")

    @property
    def train_scale(self):
        """What the kept units are multiplied by while training."""
        return 1.0 / (1.0 - self.p) if self.variant == "inverted" else 1.0

    @property
    def test_scale(self):
        """What every unit is multiplied by at inference."""
        return 1.0 if self.variant == "inverted" else 1.0 - self.p

    def _next_step(self):
        if self.freeze_mask and self._frozen_step is not None:
            return self._frozen_step
        step, self.step = self.step, self.step + 1
        self._frozen_step = step if self.freeze_mask else None
        return step

    def place(self, first_sample=0, first_unit=0, units=None):
        """Where this layer's input sits in the tensor one process would see (see the docstring):
        its rows are samples first_sample.. of the global batch, its columns units first_unit.. of
        `units` per sample (None: as many as the input has)."""
        self.placement = (int(first_sample), int(first_unit), None if units is None else int(units))

    def _layout(self, shape):
        """(base, width, stride) of the elements of an input of `shape` among the whole tensor's
        units; None when the input is it."""
        first_sample, first_unit, units = self.placement
        width = int(np.prod(shape[1:]))
        stride = width if units is None else units
        if first_sample == 0 and first_unit == 0 and stride == width:
            return None
        return first_sample * stride + first_unit, width, stride

    def _cache_for(self, x, train):
        """(what the forward computes): DropoutCache(step or None, scale, layout)."""
        if train and self.p > 0:
            return DropoutCache(self._next_step(), self.train_scale, self._layout(x.shape))
        return DropoutCache(None, self.test_scale if not train else 1.0)

    def next_mask(self, shape):
        """The keep mask (bool, `shape`) that the next training forward of an input of `shape`
        would draw; the counter moves on as that forward would move it. For passes written
        outside the layer (app/learner_passes.py) that must drop the units the engine drops."""
        step = self._next_step()
        return keep_mask(self.seed, step, int(np.prod(shape)), self.p, layout=self._layout(shape)).reshape(shape)

    # ---- NumPy -----------------------------------------------------------------------------------
    def forward_numpy(self, x, train):
        cache = self._cache_for(x, train)
        return self._apply(x, cache), cache

    def backward_numpy(self, dout, need_dx):
        return self._apply(dout, self.cache)

    def _apply(self, a, cache):
        """a * mask(step) * scale, a new array; a * scale where no mask was drawn."""
        dt = a.dtype.type
        if cache.step is None:
            return a * dt(cache.scale) if cache.scale != 1.0 else a.copy()
        out = workspace.empty_like(a)
        flat_a, flat_out = a.reshape(-1), out.reshape(-1)

        def chunk(lo, hi):
            keep = keep_mask(self.seed, cache.step, hi - lo, self.p, start=lo, layout=cache.layout)
            np.multiply(flat_a[lo:hi], keep, out=flat_out[lo:hi])
            if cache.scale != 1.0:
                flat_out[lo:hi] *= dt(cache.scale)
        run_chunks(chunk, a.size)
        return out

    # ---- CUDA (kernels/dropout.cu) -----------------------------------------------------------------
    def forward_cuda(self, rt, x, train):
        cache = self._cache_for(x, train)
        if cache.step is None:
            return ops.dropout_scale(rt, x, cache.scale, who=self.name), cache
        if self.step_slot is None or not isinstance(self.step_slot, rt.xp.ndarray):
            self.step_slot = rt.xp.zeros(1, np.uint64)
        write_scalar(self.step_slot, cache.step, self._next_step)
        return ops.dropout_forward(rt, x, self.p, self.seed, self.step_slot, cache.scale, who=self.name,
                                   layout=cache.layout), cache

    def backward_cuda(self, rt, dout, need_dx):
        cache = self.cache
        if cache.step is None:
            return ops.dropout_scale(rt, dout, cache.scale, who=self.name)
        return ops.dropout_backward(rt, dout, self.p, self.seed, self.step_slot, cache.scale, who=self.name,
                                    layout=cache.layout)

    # ---- the random numbers' state ------------------------------------------------------------------
    def rng_state(self):
        return {"step": self.step}

    def set_rng_state(self, state):
        self.step = int(state["step"])
        self._frozen_step = None
