"""The paper's layers, one file each; every file carries its math, its NumPy path and its CUDA path.

reference.py holds the plain-loop version of every forward and backward pass (the oracle of the tests).
"""
from alexnet.layers.avgpool import AdaptiveAvgPool2d
from alexnet.layers.conv import Conv2d
from alexnet.layers.dense import Dense
from alexnet.layers.dropout import Dropout
from alexnet.layers.flatten import Flatten
from alexnet.layers.lrn import LRN
from alexnet.layers.pool import MaxPool2d
from alexnet.layers.relu import ReLU
from alexnet.layers.tanh import Tanh

__all__ = ["AdaptiveAvgPool2d", "Conv2d", "Dense", "Dropout", "Flatten", "LRN", "MaxPool2d", "ReLU", "Tanh"]
