"""Published AlexNet weights as checkpoints of ours: torchvision's state dict and Caffe's bvlc_alexnet.

An import writes an ordinary checkpoint (app/checkpoint.py: model/<layer>.<param>, data/mean, meta),
so `alexnet predict`, `eval` and `export` use it like one trained here. What differs between the
sources is how they expect their input, and that is folded into the weights, so our pipeline
(RGB pixels 0..255, minus data/mean, times meta input_scale) feeds them unchanged:

torchvision (`alexnet-tv`, models/torchvision.py) expects RGB in [0, 1] normalised per channel:
    x_tv[c] = (p[c] / 255 - mean[c]) / std[c],   mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)
            = (p[c] - 255 mean[c]) / (255 std[c])
A per-channel std cannot be a scalar input_scale, but conv1 is linear in its input, so
    data/mean = 255 mean,   input_scale = 1,   conv1.W[:, c] = W_tv[:, c] / (255 std[c])
computes exactly torchvision's conv1 (its zero padding stays zero: x_tv = 0 where ours is 0).

Caffe's bvlc_alexnet (`alexnet`, the paper's two towers) expects BGR pixels 0..255 minus the
ImageNet mean: conv1's input channels are reversed (BGR -> RGB) and the mean goes to data/mean (the
channel means of Caffe's ilsvrc_2012_mean, or with `mean_image` its per-pixel mean image).
Its LRN layers are not ours: bvlc_alexnet's prototxt says local_size 5, alpha 1e-4, beta 0.75
and Caffe's default k = 1, i.e. b = a / (1 + 1e-4/5 * sum a^2)^0.75, where our alexnet has the
paper's b = a / (2 + 1e-4 * sum a^2)^0.75. Any two LRNs with the same size and beta differ only by
scalings that ReLU and max-pool pass through (both are positively homogeneous):
    ours(s a) = c * caffe(a)   for   s = sqrt(alpha' k / (alpha k')),   c = s (k' / k)^beta
(alpha, k ours; alpha' = alpha_caffe / size, k' Caffe's). So conv_i's W and b are multiplied by
s and the next conv's W divided by c: the imported net computes Caffe's function with our LRN.
The LRN settings are read from the .caffemodel itself, which stores every layer's parameters.

Both sources store fully connected weights as (out, in), like ours, and flatten pool5 in (C, H, W)
order, as we do: fc6 needs no reordering.
"""
import hashlib
import math
import os
import re
from collections import namedtuple
from functools import lru_cache
from pathlib import Path

import numpy as np

from alexnet.app.errors import UserError

TORCHVISION_MEAN = (0.485, 0.456, 0.406)        # RGB in [0, 1], torchvision's ImageNet models
TORCHVISION_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)   # ilsvrc_2012_mean's channel means
MAX_CLASS_NAMES_BYTES = 16 << 20      # --classes: ImageNet's 1000 names are 20 KB

# torchvision.models.AlexNet's modules (features.N / classifier.N) -> our layer names
TORCHVISION_LAYERS = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
                      "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}
TORCH_PARAMS = {"W": "weight", "b": "bias"}

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")

# What an import produced: the model it fills (arch, classes, its input and resize sizes and
# options, as checkpoints record them), the model/ arrays (float32, or float64 from a float64
# source), data/mean ((1, 1, 3) or (H, W, 3), RGB) and what was done to the weights.
Imported = namedtuple("Imported", "arch num_classes input_size resize_size options weights mean notes")


@lru_cache(maxsize=2)
def _target(arch, num_classes):
    """The model an import fills, built once per architecture and class count: only its shapes and
    layer settings are read, so its weights stay untouched zeros. Built only once the file's
    arrays have the architecture's shapes for that class count (_class_count): a count the
    file declares must not decide what is allocated before it is checked."""
    from alexnet.models.registry import build_model

    return build_model(arch, num_classes, init=None)


