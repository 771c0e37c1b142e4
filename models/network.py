"""Network: a Sequential that says what it is, the type every model of this package has.

A trained network is more than its layers: a checkpoint, the importers, the ONNX export and the
inference commands need the architecture's name (to rebuild it), its number of classes, the side
of the square input it takes, the side images are brought to before cropping, and the
architecture options it was built with. Declared here once, so that every model has all of them:

    arch          the registry's name (models/registry.py): "alexnet", "alexnet-small", ...
    num_classes   the width of the last layer
    input_size    the side of the network's input (227 for AlexNet)
    resize_size   the side images are brought to before the crop (256 for AlexNet: section 2)
    options       the architecture options it was built with ({"groups": 1}, ...): registry.build_model
                  rebuilds the same network from (arch, num_classes, options)
"""
from alexnet.engine.net import Sequential


class Network(Sequential):
    def __init__(self, layers, names, *, arch, num_classes, input_size, resize_size, options=None):
        self.check_num_classes(num_classes)
        super().__init__(layers, names)
        self.arch = arch
        self.num_classes = num_classes
        self.input_size = input_size
        self.resize_size = resize_size
        self.options = dict(options or {})

    @staticmethod
    def check_num_classes(num_classes):
        """A model's builder calls this before it sizes its last layer."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
