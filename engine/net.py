"""Sequential: a list of named layers, run forward in order and backward in reverse.

The backward loop is written out (as in llm.c) so the chain rule is visible: each layer turns the
gradient of the loss w.r.t. its output into the gradient w.r.t. its input and writes its own
parameter gradients on the way.

`to(device, precision)` chooses where the parameters live and, on the GPU, the precision
(engine/precision.py). Under bf16 the net takes and returns float32 (the loss stays float32) and
stores everything between its first and last layer as BF16: `forward` converts its input once and
its output back, `backward` its gradient likewise (kernels/cast.cu).
A layer may take over the one after it (engine/layer.py, absorb: a ReLU after a Conv2d or Dense
runs inside them, and on the CPU a max-pool after an LRN); the net offers each layer its successor
once, here.
"""
from alexnet.engine import backend, precision as precisions
from alexnet.kernels import ops


class Sequential:
    def __init__(self, layers, names=None):
        names = names or [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"Sequential: layer names must be unique, got {names}")
        for layer, name in zip(layers, names):
            layer.name = name
        self.layers = list(layers)
        self.device = "cpu"
        self.precision = precisions.DEFAULT
        self._runtime = None          # set_precision's runtime, for the CPU harness
        for layer in self.layers:
            layer.unfuse()
        for layer, following in zip(self.layers, self.layers[1:]):
            layer.absorb(following)

    def __getitem__(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def forward(self, x, train=False, keep_cache=True, runtime=None):
        """The layers in order. train=False (the default) applies no dropout; keep_cache=False is
        inference that needs no gradients: each layer drops its cache (engine/layer.py)."""
        rt = runtime or backend.kernel_runtime_of(x)
        x = self.to_storage(rt, x)
        for layer in self.layers:
            x = layer.forward(x, train, keep_cache=keep_cache, runtime=runtime)
        return self.from_storage(rt, x)

    def backward(self, dout, need_dx=True, runtime=None, after_layer=None):
        """Backpropagate dL/d(output); returns dL/d(input), or None with need_dx=False (saves the
        first layer's input gradient, which training never uses: for AlexNet, conv1's col2im).
        Works after any forward that kept its caches, training or not. `after_layer(layer)` is
        called as each layer's gradients are written: data-parallel training starts summing them
        over the processes there, while the layers below are still working (engine/grad_sync.py)."""
        rt = runtime or backend.kernel_runtime_of(dout)
        dout = self.to_storage(rt, dout)
        for i in reversed(range(len(self.layers))):
            dout = self.layers[i].backward(dout, need_dx=need_dx or i > 0, runtime=runtime)
            if after_layer is not None:
                after_layer(self.layers[i])
        return self.from_storage(rt, dout) if dout is not None else None

    def to_storage(self, rt, x):
        """An input or a gradient arriving from outside, as the layers store it (BF16 under bf16 on
        the kernel runtime `rt`; as it is on the NumPy path, rt None)."""
        if rt is None or self.precision != "bf16" or x.dtype != "float32":
            return x
        return ops.cast(rt, x, ops.BF16, who=f"{type(self).__name__} input")

    def from_storage(self, rt, x):
        """An output or input gradient leaving the net: float32 whatever the layers stored."""
        if rt is None or x.dtype != ops.BF16:
            return x
        return ops.cast(rt, x, "float32", who=f"{type(self).__name__} output")

    # ---- parameters ------------------------------------------------------------------------------
    def named_parameters(self):
        """(full name like "conv1.W", layer, key) for every parameter tensor, in layer order."""
        for layer in self.layers:
            for key in layer.params:
                yield f"{layer.name}.{key}", layer, key

    def num_params(self):
        return sum(layer.num_params() for layer in self.layers)

    def state_dict(self):
        """name -> NumPy copy of every parameter tensor."""
        return {full: backend.to_numpy(layer.params[key]).copy()
                for full, layer, key in self.named_parameters()}

    def load_state_dict(self, state):
        own = {full: (layer, key) for full, layer, key in self.named_parameters()}
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise ValueError(f"state dict does not match the model: missing {missing}, "
                             f"unexpected {extra}")
        for full, (layer, key) in own.items():
            p = layer.params[key]
            if tuple(state[full].shape) != tuple(p.shape):
                raise ValueError(f"state dict tensor {full} has shape {tuple(state[full].shape)}, "
                                 f"the model needs {tuple(p.shape)}")
        for full, (layer, key) in own.items():
            p = layer.params[key]
            p[...] = backend.get_array_module(p).asarray(state[full], dtype=p.dtype)
        self._refresh_low_params()

    def astype(self, dtype):
        """Cast every parameter (float64 for gradient checks); returns self."""
        for layer in self.layers:
            for key in layer.params:
                layer.params[key] = layer.params[key].astype(dtype)
        return self

    def to(self, device, precision=precisions.DEFAULT):
        """Move every parameter to "cpu" (NumPy) or "cuda" (CuPy), to be computed in `precision`
        (engine/precision.py: "fp32", or on the GPU "tf32" or "bf16"); returns self."""
        precisions.check(precision, device)
        for layer in self.layers:
            for key in layer.params:
                layer.params[key] = backend.to_device(layer.params[key], device)
            layer.grads = {}
            layer.cache = None
        self.device = device
        return self.set_precision(precision)

    def set_precision(self, precision, runtime=None):
        """Compute in `precision` from now on, where the parameters are (`to` checks that the device
        can). `runtime` is for kernels on NumPy arrays: the CPU harness runs a model's CUDA path in
        any precision (tests); otherwise the parameters' own device decides. Returns self."""
        for layer in self.layers:
            layer.precision = precision
        self.precision, self._runtime = precision, runtime
        self._refresh_low_params()
        return self

    def _refresh_low_params(self):
        """Under bf16, each layer's BF16 copies of the weights its products read, made from the
        float32 masters (after a move or a load; the SGD kernel keeps them current after a step)."""
        for layer in self.layers:
            layer.low_params = {}
            if self.precision == "bf16":
                for key in layer.low_param_keys:
                    p = layer.params[key]
                    rt = self._runtime or backend.kernel_runtime_of(p)
                    layer.low_params[key] = ops.cast(rt, p, ops.BF16, who=layer.name)

    # ---- randomness ------------------------------------------------------------------------------
    def rng_state(self):
        """JSON-serialisable state of every layer that draws random numbers (the dropout layers)."""
        states = {layer.name: layer.rng_state() for layer in self.layers}
        return {name: state for name, state in states.items() if state is not None}

    def set_rng_state(self, state):
        for layer in self.layers:
            if layer.rng_state() is not None:
                if layer.name not in state:
                    raise ValueError(f"RNG state has no entry for layer {layer.name}")
                layer.set_rng_state(state[layer.name])

    # ---- description -------------------------------------------------------------------------------
    def summary_rows(self, in_shape):
        """(name, description, output shape, parameters, multiply-adds) per layer for one sample."""
        rows, shape = [], tuple(in_shape)
        for layer in self.layers:
            macs = layer.macs(shape)
            shape = layer.output_shape(shape)
            rows.append((layer.name, layer.describe(), shape, layer.num_params(), macs))
        return rows

    def macs(self, in_shape):
        return sum(row[4] for row in self.summary_rows(in_shape))

    def __repr__(self):
        return "Sequential(\n" + "\n".join(f"  {layer!r}" for layer in self.layers) + "\n)"