def _class_count(arch, shape, source):
    """The number of classes a file's last weight array of `shape` (named `source`) gives network
    `arch`, checked against the architecture before any model of that many classes is made: at
    least 2, and the array (classes, in) with the architecture's `in`. Returns (the count, the
    parameter shapes of `arch` with it)."""
    from alexnet.models.registry import parameter_shapes

    count = int(shape[0]) if len(shape) == 2 else 0
    shapes = parameter_shapes(arch, max(count, 2))
    last = list(shapes)[-2]                       # the last layer's weight (then its bias)
    if count < 2 or tuple(shape) != shapes[last]:
        raise UserError(f"not {arch}'s network: {source} has shape {tuple(shape)}, {arch}'s {last} "
                        f"needs (classes >= 2, {shapes[last][1]})")
    return count, shapes


def _imported(model, weights, mean, notes):
    return Imported(model.arch, model.num_classes, model.input_size, model.resize_size,
                    dict(getattr(model, "options", {})), weights, mean, notes)


# ---- class names ---------------------------------------------------------------------------------
def imagenet_classes():
    """The 1000 ILSVRC-2012 class names in the order of the published models (WordNet id order),
    e.g. 0 "tench", 1 "goldfish", 999 "toilet tissue"."""
    names = []
    for line in CLASSES_FILE.read_text(encoding="utf-8").splitlines():
        index, _, name = line.partition(", ")
        if int(index) != len(names):          # the file numbers its lines: a lost line shows here
            raise RuntimeError(f"{CLASSES_FILE} is damaged at line {len(names) + 1}")
        names.append(name.replace("_", " "))
    return names


def read_class_names(path):
    """The class names in text file `path`, one per line (blank lines skipped), read with a size cap."""
    from alexnet.app.files import read_capped

    try:
        return [line.strip() for line in read_capped(path, MAX_CLASS_NAMES_BYTES, "class names file")
                .decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise UserError(f"cannot read class names from {path}: {e}") from None


def class_names(num_classes, names=None, path=None):
    """Names for the checkpoint's meta: `names` (read from `path`: read_class_names), else
    ImageNet's for 1000 classes, else their numbers."""
    if names is not None:
        if len(names) != num_classes:
            raise UserError(f"{path} names {len(names)} classes, the model has {num_classes}")
        return names
    if num_classes == 1000:
        return imagenet_classes()
    return [str(i) for i in range(num_classes)]


# ---- torchvision ---------------------------------------------------------------------------------
def check_hash_in_name(path):
    """torchvision's files carry the start of their SHA-256 in the name (alexnet-owt-7be5be79.pth),
    as torch.hub checks it: a truncated or altered download fails here with a clear message."""
    match = re.search(r"-([0-9a-f]{8,64})\.pth?$", os.path.basename(path))
    if not match:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise UserError(f"{path} is damaged: its SHA-256 starts with {digest.hexdigest()[:len(match.group(1))]}, "
                        f"its name says {match.group(1)} (download it again)")
    return match.group(1)


def _source_dtype(a):
    """float64 sources stay float64 (exact checks); every other float type becomes float32."""
    return np.float64 if a.dtype == np.float64 else np.float32


def from_torchvision(state):
    """A torchvision AlexNet state dict (name -> array, as app/torch_format.load returns it) ->
    Imported for `alexnet-tv`, with torchvision's input normalisation folded into conv1."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]                      # a training checkpoint around the weights
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise UserError("the file holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}    # saved from nn.DataParallel
    wanted = {f"{tv}.{TORCH_PARAMS[p]}": f"{ours}.{p}" for ours, tv in TORCHVISION_LAYERS.items() for p in "Wb"}
    missing, extra = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted))
    if missing or extra:
        raise UserError(f"not torchvision's AlexNet: missing {missing[:3]}, unexpected {extra[:3]}")
    count, own = _class_count("alexnet-tv", state["classifier.6.weight"].shape, "classifier.6.weight")
    weights = {}
    for key, name in wanted.items():
        a = state[key]
        if a.shape != own[name]:
            raise UserError(f"not torchvision's AlexNet: {key} has shape {a.shape}, alexnet-tv's {name} "
                            f"needs {own[name]}")
        weights[name] = a.astype(_source_dtype(a), copy=False)
    model = _target("alexnet-tv", count)
    # x_tv = x_ours / (255 std): divide conv1's weights per input channel (in float64, rounded once)
    scale = 255.0 * np.asarray(TORCHVISION_STD)
    W = weights["conv1.W"]
    weights["conv1.W"] = (W.astype(np.float64) / scale[None, :, None, None]).astype(W.dtype)
    mean = (255.0 * np.asarray(TORCHVISION_MEAN, np.float32)).reshape(1, 1, 3)
    notes = ["input: RGB 0..255 minus 255 * torchvision's mean (123.675, 116.28, 103.53); torchvision's "
             "1 / (255 std) folded into conv1's input channels"]
    return _imported(model, weights, mean, notes)


# ---- Caffe ---------------------------------------------------------------------------------------
# Caffe layer types in the paper's net, by the letter they take in the layer sequence below
_CAFFE_ROLES = {"Convolution": "C", "LRN": "N", "Pooling": "P", "InnerProduct": "F"}
# Caffe layers that carry no weights and compute nothing our net lacks (ReLU and dropout are part of
# ours; data, loss and accuracy layers are the training harness around the net)
_CAFFE_PASSIVE = {"ReLU", "Dropout", "Data", "ImageData", "Input", "MemoryData", "HDF5Data", "WindowData",
                  "DummyData", "Accuracy", "SoftmaxWithLoss", "Softmax", "Silence", "Split"}
_PAPER_SEQUENCE = "CNPCNPCCCPFFF"          # conv1 LRN pool, conv2 LRN pool, conv3, conv4, conv5 pool, fc6-8


def _pair(single, h, w, default):
    """Caffe's (h, w) of a kernel/stride/pad: the _h/_w fields when set, else the repeated field."""
    if h or w:
        return (int(h), int(w))
    values = list(single) if hasattr(single, "__len__") else [single]
    if not values:
        return (default, default)
    return (int(values[0]), int(values[-1]))


def _check_conv(layer, ours):
    p = layer.params
    kernel = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 0)
    stride = _pair(p.stride, p.stride_h, p.stride_w, 1)
    pad = _pair(p.pad, p.pad_h, p.pad_w, 0)
    got = (kernel, stride, pad, p.group)
    want = ((ours.kernel_size,) * 2, (ours.stride,) * 2, (ours.padding,) * 2, ours.groups)
    if got != want:
        raise UserError(f"Caffe layer {layer.name}: kernel {kernel}, stride {stride}, pad {pad}, group {p.group}; "
                        f"alexnet's {ours.name} has kernel {ours.kernel_size}, stride {ours.stride}, pad "
                        f"{ours.padding}, groups {ours.groups}")


