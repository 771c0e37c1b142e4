"""The Layer contract every layer in `layers/` follows.

    layer.params: dict[str, array]   parameters, e.g. {"W": ..., "b": ...}; empty for ReLU/LRN/pool
    layer.grads:  dict[str, array]   same keys, written by backward()
    out = layer.forward(x, train=False)  keeps what backward needs in layer.cache
    dx  = layer.backward(dout)           fills layer.grads, returns dx

The gradient rule: `backward` WRITES `grads` (it never accumulates into them) and returns `dx` as a
new array (it never aliases `dout`). So one forward followed by one backward always leaves the
gradients of exactly that pair, and a layer used twice in a row can't mix two batches.

Modes. `train` is an argument, never a global flag, and it defaults to False: a forward that does
not say it is training applies no dropout. Every forward keeps its cache, in training or not, so
`backward` also works after an inference forward (input gradients of a trained net, as PyTorch
gives them in eval() mode). Inference that needs no gradients passes `keep_cache=False`: the
layer then drops its cache as soon as the output exists, so a forward pass holds one layer's
temporaries at a time instead of the whole net's (evaluation and `alexnet predict` do this), and a
later `backward` is refused.

Two paths, one cache. `forward` checks its input (rank, channels, dtype, batch size, device) and
raises a ValueError that names the layer and the shapes, then runs one of the layer file's two
implementations:

    forward_numpy(x, train) -> (out, cache)          the vectorised NumPy path (CPU)
    forward_cuda(rt, x, train) -> (out, cache)       the CUDA path: kernels/<layer>.cu on runtime rt
    backward_numpy(dout, need_dx) -> dx              both read self.cache, which has the same
    backward_cuda(rt, dout, need_dx) -> dx           layout whichever path wrote it

A NumPy input takes the NumPy path and a CuPy input the CUDA path on the GPU. `runtime=` forces the
CUDA path on a given kernel runtime (kernels/loader.py): the tests pass the CPU harness there, so
the very code a GPU runs is checked with NumPy arrays on machines without one.

Precision (engine/precision.py). `layer.precision` ("fp32", "tf32" or "bf16") is set by the model
when it moves to its device and read by the CUDA path only: it picks the products' compute type
(engine/gemm.py) and, under bf16, the activations arrive and leave stored as BF16 (dtype uint16,
accepted on the CUDA path only). A layer whose weights are products' operands keeps their BF16
copies in `low_params` under bf16 (`low_param_keys` names them; the SGD kernel updates them).

Fusion. Inside a Sequential, `absorb(next_layer)` lets a layer take over the one after it: a
Conv2d or Dense applies the ReLU after it (in its bias kernels on the GPU, on each chunk of its
output while that is in cache on the CPU), and on the CPU an LRN the max-pool after it (on each
chunk of its output). The absorbed layer then passes its input and its gradient through unchanged
(the one exception to "dx is a new array"), on the paths where it was absorbed. A layer called on
its own, outside a Sequential, never fuses.
"""
import numpy as np

from alexnet.engine import backend

FLOAT_DTYPES = (np.float32, np.float64)
BF16_STORAGE = np.uint16     # BF16 activations on the CUDA path (kernels/ops.py BF16)


