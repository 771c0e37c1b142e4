"""Sequential: a list of named layers, run forward in order and backward in reverse.

The backward loop is written out (as in llm.c) so the chain rule is visible: each layer turns the
gradient of the loss w.r.t. its output into the gradient w.r.t. its input and writes its own
parameter gradients on the way.
"""
from alexnet.engine import backend


class Sequential:
    def __init__(self, layers, names=None):
        names = names or [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"Sequential: layer names must be unique, got {names}")
        for layer, name in zip(layers, names):
            layer.name = name
        self.layers = list(layers)
        self.device = "cpu"

    def __getitem__(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def forward(self, x, train=False, keep_cache=True, runtime=None):
        """The layers in order. train=False (the default) applies no dropout; keep_cache=False is
        inference that needs no gradients: each layer drops its cache (engine/layer.py)."""
        for layer in self.layers:
            x = layer.forward(x, train, keep_cache=keep_cache, runtime=runtime)
        return x

    def backward(self, dout, need_dx=True, runtime=None, after_layer=None):
        """Backpropagate dL/d(output); returns dL/d(input), or None with need_dx=False (saves the
        first layer's input gradient, which training never uses: for AlexNet, conv1's col2im).
        Works after any forward that kept its caches, training or not. `after_layer(layer)` is
        called as each layer's gradients are written: data-parallel training starts summing them
        over the processes there, while the layers below are still working (engine/grad_sync.py)."""
        for i in reversed(range(len(self.layers))):
            dout = self.layers[i].backward(dout, need_dx=need_dx or i > 0, runtime=runtime)
            if after_layer is not None:
                after_layer(self.layers[i])
        return dout

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

    def astype(self, dtype):
        """Cast every parameter (float64 for gradient checks); returns self."""
        for layer in self.layers:
            for key in layer.params:
                layer.params[key] = layer.params[key].astype(dtype)
        return self

    def to(self, device):
        """Move every parameter to "cpu" (NumPy) or "cuda" (CuPy); returns self."""
        for layer in self.layers:
            for key in layer.params:
                layer.params[key] = backend.to_device(layer.params[key], device)
            layer.grads = {}
            layer.cache = None
        self.device = device
        return self

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