def _check_pool(layer, ours, in_size):
    p = layer.params
    kernel = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 0)
    stride = _pair(p.stride, p.stride_h, p.stride_w, 1)
    pad = _pair(p.pad, p.pad_h, p.pad_w, 0)
    if p.pool != 0 or p.global_pooling or kernel != (ours.kernel_size,) * 2 or stride != (ours.stride,) * 2 \
            or pad != (0, 0):
        raise UserError(f"Caffe layer {layer.name} is not a {ours.kernel_size}x{ours.kernel_size} stride "
                        f"{ours.stride} max-pool without padding, as alexnet's {ours.name} is")
    # Caffe rounds a pool's output size up, we round down: the same only where windows tile exactly
    K, S = ours.kernel_size, ours.stride
    if (in_size - K) % S:
        raise UserError(f"Caffe layer {layer.name}: on {in_size}x{in_size} inputs Caffe's ceil-mode pooling "
                        f"gives another size than alexnet's floor mode")


def _lrn_fold(layer, ours):
    """(s, c) taking Caffe's LRN to ours (module docstring); (1, 1) when they are the same."""
    p = layer.params
    if p.norm_region != 0:
        raise UserError(f"Caffe layer {layer.name} normalises within channels; alexnet's LRN is across channels")
    alpha_c, k_c = p.alpha / p.local_size, p.k         # Caffe divides alpha by the window size, we do not
    if p.local_size != ours.size or not math.isclose(p.beta, ours.beta, rel_tol=1e-6):
        raise UserError(f"Caffe layer {layer.name}: LRN size {p.local_size}, beta {p.beta:g}; alexnet's "
                        f"{ours.name} has size {ours.size}, beta {ours.beta:g}, which no rescaling can match")
    if alpha_c <= 0 or k_c <= 0:
        raise UserError(f"Caffe layer {layer.name}: LRN with alpha {p.alpha:g}, k {p.k:g} cannot be "
                        f"expressed with alexnet's (both must be positive)")
    s = math.sqrt(alpha_c * ours.k / (ours.alpha * k_c))
    c = s * (k_c / ours.k) ** ours.beta
    # float32 stores alpha 1e-4 as 1.0000000474974513e-4: values within that are the same LRN
    if math.isclose(s, 1.0, rel_tol=1e-6) and math.isclose(c, 1.0, rel_tol=1e-6):
        return 1.0, 1.0
    return s, c


