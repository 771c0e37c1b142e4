"""AlexNet (Krizhevsky, Sutskever, Hinton 2012), Figure 2 and section 3, as a Network (a Sequential
that knows its architecture: models/network.py).

    input 3x227x227
    conv1 96@11x11/4            -> ReLU -> LRN -> pool 3/2      96x55x55 -> 96x27x27
    conv2 256@5x5 pad 2, g2     -> ReLU -> LRN -> pool 3/2     256x27x27 -> 256x13x13
    conv3 384@3x3 pad 1         -> ReLU                        384x13x13 (sees both towers)
    conv4 384@3x3 pad 1, g2     -> ReLU
    conv5 256@3x3 pad 1, g2     -> ReLU -> pool 3/2            256x13x13 -> 256x6x6
    fc6 9216->4096 -> ReLU -> dropout
    fc7 4096->4096 -> ReLU -> dropout
    fc8 4096->classes

With 1000 classes: 60,965,224 parameters and 724.4M multiply-adds per image. (The paper's
224x224 input only works out with 227: (227 - 11) / 4 + 1 = 55.)

`AlexNetSmall` keeps the same layer sequence (grouped conv2/4/5, two LRNs, three overlapping
pools, two dropouts) at CPU scale: 64x64 input, fewer channels, 256-unit fc layers.
`tiny_alexnet()` builds the same sequence at gradient-check size (3x31x31 input, a few channels).

`dropout_variant`: "inverted" (the default) or "paper", see layers/dropout.py for how the two
train differently.

The paper's design choices are options, so that each can be taken out and measured (`alexnet
experiment ablations`): `lrn=False` drops both LRN layers, `pool=(2, 2)` makes pooling
non-overlapping, `groups=1` is the one-tower net, `activation="tanh"` replaces every ReLU. The
chosen options are kept in `net.options` (checkpoints store them, so a model is rebuilt as trained).
"""
from alexnet.engine.init import init_weights
from alexnet.engine.net import Sequential
from alexnet.layers import LRN, Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU, Tanh
from alexnet.models.network import Network

# (input size, resize size): random input_size crops of images brought to resize_size (227 of 256:
# the paper's 224 only works out with 227, (227 - 11) / 4 + 1 = 55)
SIZES = {"alexnet": (227, 256), "alexnet-small": (64, 73)}


ACTIVATIONS = {"relu": ReLU, "tanh": Tanh}


# The paper's design choices: the defaults of AlexNet and AlexNetSmall below, and what a run's
# architecture options are told apart from (checkpoints store the options that differ, or all).
PAPER_OPTIONS = {"lrn": True, "pool": (3, 2), "groups": 2, "activation": "relu"}


def changed_options(options):
    """The architecture options that differ from the paper's (a pool given as a list counts as a tuple)."""
    norm = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return {k: v for k, v in norm.items() if PAPER_OPTIONS.get(k) != v}


def check_options(groups, pool, activation):
    if groups not in (1, 2):
        raise ValueError(f"groups must be 1 or 2, got {groups!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if (not isinstance(pool, (tuple, list)) or len(pool) != 2
            or not all(isinstance(v, int) and v >= 1 for v in pool)):
        raise ValueError(f"pool must be (kernel, stride), e.g. (3, 2), got {pool!r}")


def _layers(spec, num_classes, dropout, dropout_variant="inverted", lrn=True, pool=(3, 2), activation="relu",
            seed=0):
    """(layers, names) of an AlexNet-shaped net. spec: conv layers as (out, kernel, stride, pad,
    groups, lrn, pool), then fc widths, then (channels, size) of the input; `lrn` and `pool`
    (kernel, stride) apply to the layers whose spec asks for them."""
    convs, fcs, (channels, size) = spec
    act = ACTIVATIONS[activation]
    layers, names = [], []
    in_ch = channels
    for i, (out, k, s, p, g, has_lrn, has_pool) in enumerate(convs, start=1):
        layers += [Conv2d(in_ch, out, k, stride=s, padding=p, groups=g), act()]
        names += [f"conv{i}", f"{activation}{i}"]
        if has_lrn and lrn:
            layers.append(LRN(size=5, alpha=1e-4, beta=0.75, k=2.0))
            names.append(f"lrn{i}")
        if has_pool:
            layers.append(MaxPool2d(*pool))
            names.append(f"pool{i}")
        in_ch = out
    layers.append(Flatten())
    names.append("flatten")
    features = Sequential(layers, names).summary_rows((channels, size, size))[-1][2][0]
    n_conv = len(convs)
    for j, width in enumerate(list(fcs) + [num_classes], start=n_conv + 1):
        layers.append(Dense(features, width))
        names.append(f"fc{j}")
        if j < n_conv + len(fcs) + 1:
            layers += [act(), Dropout(dropout, seed=seed * 1000 + j, variant=dropout_variant)]
            names += [f"{activation}{j}", f"drop{j}"]
        features = width
    return layers, names


