"""The four-layer convolutional network of the paper's Figure 1 (ReLU against tanh on CIFAR-10).

The paper says only "a four-layer convolutional neural network"; its training setup is
cuda-convnet's CIFAR-10 example (layers-80sec), whose layers with weights are three 5x5
convolutions and one fully connected layer. This is that network, without the local response
normalization between its layers, since the figure is about the nonlinearity alone:

    input 3x32x32
    conv1 32@5x5 pad 2 -> act -> pool 3/2         32x32x32 -> 32x15x15
    conv2 32@5x5 pad 2 -> act -> pool 3/2         32x15x15 -> 32x7x7
    conv3 64@5x5 pad 2 -> act -> pool 3/2         64x7x7   -> 64x3x3
    fc4 576 -> classes

`activation` is "relu" or "tanh"; the two nets are otherwise identical, down to the initial
weights for one seed (the init draws the same numbers whatever the nonlinearity).
"""
from alexnet.engine.init import init_weights
from alexnet.layers import Conv2d, Dense, Flatten, MaxPool2d
from alexnet.models.alexnet import ACTIVATIONS
from alexnet.models.network import Network

SIZES = (32, 36)          # 32x32 crops (CIFAR-10's size) of images brought to 36x36


class ConvNet4(Network):
    def __init__(self, num_classes=10, activation="relu", init="he", seed=0):
        if activation not in ACTIVATIONS:
            raise ValueError(f"ConvNet4: activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        Network.check_num_classes(num_classes)
        act = ACTIVATIONS[activation]
        layers, names, in_ch = [], [], 3
        for i, out in enumerate((32, 32, 64), start=1):
            layers += [Conv2d(in_ch, out, 5, padding=2), act(), MaxPool2d(3, 2)]
            names += [f"conv{i}", f"{activation}{i}", f"pool{i}"]
            in_ch = out
        layers += [Flatten(), Dense(64 * 3 * 3, num_classes)]
        names += ["flatten", "fc4"]
        super().__init__(layers, names, arch="convnet4", num_classes=num_classes, input_size=SIZES[0],
                         resize_size=SIZES[1], options={"activation": activation})
        init_weights(self, init, seed)
