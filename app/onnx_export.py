"""`alexnet export --onnx`: a checkpoint's network as an ONNX model (opset 17), for ONNX Runtime,
TensorRT, OpenVINO and the rest, built with the `onnx` package's graph API (onnx.helper).

Each of our layers becomes the ONNX operators computing the same function:

    Conv2d            Conv (pads, strides, group; W and b as initializers, same layout)
    ReLU, Tanh        Relu, Tanh
    LRN               LRN with alpha * size: ONNX divides alpha by size (as PyTorch and Caffe do),
                      we do not (docs/conventions.md); bias = our k; the window is the same for odd size
    MaxPool2d         MaxPool (floor mode, no padding)
    AdaptiveAvgPool2d nothing where it is the identity (alexnet-tv at 224: 6x6 in, 6x6 out), else
                      the two products of layers/avgpool.py, MatMul(P_H, MatMul(x, P_W^T)): exact for
                      any bins, where AveragePool only covers sizes that divide evenly
    Flatten           Flatten(axis=1): the same row-major (C, H, W) order
    Dense             Gemm(x, W, b, transB=1): W stays (out, in)
    Dropout           inference: nothing (inverted dropout), or Mul by 1 - p (the paper's variant)

The graph's input `image` is the tensor our model takes, float32 (N, 3, S, S) with a free batch
size, RGB, already normalised; its outputs are `logits` (N, classes) and `probabilities`, their
softmax. The normalisation lives in the model's metadata_props (so a caller can reproduce it):
`input_normalisation` states the formula, `mean_rgb` the three means (a per-pixel mean image is
averaged to them; `mean_kind` says which), `input_scale`, `resize_size` and `input_size` the crop,
`classes` the class names as JSON.
"""
import json

import numpy as np

from alexnet.app.errors import UserError

OPSET = 17
IR_VERSION = 8      # the IR version of opset 17 (onnx's versioning table): every current runtime reads it


def _onnx():
    try:
        import onnx
    except ImportError:
        raise UserError("exporting to ONNX needs the onnx package: pip install -e '.[onnx]'") from None
    return onnx


