"""Hand-written CUDA kernels for every layer (kernels/*.cu), their launchers, and a CPU harness.

    loader.py    the .cu text compiled once per process, for CuPy or for the CPU harness
    ops.py       one launcher per kernel, runnable on either ("runtimes")
    harness.py   g++ builds of the same .cu files, run on the CPU with NumPy arrays

Each layer's CUDA path (layers/*.py, engine/loss.py, engine/optim.py) calls the launchers;
app/kernel_checks.py checks every kernel against the NumPy layers (tests and
`alexnet kernels --check`). Nothing here imports CuPy at import time: engine/backend.py is the
only module that does.
"""