def _caffe_weights(theirs, mine):
    """{"<layer>.W": ..., "<layer>.b": ...} from a Caffe layer's two blobs, in our layer's shapes."""
    if len(theirs.blobs) != 2:
        raise UserError(f"Caffe layer {theirs.name} has {len(theirs.blobs)} blobs, alexnet's {mine.name} has a "
                        f"weight and a bias")
    out = {}
    for key, blob in zip("Wb", theirs.blobs):
        want = mine.params[key].shape
        # legacy blobs are 4-d with leading 1s (fc weights 1x1xOUTxIN, biases 1x1x1xOUT)
        if blob.shape != want and (blob.size != int(np.prod(want)) or
                                   tuple(d for d in blob.shape if d != 1) != tuple(d for d in want if d != 1)):
            towers = " (bvlc_alexnet's two towers: group 2)" if mine.params["W"].ndim == 4 and mine.groups > 1 else ""
            raise UserError(f"Caffe layer {theirs.name}: blob {'weights' if key == 'W' else 'bias'} has shape "
                            f"{blob.shape}, alexnet's {mine.name}.{key} needs {want}{towers}")
        out[f"{mine.name}.{key}"] = blob.reshape(want).astype(_source_dtype(blob), copy=False)
    return out


def _paper_layers(layers):
    """The layers of a Caffe net that carry AlexNet's conv, LRN, pool and fully connected roles, in
    order; refused, saying why, when they are not the paper's sequence."""
    odd = [f"{layer.name} ({layer.type})" for layer in layers
           if layer.type not in _CAFFE_ROLES and layer.type not in _CAFFE_PASSIVE]
    if odd:
        raise UserError(f"not the paper's AlexNet: the Caffe net has layers alexnet has no counterpart for: "
                        f"{', '.join(odd[:3])}")
    net = [layer for layer in layers if layer.type in _CAFFE_ROLES]
    sequence = "".join(_CAFFE_ROLES[layer.type] for layer in net)
    if sequence == "CPNCPNCCCPFFF":
        raise UserError("this Caffe net pools before it normalises (CaffeNet, bvlc_reference_caffenet); "
                        "the paper's AlexNet and ours normalise first, as bvlc_alexnet does")
    if sequence != _PAPER_SEQUENCE:
        raise UserError(f"not the paper's AlexNet: its conv (C), LRN (N), pool (P) and fully connected (F) "
                        f"layers come as {sequence}, alexnet's as {_PAPER_SEQUENCE}")
    if len(net[-1].blobs) < 1 or net[-1].blobs[0].ndim < 2:
        raise UserError(f"Caffe layer {net[-1].name} has no weights: a .prototxt-only net, not a trained model?")
    return net


