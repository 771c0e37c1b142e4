"""Every model by name: what `alexnet train --model`, checkpoints and the weight importers build.

    alexnet        the paper's network, two towers (models/alexnet.py)
    alexnet-small  the same layer sequence at CPU scale, 64x64 inputs (models/alexnet.py)
    alexnet-tv     torchvision's one-tower variant, for its published weights (models/torchvision.py)
    convnet4       Figure 1's four-layer network, 32x32 inputs (models/convnet4.py)

Architecture options (models/alexnet.py): groups, lrn, pool, activation; convnet4 takes activation.
"""
from alexnet.models import alexnet, convnet4, torchvision

# name -> (builder, the options it takes, (input size, resize size))
MODELS = {
    "alexnet": (alexnet.AlexNet, ("groups", "lrn", "pool", "activation"), alexnet.SIZES["alexnet"]),
    "alexnet-small": (alexnet.AlexNetSmall, ("groups", "lrn", "pool", "activation"), alexnet.SIZES["alexnet-small"]),
    "alexnet-tv": (torchvision.AlexNetTV, (), torchvision.SIZES),
    "convnet4": (convnet4.ConvNet4, ("activation",), convnet4.SIZES),
}
MODEL_NAMES = tuple(MODELS)


def _entry(name):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return MODELS[name]


def check_options(name, options):
    """ValueError unless model `name` takes every option in `options`."""
    _, takes, _ = _entry(name)
    extra = sorted(set(options) - set(takes))
    if extra:
        raise ValueError(f"{name} has no option {', '.join(extra)}"
                         + (f" (it takes {', '.join(takes)})" if takes else " (it takes none)"))


def sizes(name):
    """(input size, resize size) of model `name`, without building it."""
    return _entry(name)[2]


def build_model(name, num_classes, init="paper", seed=0, dropout=0.5, dropout_variant="inverted", **options):
    """Model `name` for `num_classes` classes; `options` are its architecture options."""
    build, _, _ = _entry(name)
    check_options(name, options)
    if name == "convnet4":          # no dropout layers: the network of the figure has none
        return build(num_classes, init=init, seed=seed, **options)
    return build(num_classes, init=init, seed=seed, dropout=dropout, dropout_variant=dropout_variant, **options)
