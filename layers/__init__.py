"""The paper's layers, one file each; every file carries its forward and backward math."""
from layers.conv import Conv2d
from layers.dense import Dense
from layers.dropout import Dropout
from layers.flatten import Flatten
from layers.lrn import LRN
from layers.pool import MaxPool2d
from layers.relu import ReLU

__all__ = ["Conv2d", "Dense", "Dropout", "Flatten", "LRN", "MaxPool2d", "ReLU"]