class AlexNet(Network):
    """The paper's network; groups=2 is the two-tower model, groups=1 the one-tower one."""

    ARCH = "alexnet"
    FCS = (4096, 4096)

    @staticmethod
    def convs(groups):
        """Per conv layer: (out channels, kernel, stride, padding, groups, LRN after it, pool after it)."""
        return [(96, 11, 4, 0, 1, True, True),
                (256, 5, 1, 2, groups, True, True),
                (384, 3, 1, 1, 1, False, False),
                (384, 3, 1, 1, groups, False, False),
                (256, 3, 1, 1, groups, False, True)]

    def __init__(self, num_classes=1000, groups=2, init="paper", seed=0, dropout=0.5, dropout_variant="inverted",
                 lrn=True, pool=(3, 2), activation="relu"):
        Network.check_num_classes(num_classes)
        check_options(groups, pool, activation)
        input_size, resize_size = SIZES[self.ARCH]
        layers, names = _layers((self.convs(groups), self.FCS, (3, input_size)), num_classes, dropout,
                                dropout_variant, lrn, tuple(pool), activation, seed)
        super().__init__(layers, names, arch=self.ARCH, num_classes=num_classes, input_size=input_size,
                         resize_size=resize_size,
                         options=dict(groups=groups, lrn=lrn, pool=tuple(pool), activation=activation))
        init_weights(self, init, seed)


class AlexNetSmall(AlexNet):
    """AlexNet's layer sequence for 64x64 inputs (resize 73, crop 64): ~14M multiply-adds/image."""

    ARCH = "alexnet-small"
    FCS = (256, 256)

    @staticmethod
    def convs(groups):
        return [(32, 5, 2, 2, 1, True, True),          # 64 -> 32 -> pool 15
                (64, 5, 1, 2, groups, True, True),     # 15 -> pool 7
                (96, 3, 1, 1, 1, False, False),
                (96, 3, 1, 1, groups, False, False),
                (64, 3, 1, 1, groups, False, True)]    # 7 -> pool 3

    def __init__(self, num_classes=10, init="paper", seed=0, dropout=0.5, dropout_variant="inverted", groups=2,
                 lrn=True, pool=(3, 2), activation="relu"):
        super().__init__(num_classes, groups, init, seed, dropout, dropout_variant, lrn, pool, activation)


def tiny_alexnet(num_classes=5, seed=0, dropout_variant="inverted"):
    """AlexNet's layer sequence at gradient-check size: 3x31x31 input, a few channels, the
    exaggerated LRN (alpha 1, k 1) in lrn1 and the paper's in lrn2."""
    layers = [Conv2d(3, 4, 5, stride=2, padding=1), ReLU(), LRN(5, 1.0, 0.75, 1.0), MaxPool2d(3, 2),
              Conv2d(4, 6, 3, padding=1, groups=2), ReLU(), LRN(5, 1e-4, 0.75, 2.0), MaxPool2d(3, 2),
              Conv2d(6, 6, 3, padding=1), ReLU(), Conv2d(6, 6, 3, padding=1, groups=2), ReLU(),
              Conv2d(6, 4, 3, padding=1, groups=2), ReLU(), MaxPool2d(3, 2), Flatten(),
              Dense(4, 8), ReLU(), Dropout(0.5, seed=seed + 6, variant=dropout_variant), Dense(8, 8), ReLU(),
              Dropout(0.5, seed=seed + 7, variant=dropout_variant), Dense(8, num_classes)]
    names = ["conv1", "relu1", "lrn1", "pool1", "conv2", "relu2", "lrn2", "pool2", "conv3", "relu3",
             "conv4", "relu4", "conv5", "relu5", "pool5", "flatten", "fc6", "relu6", "drop6", "fc7",
             "relu7", "drop7", "fc8"]
    net = Network(layers, names, arch="tiny-alexnet", num_classes=num_classes, input_size=31, resize_size=31)
    init_weights(net, "he", seed)
    return net
