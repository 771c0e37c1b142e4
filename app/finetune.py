"""Fine-tuning: a run that starts from the weights of a checkpoint (imported or trained here).

    alexnet train --data DIR --init-from CKPT [--freeze conv1..conv5] [--pretrained-lr-mult 0.1]

The checkpoint's network must be the one being trained (same --model and architecture options).
Every layer takes the checkpoint's weights, except the last one when the classes differ (names or
number): that one, the new head, keeps its fresh initialisation. The checkpoint's input
normalisation (its training mean and input scale) comes with the weights, since the weights were
learned on inputs normalised that way (an imported torchvision or Caffe checkpoint has its
normalisation folded into conv1 and the mean). Learning rates: frozen layers 0 (their weights do
not move), the other loaded layers the learning rate times --pretrained-lr-mult (default 0.1, the
usual practice: they are already near a good solution), the new head the full rate.
"""
import numpy as np

from alexnet.app import checkpoint as ckpt
from alexnet.app.errors import UserError
from alexnet.models.alexnet import changed_options

DEFAULT_PRETRAINED_LR_MULT = 0.1


def weight_layers(model):
    """Names of the layers with parameters, in order."""
    return [layer.name for layer in model.layers if layer.params]


def parse_freeze(parts, model):
    """--freeze, split at its commas: layer names, and ranges A..B of layers with weights in model
    order (conv1..conv5). Returns the names, in model order."""
    return _chosen_layers(parts, weight_layers(model))


def _chosen_layers(parts, names):
    chosen = set()
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if ".." in part:
            first, last = (x.strip() for x in part.split("..", 1))
            for end in (first, last):
                if end not in names:
                    raise UserError(f"--freeze: no layer {end!r} with weights (the model has {', '.join(names)})")
            i, j = names.index(first), names.index(last)
            if i > j:
                raise UserError(f"--freeze: {part} runs backwards (the order is {', '.join(names)})")
            chosen.update(names[i:j + 1])
        elif part in names:
            chosen.add(part)
        else:
            raise UserError(f"--freeze: no layer {part!r} with weights (the model has {', '.join(names)})")
    return [n for n in names if n in chosen]


def same_layers(asked, stored, model_name, model_options):
    """Whether two --freeze values name the same layers of model `model_name` (conv1..conv3 and
    conv1,conv2,conv3 do): a resumed run refuses only a --freeze that changes something."""
    from alexnet.models.registry import parameter_shapes

    names = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in parameter_shapes(model_name, 2, **model_options)))
    return _chosen_layers(asked, names) == _chosen_layers(stored, names)


def start_from(path, model, model_name, model_options, classes):
    """Load checkpoint `path`'s weights into `model` (the head too when the classes are the same).
    Returns (names of the layers loaded, the head's name if it was replaced else None, the
    checkpoint's preprocessing: app/preprocess.py)."""
    from alexnet.app.preprocess import Preprocessing

    arrays, meta = ckpt.load(path)
    spec = ckpt.model_spec(path, meta)
    if spec.arch != model_name:
        raise UserError(f"--init-from {path} holds a {spec.arch} network; train it with --model {spec.arch}")
    theirs, ours = changed_options(spec.options), changed_options(model_options)
    if theirs != ours:
        raise UserError(f"--init-from {path} was trained with architecture options {theirs or 'the default'}, "
                        f"this run has {ours or 'the default'}")
    weights = ckpt.split(arrays, "model")
    head = weight_layers(model)[-1]
    replace_head = spec.classes != list(classes)
    loaded = []
    for layer in model.layers:
        if not layer.params or (replace_head and layer.name == head):
            continue
        for key, p in layer.params.items():
            w = weights.get(f"{layer.name}.{key}")
            if w is None or w.shape != p.shape:
                raise UserError(f"--init-from {path}: {layer.name}.{key} is "
                                f"{'missing' if w is None else tuple(w.shape)}, the model needs {tuple(p.shape)}")
            if not np.isfinite(w).all():
                raise UserError(f"--init-from {path}: {layer.name}.{key} has non-finite values")
            p[...] = w.astype(p.dtype)
        loaded.append(layer.name)
    prep = Preprocessing.from_checkpoint(arrays, meta, model, f"--init-from {path}")
    return loaded, (head if replace_head else None), prep


def learning_rate_multipliers(loaded, frozen, pretrained_lr_mult, new_head=None):
    """{layer: multiplier}: frozen 0, other loaded layers pretrained_lr_mult; the rest (the new
    head) stays at 1. Refused, saying why, when the run could not learn: a frozen new head stays
    as randomly initialised, and a run whose every layer has rate 0 changes nothing."""
    if new_head is not None and new_head in frozen:
        raise UserError(f"--freeze {new_head}: {new_head} is the new head for this data's classes, freshly "
                        f"initialised; frozen, it would stay random (freeze the layers below it)")
    mults = {name: pretrained_lr_mult for name in loaded}
    mults.update({name: 0.0 for name in frozen})
    if new_head is None and mults and all(m == 0 for m in mults.values()):
        why = "--freeze covers every layer with weights" if set(frozen) >= set(loaded) else \
            "--pretrained-lr-mult 0 stops every layer --freeze leaves"
        raise UserError(f"nothing would learn: {why} (the head is the checkpoint's, as the classes are the same)")
    return mults