def _fold_lrns(pairs, ours, weights, notes):
    """Check each layer's settings against ours, and fold Caffe's LRNs into the convolutions around
    them (in place in `weights`; one factor per array, applied once)."""
    from alexnet.layers import LRN, Conv2d, MaxPool2d

    in_size, size = {}, ours.input_size                 # each layer's input side, for the pools
    for name, _, shape, _, _ in ours.summary_rows((3, size, size)):
        in_size[name] = size
        size = shape[1] if len(shape) == 3 else size
    mine_in_order = [mine for _, mine in pairs]
    factors = {}
    for i, (theirs, mine) in enumerate(pairs):
        if isinstance(mine, Conv2d):
            _check_conv(theirs, mine)
        elif isinstance(mine, MaxPool2d):
            _check_pool(theirs, mine, in_size[mine.name])
        elif isinstance(mine, LRN):
            s, c = _lrn_fold(theirs, mine)
            if (s, c) == (1.0, 1.0):
                continue
            # the conv whose ReLU output this LRN normalises, and the conv that reads the result
            before = next(m.name for m in reversed(mine_in_order[:i]) if isinstance(m, Conv2d))
            after = next(m.name for m in mine_in_order[i:] if isinstance(m, Conv2d))
            for key, factor in ((f"{before}.W", s), (f"{before}.b", s), (f"{after}.W", 1.0 / c)):
                factors[key] = factors.get(key, 1.0) * factor
            p = theirs.params
            notes.append(f"{theirs.name}: Caffe's LRN (size {p.local_size}, alpha {p.alpha:g}, beta {p.beta:g}, "
                         f"k {p.k:g}) as alexnet's {mine.name} ({mine.describe()}): {before} x {s:.6g}, "
                         f"{after}.W / {c:.6g}")
    for key, factor in factors.items():
        a = weights[key]
        weights[key] = (a.astype(np.float64) * factor).astype(a.dtype)


def from_caffe(layers, mean_image=None):
    """The layers of bvlc_alexnet.caffemodel (app/caffe_format.read_net) -> Imported for `alexnet`:
    BGR -> RGB in conv1, Caffe's LRN folded into the convolutions around it, the mean into data/mean."""
    from alexnet.layers import LRN, Conv2d, Dense, MaxPool2d

    net = _paper_layers(layers)
    shape = net[-1].blobs[0].shape
    if all(d == 1 for d in shape[:-2]):
        shape = shape[-2:]                       # a legacy blob's leading 1s (1x1xOUTxIN)
    count, _ = _class_count("alexnet", shape, f"Caffe layer {net[-1].name}'s weights")
    model = _target("alexnet", count)
    pairs = list(zip(net, [layer for layer in model.layers if isinstance(layer, (Conv2d, LRN, MaxPool2d, Dense))]))
    weights = {}
    # the weights' shapes first: a net of another shape (one tower, other widths) is told as such
    for theirs, mine in pairs:
        if isinstance(mine, (Conv2d, Dense)):
            weights.update(_caffe_weights(theirs, mine))
    notes = ["conv1's input channels reversed: Caffe's BGR to our RGB"]
    _fold_lrns(pairs, model, weights, notes)           # then each layer's settings, and the LRNs
    weights["conv1.W"] = np.ascontiguousarray(weights["conv1.W"][:, ::-1])      # BGR input channels -> RGB
    if mean_image is not None:
        mean = np.asarray(mean_image, np.float32)
        notes.append(f"data/mean: the per-pixel mean image {mean.shape[0]}x{mean.shape[1]} (RGB)")
    else:
        mean = np.asarray(CAFFE_MEAN_BGR[::-1], np.float32).reshape(1, 1, 3)
        notes.append("data/mean: ImageNet's channel means (Caffe's ilsvrc_2012_mean), RGB "
                     f"({', '.join(f'{v:.3f}' for v in CAFFE_MEAN_BGR[::-1])})")
    return _imported(model, weights, mean, notes)


# ---- the checkpoint ------------------------------------------------------------------------------
def checkpoint_contents(imported, classes, source):
    """(arrays, meta) for app/checkpoint.save: what load_model, predict and eval read."""
    arrays = {f"model/{k}": v for k, v in imported.weights.items()}
    arrays["data/mean"] = imported.mean
    meta = {"arch": imported.arch, "num_classes": imported.num_classes, "classes": list(classes),
            "input_size": imported.input_size, "resize_size": imported.resize_size, "input_scale": 1.0,
            # both sources trained with dropout scaled at training time: inference is the identity
            "dropout": 0.5, "dropout_variant": "inverted", "model_options": imported.options,
            "imported_from": source, "import_notes": list(imported.notes)}
    return arrays, meta
