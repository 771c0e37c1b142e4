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
    """Model `name` for `num_classes` classes; `options` are its architecture options; `init` None
    leaves the weights zero (engine/init.py), for a model about to be loaded."""
    build, _, _ = _entry(name)
    check_options(name, options)
    if name == "convnet4":          # no dropout layers: the network of the figure has none
        return build(num_classes, init=init, seed=seed, **options)
    return build(num_classes, init=init, seed=seed, dropout=dropout, dropout_variant=dropout_variant, **options)


def parameter_shapes(name, num_classes, **options):
    """{"conv1.W": shape, ...}: the shape of every parameter of model `name` with `num_classes`
    classes, in the model's order, without building that model: a file's arrays are checked
    against these before a model of its class count is made (a count a file declares must not
    decide how much memory is taken before it is checked). The model built here has 2 classes
    and untouched zeros, then its last layer's rows say `num_classes`."""
    model = build_model(name, 2, init=None, **options)
    shapes = {f"{layer.name}.{key}": tuple(p.shape) for layer in model.layers for key, p in layer.params.items()}
    last = [layer.name for layer in model.layers if layer.params][-1]
    for key in (f"{last}.W", f"{last}.b"):
        shapes[key] = (num_classes,) + shapes[key][1:]
    return shapes
