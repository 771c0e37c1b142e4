"""The paper's model parallelism: AlexNet split over two ranks, one tower each (section 3.2, Figure 2).

"We spread the net across two GPUs ... each GPU holds half of the kernels (or neurons), and the
GPUs communicate only in certain layers." Tower g runs on rank g (its own GPU with --device cuda)
and holds half of every layer of the single-process two-tower AlexNet (groups=2), cut from it:

    tower g                                 its part of the single-process layer      trades
    conv1   3 -> 48, ReLU, LRN, pool        W[48g : 48g+48] (the image is on both)    LRN halo
    conv2   48 -> 128, ReLU, LRN, pool      group g of conv2 (groups=2)               LRN halo
    conv3   256 -> 192, ReLU                W[192g : ...]: reads both towers          allgather / reduce
    conv4   192 -> 192, conv5 192 -> 128    group g (groups=2), pool5
    fc6     9216 -> 2048, ReLU, dropout     W[2048g : ...]: reads both towers         allgather / reduce
    fc7     4096 -> 2048, ReLU, dropout     reads both towers                         allgather / reduce
    fc8     4096 -> classes / 2             reads both towers                         allgather / reduce
    logits  both towers' halves, on both ranks (the loss is computed on each)         allgather

so forward and backward compute what the single-process model computes (layers/towers.py says how
the exchanges keep LRN and the shared layers exact), the dropout layers draw the bits of their own
units (layers/dropout.py place()), and the optimizer updates each tower's half on its own rank:
nothing else is summed. Every cut is along the first axis of W and b (the output channels or
neurons), so the whole model's tensors are the towers' halves one after the other, which is how
checkpoints store them: the ordinary single-model format.
"""
import copy

import numpy as np

from alexnet.engine.net import Sequential
from alexnet.engine.threads import shares
from alexnet.layers import LRN, Conv2d, Dense, Dropout, Flatten
from alexnet.layers.towers import TowerGather, TowerLRN


def _cut(layer, in_channels, counts, tower, cuts):
    """This tower's part of `layer` (a Conv2d or Dense whose outputs are split as `counts`), reading
    `in_channels` inputs: rows of the layer's W and b. The cut is recorded in `cuts` for the whole
    model's tensors."""
    lo, out = sum(counts[:tower]), counts[tower]
    dtype = layer.params["W"].dtype
    if isinstance(layer, Conv2d):
        part = Conv2d(in_channels, out, layer.kernel_size, layer.stride, layer.padding, 1, dtype, layer.algorithm)
    else:
        part = Dense(in_channels, out, dtype)
    for key, value in layer.params.items():
        part.params[key] = np.ascontiguousarray(value[lo:lo + out])
        cuts[f"{layer.name}.{key}"] = counts
    return part


