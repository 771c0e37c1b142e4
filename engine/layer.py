"""The Layer contract every layer in `layers/` follows.

    layer.params: dict[str, array]   parameters, e.g. {"W": ..., "b": ...}; empty for ReLU/LRN/pool
    layer.grads:  dict[str, array]   same keys, written by backward()
    out = layer.forward(x, train=True)   stores what backward needs in layer.cache
    dx  = layer.backward(dout)           fills layer.grads, returns dx

The gradient rule: `backward` WRITES `grads` (it never accumulates into them) and returns `dx` as a
new array (it never aliases `dout`). So one forward followed by one backward always leaves the
gradients of exactly that pair, and a layer used twice in a row can't mix two batches.

`forward` checks its input (rank, channels, dtype, batch size, device) before doing any work and
raises a ValueError that names the layer and the shapes. It then runs the NumPy implementation
(`_forward` / `_backward` in each layer's file) or, for a CuPy input, the CUDA kernels through
`kernels.dispatch`.
"""
import numpy as np

from engine import backend

FLOAT_DTYPES = (np.float32, np.float64)


class Layer:
    def __init__(self):
        self.params = {}
        self.grads = {}
        self.cache = None
        self.name = type(self).__name__.lower()

    # ---- the contract -------------------------------------------------------------------------
    def forward(self, x, train=True):
        self._check_array(x, "input")
        self.check_input_shape(tuple(x.shape[1:]))
        backend.check_same_device(self.name, x, self.params)
        if train:
            self._drop_cache()
        if backend.is_gpu_array(x):
            from kernels import dispatch
            return dispatch.layer_forward(self, x, train)
        return self._forward(x, train)

    def _drop_cache(self):
        """Called when a training forward begins: last step's cache is dead by then, and dropping
        it first lets its memory (engine/workspace.py) serve this forward instead of holding two
        steps' worth at once."""
        self.cache = None

    def backward(self, dout, need_dx=True):
        """`need_dx=False` lets the first layer of a net skip its input gradient (returns None)."""
        if self.cache is None:
            raise ValueError(f"{self.name}: backward() called before forward(train=True)")
        self._check_array(dout, "dout")
        if backend.is_gpu_array(dout):
            from kernels import dispatch
            return dispatch.layer_backward(self, dout, need_dx)
        return self._backward(dout, need_dx)

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

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    # ---- helpers --------------------------------------------------------------------------------
    def _check_array(self, x, what):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError(f"{self.name}: {what} must be a NumPy or CuPy array, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
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