class _Graph:
    """The nodes and initializers of a graph being built, each named as the layer that makes it."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits = [], []

    def constant(self, name, value):
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


def _layer_nodes(graph, layer, x, shape):
    """Add `layer`'s operators reading tensor `x` (one sample of `shape`); returns its output's name."""
    from alexnet.engine.backend import to_numpy
    from alexnet.layers import LRN, AdaptiveAvgPool2d, Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU, Tanh
    from alexnet.layers.avgpool import pooling_matrix

    n, node, constant = layer.name, graph.node, graph.constant
    if isinstance(layer, (Conv2d, Dense)):
        W, b = (constant(f"{n}.{k}", to_numpy(layer.params[k])) for k in ("W", "b"))
        if isinstance(layer, Dense):
            return node("Gemm", [x, W, b], n, transB=1)
        K, P, St = layer.kernel_size, layer.padding, layer.stride
        return node("Conv", [x, W, b], n, kernel_shape=[K, K], strides=[St, St], pads=[P, P, P, P],
                    group=layer.groups)
    if isinstance(layer, ReLU):
        return node("Relu", [x], n)
    if isinstance(layer, Tanh):
        return node("Tanh", [x], n)
    if isinstance(layer, Flatten):
        return node("Flatten", [x], n, axis=1)
    if isinstance(layer, LRN):
        return node("LRN", [x], n, size=layer.size, alpha=layer.alpha * layer.size, beta=layer.beta, bias=layer.k)
    if isinstance(layer, MaxPool2d):
        K, St = layer.kernel_size, layer.stride
        return node("MaxPool", [x], n, kernel_shape=[K, K], strides=[St, St])
    if isinstance(layer, AdaptiveAvgPool2d):
        (H, W_), (OH, OW) = shape[1:], layer.output_size
        if (H, W_) == (OH, OW):
            return x
        # (N, C, H, W) @ (W, OW) -> (N, C, H, OW); (OH, H) @ that -> (N, C, OH, OW)
        cols = node("MatMul", [x, constant(f"{n}.P_W_T", pooling_matrix(W_, OW).T)], f"{n}.cols")
        return node("MatMul", [constant(f"{n}.P_H", pooling_matrix(H, OH)), cols], n)
    if isinstance(layer, Dropout):
        if layer.variant == "paper" and layer.p > 0:
            return node("Mul", [x, constant(f"{n}.scale", np.array(1.0 - layer.p))], n)
        return x
    raise UserError(f"cannot export layer {n} ({type(layer).__name__}) to ONNX")


def _metadata(model, meta, prep):
    """The model's metadata_props: what it is and how an image becomes its input."""
    S = prep.input_size
    mean = np.asarray(prep.mean, np.float64)
    return {
        "arch": model.arch,
        "num_classes": str(model.num_classes),
        "classes": json.dumps(meta.get("classes") or [str(i) for i in range(model.num_classes)]),
        "input": f"image: float32 (N, 3, {S}, {S}), NCHW, RGB",
        "input_normalisation": "image = (pixel - mean_rgb) * input_scale, pixels 0..255 RGB of the central "
                               f"{S}x{S} crop of the image with its shorter side resized to resize_size",
        # 4 decimals: the float32 mean's last digits are noise (255 * 0.485 is stored as 123.675003)
        "mean_rgb": json.dumps([round(float(v), 4) for v in mean.reshape(-1, 3).mean(axis=0)]),
        "mean_kind": "per-channel" if mean.shape[:2] == (1, 1) else
                     f"per-pixel {mean.shape[0]}x{mean.shape[1]} image in the checkpoint, averaged here",
        "input_scale": repr(float(prep.input_scale)),
        "input_size": str(S),
        "resize_size": str(prep.resize_size),
        "outputs": "logits (N, classes); probabilities = softmax(logits)",
    }


def to_onnx(model, meta, prep):
    """The ONNX ModelProto of `model` (a Network of our layers) with the checkpoint's meta and its
    preprocessing (app/preprocess.py), stated in the model's metadata."""
    onnx = _onnx()
    from onnx import TensorProto, helper

    S, graph, x = model.input_size, _Graph(), "image"
    shape = (3, S, S)                                          # one sample's shape after each layer
    for layer in model.layers:
        x = _layer_nodes(graph, layer, x, shape)
        shape = layer.output_shape(shape)
    logits = graph.node("Identity", [x], "logits")
    probs = graph.node("Softmax", [logits], "probabilities", axis=1)
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", model.num_classes])
               for name in (logits, probs)]
    onnx_graph = helper.make_graph(graph.nodes, f"{model.arch}",
                                   [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, S, S])],
                                   outputs, initializer=graph.inits)
    onnx_model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="alexnet-from-scratch",
                                   doc_string=f"{model.arch}, {model.num_classes} classes; input normalisation "
                                              f"in metadata_props")
    onnx_model.ir_version = IR_VERSION
    helper.set_model_props(onnx_model, _metadata(model, meta, prep))
    onnx.checker.check_model(onnx_model)
    return onnx_model


def export(checkpoint_path, out_path):
    """Write the ONNX model of a checkpoint to `out_path` (atomically, by app/files.py's rule: never
    over a device or the checkpoint itself); returns the ModelProto."""
    from alexnet.app.checkpoint import load_model
    from alexnet.app.files import atomic_write, check_output

    _onnx()                                                # before the weights are read
    check_output(out_path, [checkpoint_path], folder_must_exist=True)     # a file named by the user
    model, meta, prep = load_model(checkpoint_path)
    onnx_model = to_onnx(model, meta, prep)
    atomic_write(out_path, lambda f: f.write(onnx_model.SerializeToString()), [checkpoint_path])
    return onnx_model
