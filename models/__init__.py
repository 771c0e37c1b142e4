"""Networks built from layers/, each a models/network.py Network (a Sequential that knows its
architecture): alexnet.py (the paper's AlexNet, alexnet-small, tiny_alexnet), torchvision.py
(alexnet-tv, for torchvision's weights), convnet4.py (Figure 1's network), towers.py (one tower of
the two-tower split, on its own rank), registry.py (every model by name)."""
