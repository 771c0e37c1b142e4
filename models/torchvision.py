"""torchvision's AlexNet as a model of ours: `alexnet-tv`, so that its published weights load 1:1.

torchvision follows "One weird trick for parallelizing convolutional neural networks" (Krizhevsky
2014), not the 2012 paper: one tower (no groups), no LRN, other widths, padding in conv1, and
dropout BEFORE fc6 and fc7 rather than after them:

    input 3x224x224
    conv1  64@11x11/4 pad 2     -> ReLU -> pool 3/2        64x55x55 -> 64x27x27
    conv2 192@5x5 pad 2         -> ReLU -> pool 3/2       192x27x27 -> 192x13x13
    conv3 384@3x3 pad 1         -> ReLU
    conv4 256@3x3 pad 1         -> ReLU
    conv5 256@3x3 pad 1         -> ReLU -> pool 3/2       256x13x13 -> 256x6x6
    avgpool adaptive 6x6        (the identity at 224; larger inputs still give fc6 9216 features)
    dropout -> fc6 9216->4096 -> ReLU
    dropout -> fc7 4096->4096 -> ReLU
    fc8 4096->classes

With 1000 classes: 61,100,840 parameters (torchvision's count), 714.2M multiply-adds per image.
Layer names follow models/alexnet.py (conv1..conv5, fc6..fc8, so engine/init.py's presets and the
checkpoints work unchanged); torchvision's state-dict keys map onto them in app/weights.py.
The weights expect torchvision's input normalisation; an imported checkpoint folds it into conv1
(docs/weights.md).
"""
from alexnet.engine.init import init_weights
from alexnet.layers import AdaptiveAvgPool2d, Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU
from alexnet.models.network import Network

ARCH = "alexnet-tv"
# (out channels, kernel, stride, padding, max-pool after it)
CONVS = ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False), (256, 3, 1, 1, False),
         (256, 3, 1, 1, True))
POOL_GRID = 6
SIZES = (224, 256)        # torchvision's preprocessing: resize to 256, 224x224 centre crop


class AlexNetTV(Network):
    """torchvision's AlexNet (torchvision.models.alexnet) on our layers; 224x224 inputs."""

    def __init__(self, num_classes=1000, init="paper", seed=0, dropout=0.5, dropout_variant="inverted"):
        Network.check_num_classes(num_classes)
        layers, names, in_ch = [], [], 3
        for i, (out, k, s, p, pool) in enumerate(CONVS, start=1):
            layers += [Conv2d(in_ch, out, k, stride=s, padding=p), ReLU()]
            names += [f"conv{i}", f"relu{i}"]
            if pool:
                layers.append(MaxPool2d(3, 2))
                names.append(f"pool{i}")
            in_ch = out
        layers += [AdaptiveAvgPool2d(POOL_GRID), Flatten()]
        names += ["avgpool", "flatten"]
        features = in_ch * POOL_GRID * POOL_GRID
        for j, width in ((6, 4096), (7, 4096)):
            # the same dropout seeds as models/alexnet.py gives its drop6 / drop7
            layers += [Dropout(dropout, seed=seed * 1000 + j, variant=dropout_variant), Dense(features, width),
                       ReLU()]
            names += [f"drop{j}", f"fc{j}", f"relu{j}"]
            features = width
        layers.append(Dense(features, num_classes))
        names.append("fc8")
        # no architecture options (models/alexnet.py's groups, lrn, pool, activation)
        super().__init__(layers, names, arch=ARCH, num_classes=num_classes, input_size=SIZES[0],
                         resize_size=SIZES[1])
        init_weights(self, init, seed)
