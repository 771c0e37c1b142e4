"""Dropout, inverted: drop each unit with probability p while training, scale the rest by 1/(1-p).

Paper: section 4.2, after fc6 and fc7 with p = 0.5.

Forward (train):  m[i] ~ Bernoulli(1 - p),  out = x * m / (1 - p)
Forward (test):   out = x
Backward:         dx = dout * m / (1 - p)

Why inverted equals the paper: the paper keeps units unscaled while training and multiplies the
outputs by 0.5 at test time; both make the test-time output equal the expected training output,
E[out] = x (1 - p) in the paper's units. Scaling the kept units by 1/(1-p) during training instead
divides every downstream activation by the same constant, so the next layer's weights simply
learn values (1 - p) times the paper's, and inference needs no rescaling.

RNG: a seeded NumPy Generator owned by the layer (no global random state), so a run is
reproducible and its state can be checkpointed (`get_rng_state` / `set_rng_state`). On the GPU
the mask comes from a counter-based hash of (seed, step, index) in kernels/dropout.cu.
Cached: the scaled mask m / (1 - p). With `reuse_mask = True` a forward reuses the cached mask
(gradient checks need the same mask at every perturbed evaluation).
"""
import numpy as np

from engine.layer import Layer


class Dropout(Layer):
    def __init__(self, p=0.5, seed=0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed = int(seed)
        self.step = 0                      # training forwards so far: the GPU hash RNG's counter
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.reuse_mask = False

    def describe(self):
        return f"Dropout(p={self.p})"

    def _forward(self, x, train):
        if not train or self.p == 0.0:
            self.cache = np.ones_like(x) if train else None
            return x.copy()
        mask = self.cache
        if not (self.reuse_mask and mask is not None and mask.shape == x.shape):
            keep = self.rng.random(x.shape, dtype=np.float32) >= self.p
            mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
            self.step += 1
        self.cache = mask
        return x * mask

    def _backward(self, dout, need_dx=True):
        return dout * self.cache

    def _drop_cache(self):
        if not self.reuse_mask:           # a frozen mask (gradient checks) must survive forwards
            self.cache = None

    def get_rng_state(self):
        return {"bit_generator": self.rng.bit_generator.state, "step": self.step}

    def set_rng_state(self, state):
        self.rng.bit_generator.state = state["bit_generator"]
        self.step = int(state["step"])
