"""Hand-written CUDA kernels for every layer (kernels/*.cu), their launchers, and a CPU harness.

    loader.py    the .cu text compiled once per process, for CuPy or for the CPU harness
    ops.py       one launcher per kernel, runnable on either ("runtimes")
    dispatch.py  the CUDA path of each layer, the loss and the optimizer (called by engine/)
    harness.py   g++ builds of the same .cu files, run on the CPU with NumPy arrays
    checks.py    every kernel against the NumPy layers (tests and `alexnet kernels --check`)
    cli.py       the `alexnet kernels` subcommand

Nothing here imports CuPy at import time: engine/backend.py is the only module that does.
"""