class Layer:
    precision = "fp32"       # set by Sequential.to; the CUDA path reads it
    low_param_keys = ()      # the params the products read, kept as BF16 copies under bf16
    absorbs = None           # (layer type, attribute): what `absorb` takes over, and where it keeps it
    def __init__(self):
        self.params = {}
        self.grads = {}
        self.cache = None
        self.name = type(self).__name__.lower()
        self.low_params = {}
        self.fused_into = None   # the layer that computes this one as well (absorb)

    # ---- the contract -------------------------------------------------------------------------
    def forward(self, x, train=False, keep_cache=True, runtime=None):
        rt = runtime or backend.kernel_runtime_of(x)
        self._check_array(x, "input", bf16=rt is not None)
        if rt is not None or self.fused_into is None:     # an absorbed layer's input is checked by its absorber
            self.check_input_shape(tuple(x.shape[1:]))
        backend.check_same_device(self.name, x, self.params)
        # the last forward's cache is dead now: dropping it first lets its memory
        # (engine/workspace.py) serve this forward instead of holding two steps' worth at once
        self.cache = None
        out, cache = self.forward_numpy(x, train) if rt is None else self.forward_cuda(rt, x, train)
        if keep_cache:
            self.cache = cache
        return out

    def backward(self, dout, need_dx=True, runtime=None):
        """`need_dx=False` lets the first layer of a net skip its input gradient (returns None)."""
        if self.cache is None:
            raise ValueError(f"{self.name}: backward() needs a forward() that kept its cache first "
                             f"(forward(x, keep_cache=False) keeps none)")
        rt = runtime or backend.kernel_runtime_of(dout)
        self._check_array(dout, "dout", bf16=rt is not None)
        dx = self.backward_numpy(dout, need_dx) if rt is None else self.backward_cuda(rt, dout, need_dx)
        return dx if need_dx else None

    # ---- the two paths (each layer file implements them) -----------------------------------------
    def forward_numpy(self, x, train):
        raise NotImplementedError(f"{type(self).__name__} has no NumPy forward")

    def backward_numpy(self, dout, need_dx):
        raise NotImplementedError(f"{type(self).__name__} has no NumPy backward")

    def forward_cuda(self, rt, x, train):
        raise TypeError(f"{self.name}: no CUDA kernels for layer type {type(self).__name__}")

    def backward_cuda(self, rt, dout, need_dx):
        raise TypeError(f"{self.name}: no CUDA kernels for layer type {type(self).__name__}")

    # ---- fusion and precision (see the module docstring) -------------------------------------------
    def absorb(self, following):
        """Take over `following` if it is of the type `absorbs` names (exactly: a subclass may
        compute something else); True when it did. Both keep the link: this layer in its
        attribute, `following` in `fused_into`."""
        if self.absorbs is None or type(following) is not self.absorbs[0]:
            return False
        setattr(self, self.absorbs[1], following)
        following.fused_into = self
        return True

    def unfuse(self):
        """Forget what absorb set (a Sequential does this before it absorbs: a copied layer must
        not keep its original's partner)."""
        self.fused_into = None
        if self.absorbs is not None:
            setattr(self, self.absorbs[1], None)

    def gemm_param(self, key):
        """The array the products read for params[key]: its BF16 copy under bf16, else itself."""
        return self.low_params.get(key, self.params[key])

    # ---- randomness (dropout overrides these) -----------------------------------------------------
    def rng_state(self):
        """JSON-serialisable state of the layer's own random numbers, or None when it draws none."""
        return None

    def set_rng_state(self, state):
        pass

    # ---- shapes, for validation and `alexnet summary` ---------------------------------------
    def output_shape(self, in_shape):
        """Shape of one sample's output given one sample's input shape (no batch axis)."""
        self.check_input_shape(in_shape)
        return tuple(in_shape)

    def check_input_shape(self, in_shape):
        """Raise ValueError when a sample of shape `in_shape` can't go through this layer."""

    def macs(self, in_shape):
        """Multiply-adds per sample (0 for layers without products)."""
        return 0

    def product_flops(self, in_shape, need_dx=True):
        """(forward, backward) floating-point operations per sample of the matrix products the CPU
        path runs (2 per multiply-add of the algorithm actually used, which for a Winograd
        convolution is fewer than `macs`): what bench/cpu_step.py divides by the machine's sgemm
        rate for the time the products alone would need."""
        return 0, 0

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    # ---- helpers --------------------------------------------------------------------------------
    def _check_array(self, x, what, bf16=False):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError(f"{self.name}: {what} must be a NumPy or CuPy array, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES and not (bf16 and x.dtype == BF16_STORAGE):
            raise ValueError(f"{self.name}: {what} must be float32 or float64, got dtype {x.dtype} "
                             f"with shape {tuple(x.shape)}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"{self.name}: {what} has batch size 0 (shape {tuple(x.shape)})")

    def _fail(self, message, in_shape):
        raise ValueError(f"{self.name} ({self.describe()}): {message}; got a sample of shape "
                         f"{tuple(in_shape)}")

    def describe(self):
        return type(self).__name__

    def __repr__(self):
        return f"{self.name}: {self.describe()}"