class TowerModel:
    """Tower `exchange.tower` of `model` (a two-tower AlexNet-shaped Network). It trains like a
    Sequential (forward, backward, named_parameters: this tower's halves) and saves like the whole
    model (state_dict gathers the halves; collective: both ranks call it)."""

    def __init__(self, model, exchange):
        self.exchange = exchange
        self.arch, self.num_classes = model.arch, model.num_classes
        self.input_size, self.resize_size, self.options = model.input_size, model.resize_size, model.options
        self.full_params = model.num_params()
        self.cuts = {}                     # full tensor name -> its row counts per tower
        layers, names = [], []
        split = None                       # None: the whole activation is on every tower, else its counts
        shape = (3, model.input_size, model.input_size)
        for layer in model.layers:
            if isinstance(layer, (Conv2d, Dense)) and split is not None and not self._grouped(layer):
                layers.append(TowerGather(exchange, split))          # a layer that reads both towers
                names.append(f"gather_{layer.name}")
            part, split = self._part(layer, split, shape)
            shape = layer.output_shape(shape)
            layers.append(part)
            names.append(layer.name)
        if split is not None:
            layers.append(TowerGather(exchange, split, replicated=True))
            names.append("gather_logits")
        self.net = Sequential(layers, names)
        self.layers, self.device = self.net.layers, self.net.device

    def _grouped(self, layer):
        """Whether a layer's groups are the towers: each tower convolves its own half."""
        return isinstance(layer, Conv2d) and layer.groups == self.exchange.towers

    def _part(self, layer, split, shape):
        """(this tower's part of `layer`, how its output is split over the towers afterwards), given
        how its input is split (`split`, None: whole on every tower) and its input's `shape`."""
        tower, towers, name = self.exchange.tower, self.exchange.towers, layer.name
        if isinstance(layer, (Conv2d, Dense)):
            out = layer.out_channels if isinstance(layer, Conv2d) else layer.out_features
            counts = [hi - lo for lo, hi in shares(out, towers)]
            grouped = self._grouped(layer)
            if isinstance(layer, Conv2d) and layer.groups not in (1, towers):
                raise ValueError(f"{name}: groups={layer.groups} does not split over {towers} towers")
            if grouped and split is None:
                raise ValueError(f"{name}: a grouped layer needs its input split over the towers")
            if grouped and split[tower] != layer.in_channels // towers:
                raise ValueError(f"{name}: its groups do not match the towers' {split} channels")
            in_channels = layer.in_channels // towers if grouped else \
                (layer.in_channels if isinstance(layer, Conv2d) else layer.in_features)
            return _cut(layer, in_channels, counts, tower, self.cuts), counts
        if split is None:
            return copy.deepcopy(layer), split
        if isinstance(layer, LRN):
            return TowerLRN(LRN(layer.size, layer.alpha, layer.beta, layer.k), self.exchange), split
        if isinstance(layer, Dropout):
            part = Dropout(layer.p, seed=layer.seed, variant=layer.variant)
            part.place(0, sum(split[:tower]), sum(split))
            return part, split
        if isinstance(layer, Flatten):
            return copy.deepcopy(layer), [c * int(np.prod(shape[1:])) for c in split]
        return copy.deepcopy(layer), split                          # ReLU, tanh, max-pool: channel by channel

    # ---- training: this tower's half ---------------------------------------------------------------
    def forward(self, x, train=False, keep_cache=True, runtime=None):
        return self.net.forward(x, train, keep_cache, runtime)

    def backward(self, dout, need_dx=True, runtime=None, after_layer=None):
        """dL/d(input): both towers read the whole input (conv1), each backward gives its towers'
        share, and the input gradient is their sum (training, need_dx=False, skips it)."""
        dx = self.net.backward(dout, need_dx, runtime, after_layer)
        return self.exchange.sum(dx, "the towers' input gradients") if need_dx else dx

    def named_parameters(self):
        return self.net.named_parameters()

    def num_params(self):
        return self.full_params

    def to(self, device, precision="fp32"):
        self.net.to(device, precision)
        self.device = device
        return self

    def rng_state(self):
        return self.net.rng_state()

    def set_rng_state(self, state):
        self.net.set_rng_state(state)

    # ---- the whole model's tensors ---------------------------------------------------------------------
    def gather_tensors(self, tensors):
        """{full name: this tower's rows} -> {full name: the whole tensor} (collective)."""
        from alexnet.engine import backend

        whole = {}
        for name, part in tensors.items():
            part = np.ascontiguousarray(backend.to_numpy(part))
            rows = part.size // part.shape[0]
            flat = self.exchange.world.allgatherv(part.reshape(-1), [c * rows for c in self.cuts[name]],
                                                  f"the towers' halves of {name}")
            whole[name] = flat.reshape((sum(self.cuts[name]),) + part.shape[1:])
        return whole

    def own_tensors(self, tensors):
        """{full name: the whole tensor} -> {full name: this tower's rows}."""
        own = {}
        for name, whole in tensors.items():
            if name not in self.cuts:
                raise ValueError(f"state dict does not match the model: unexpected {name}")
            lo, hi = np.cumsum([0] + self.cuts[name])[self.exchange.tower:self.exchange.tower + 2]
            own[name] = whole[lo:hi]
        return own

    def state_dict(self):
        return self.gather_tensors(self.net.state_dict())

    def load_state_dict(self, state):
        self.net.load_state_dict(self.own_tensors(state))
