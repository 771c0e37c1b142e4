"""Networks built from layers/: the paper's AlexNet and a CPU-sized variant."""
