"""The layers where the two towers of the split AlexNet meet (paper, section 3.2 and Figure 2).

Tower g (rank g, its own GPU in the paper) holds half of every layer's kernels and neurons
(models/towers.py). Most layers then compute on their own tower's channels alone; these two are
the exceptions, and the only places where the towers trade arrays (engine/comm.py TowerExchange).

TowerGather: conv3, fc6, fc7 and fc8 read both towers' activations ("the kernels of the third
convolutional layer are connected to all kernel maps in the second layer").

    forward:   out = concat over towers of x_g along axis 1       (N, C_0 + C_1, ...)   allgather
    backward:  tower g's layer above sees all of `out` but only its own outputs, so its dout
               gives a partial gradient of out: d_g. The whole gradient is d_0 + d_1, and tower
               g keeps its own channels of it:  dx_g = (d_0 + d_1)[:, channels of g]   reduce-scatter
               With `replicated=True` (the logits, whose loss both towers compute in full) dout
               is already the whole gradient on each tower: dx_g = dout[:, channels of g].

TowerLRN: LRN's window runs across channels, over the towers' boundary too: the single-process
AlexNet normalizes channel 47 of conv1 with channels 45..49, two of which tower 1 holds. Tower g
therefore borrows the size//2 channels of the other tower next to its own (the halo), normalizes its
channels plus the halo with an ordinary LRN and keeps its own channels of the result: the same
numbers as the single-process layer. Backward: the halo's copies feed the other tower's channels,
so their gradient is sent home and added there.

    forward:   x_ext = [x_g, halo] (tower 0) or [halo, x_g] (tower 1);  out_g = LRN(x_ext)[own]
    backward:  dx_ext = LRN'(dout padded with zeros on the halo);  dx_g = dx_ext[own] + the other
               tower's dx_ext[its halo]

Shapes: x (N, C_g, H, W) or (N, F_g); cached: the input shape (TowerGather), the inner LRN's own
cache (TowerLRN). Both run the same code for NumPy and CuPy arrays: the exchange moves either kind.
"""
import numpy as np

from alexnet.engine import backend
from alexnet.engine.layer import Layer


class TowerGather(Layer):
    def __init__(self, exchange, counts, replicated=False):
        super().__init__()
        self.exchange, self.counts, self.replicated = exchange, tuple(int(c) for c in counts), replicated
        self.bounds = np.cumsum((0,) + self.counts)

    def describe(self):
        kind = "own part of the whole gradient" if self.replicated else "gradients summed, own part kept"
        return f"TowerGather({' + '.join(map(str, self.counts))}; {kind})"

    def check_input_shape(self, in_shape):
        if len(in_shape) < 1 or in_shape[0] != self.counts[self.exchange.tower]:
            self._fail(f"expected {self.counts[self.exchange.tower]} channels of tower {self.exchange.tower}", in_shape)

    def output_shape(self, in_shape):
        self.check_input_shape(in_shape)
        return (sum(self.counts),) + tuple(in_shape[1:])

    def forward_numpy(self, x, train):
        return self.exchange.gather(x, self.counts, f"the activations into {self.name}"), x.shape

    def backward_numpy(self, dout, need_dx):
        if self.replicated:
            g = self.exchange.tower
            return backend.get_array_module(dout).ascontiguousarray(dout[:, self.bounds[g]:self.bounds[g + 1]])
        return self.exchange.scatter_sum(dout, self.counts, f"the input gradients of {self.name}")

    def forward_cuda(self, rt, x, train):
        return self.forward_numpy(x, train)

    def backward_cuda(self, rt, dout, need_dx):
        return self.backward_numpy(dout, need_dx)


class TowerLRN(Layer):
    def __init__(self, lrn, exchange):
        super().__init__()
        self.lrn, self.exchange = lrn, exchange
        self.halo = lrn.size // 2

    def describe(self):
        return f"{self.lrn.describe()} + {self.halo} channels of the other tower"

    def forward(self, x, train=False, keep_cache=True, runtime=None):
        self._keep = keep_cache            # the inner LRN keeps (or drops) the cache the backward needs
        return super().forward(x, train, keep_cache=keep_cache, runtime=runtime)

    def _own(self, channels):
        """The slice of this tower's channels in the extended tensor."""
        lo = 0 if self.exchange.tower == 0 else self.halo
        return slice(lo, lo + channels)

    def _forward(self, x, train, runtime):
        xp = backend.get_array_module(x)
        halo = self.exchange.halo(x, self.halo, f"the LRN halo of {self.name}")
        x_ext = xp.concatenate([x, halo] if self.exchange.tower == 0 else [halo, x], axis=1)
        out = self.lrn.forward(x_ext, train, keep_cache=self._keep, runtime=runtime)  # (N, C_g + halo, H, W)
        return xp.ascontiguousarray(out[:, self._own(x.shape[1])]), x.shape

    def _backward(self, dout, runtime):
        xp = backend.get_array_module(dout)
        n, c = dout.shape[:2]
        own = self._own(c)
        dout_ext = xp.zeros((n, c + self.halo) + dout.shape[2:], dout.dtype)
        dout_ext[:, own] = dout
        dx_ext = self.lrn.backward(dout_ext, runtime=runtime)
        halo = slice(c, c + self.halo) if self.exchange.tower == 0 else slice(0, self.halo)
        edge = slice(c - self.halo, c) if self.exchange.tower == 0 else slice(0, self.halo)
        dx = xp.ascontiguousarray(dx_ext[:, own])
        dx[:, edge] += self.exchange.halo_back(xp.ascontiguousarray(dx_ext[:, halo]),
                                                f"the LRN halo gradient of {self.name}")
        return dx

    def forward_numpy(self, x, train):
        return self._forward(x, train, None)

    def backward_numpy(self, dout, need_dx):
        return self._backward(dout, None)

    def forward_cuda(self, rt, x, train):
        return self._forward(x, train, rt)

    def backward_cuda(self, rt, dout, need_dx):
        return self._backward(dout, rt)
