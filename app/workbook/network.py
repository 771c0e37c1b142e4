"""Exercise 8: the whole network's backward, layer by layer in reverse (as llm.c writes it).

`forward` below is AlexNet's layer sequence, written out: five convolutions (ReLU after each, LRN
and max-pool after the first two, max-pool after the fifth), then three dense layers with ReLU and
dropout after the first two. It works for the paper's AlexNet and for alexnet-small, the demo's
network (same layers, fewer channels, 64x64 inputs). Every layer function comes from `ops`, which
holds the 14 functions of your other files (ops.conv_forward, ops.relu_backward, ...); `arch`
holds each layer's settings (arch["conv2"] == {"stride": 1, "padding": 2, "groups": 2}, ...);
`params` the weights by name ("conv1.W", "conv1.b", ..., "fc8.b"); `masks` the keep masks of the
dropout layers ("drop6", "drop7").

Your part: `backward`. Given dlogits = dL/dlogits, walk the layers from fc8 back to conv1. Each
layer's backward takes what its forward took (inputs[name], the weights, the settings) and the
gradient of its output, and returns the gradient of its input; the dense and convolution layers
also return their weight and bias gradients, which go into grads under their parameters' names.
Two things to watch: the order (exactly the reverse of forward), and the flatten, whose backward
is only a reshape back to its input's shape.

Shapes (alexnet-small, batch N): x (N, 3, 64, 64), conv1 -> (N, 32, 32, 32), pool1 -> 15x15,
conv2 (N, 64, 15, 15), pool2 -> 7x7, conv3, conv4 (N, 96, 7, 7), conv5 (N, 64, 7, 7),
pool5 (N, 64, 3, 3), flatten (N, 576), fc6, fc7 (N, 256), logits (N, 10).

Check it: alexnet exercise check THIS_FOLDER network (it runs your backward with the engine's
layer functions as ops, so only the order and the wiring are checked here). Then train on your
own passes: alexnet train --layers-from THIS_FOLDER
"""
import numpy as np


def forward(ops, params, arch, x, masks, train=True):
    """(logits, inputs): inputs[name] is the array layer `name` received, for its backward."""
    inputs = {}

    def layer(name, fn, h, *args, **kwargs):
        inputs[name] = h                          # what this layer's backward needs
        return fn(h, *args, **kwargs)

    P = params
    h = layer("conv1", ops.conv_forward, x, P["conv1.W"], P["conv1.b"], **arch["conv1"])
    h = layer("relu1", ops.relu_forward, h)
    h = layer("lrn1", ops.lrn_forward, h, **arch["lrn1"])
    h = layer("pool1", ops.maxpool_forward, h, **arch["pool1"])
    h = layer("conv2", ops.conv_forward, h, P["conv2.W"], P["conv2.b"], **arch["conv2"])
    h = layer("relu2", ops.relu_forward, h)
    h = layer("lrn2", ops.lrn_forward, h, **arch["lrn2"])
    h = layer("pool2", ops.maxpool_forward, h, **arch["pool2"])
    h = layer("conv3", ops.conv_forward, h, P["conv3.W"], P["conv3.b"], **arch["conv3"])
    h = layer("relu3", ops.relu_forward, h)
    h = layer("conv4", ops.conv_forward, h, P["conv4.W"], P["conv4.b"], **arch["conv4"])
    h = layer("relu4", ops.relu_forward, h)
    h = layer("conv5", ops.conv_forward, h, P["conv5.W"], P["conv5.b"], **arch["conv5"])
    h = layer("relu5", ops.relu_forward, h)
    h = layer("pool5", ops.maxpool_forward, h, **arch["pool5"])
    h = layer("flatten", np.reshape, h, (len(h), -1))
    h = layer("fc6", ops.dense_forward, h, P["fc6.W"], P["fc6.b"])
    h = layer("relu6", ops.relu_forward, h)
    h = layer("drop6", ops.dropout_forward, h, masks["drop6"], train=train, **arch["drop6"])
    h = layer("fc7", ops.dense_forward, h, P["fc7.W"], P["fc7.b"])
    h = layer("relu7", ops.relu_forward, h)
    h = layer("drop7", ops.dropout_forward, h, masks["drop7"], train=train, **arch["drop7"])
    logits = layer("fc8", ops.dense_forward, h, P["fc8.W"], P["fc8.b"])
    return logits, inputs


def backward(ops, params, arch, inputs, masks, dlogits, train=True):
    """(dx, grads): dx = dL/dx of the network's input, grads["conv1.W"] ... grads["fc8.b"] the
    gradient of every parameter, from dlogits = dL/dlogits and what forward returned."""
    grads = {}
    raise NotImplementedError("backward")
