"""Where kernels come from: the text of kernels/<name>.cu, compiled once per process.

A *runtime* is everything kernels/ops.py needs besides the arrays:

    rt.name          "cupy" or "cpu-harness"
    rt.xp            the array module the kernels read and write (cupy or numpy)
    rt.module(name)  the compiled kernels/<name>.cu: a cupy.RawModule, or the CPU harness module
                     with the same get_function(name)(grid, block, args, shared_mem=...) call
    rt.pointer(a)    the device address of an array (the fused SGD update takes a pointer table)

The launchers take a runtime as their first argument, so the same code runs on a GPU and, through
the harness, on the CPU: that is how the kernel tests and `alexnet kernels --check` run anywhere.
"""
import functools
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
NVRTC_OPTIONS = ("--std=c++17", "-ftz=true")  # CuPy adds -arch for the device it runs on


class CudaUnavailable(RuntimeError):
    """CuPy is missing, or installed without a usable GPU."""


def source(name):
    return (KERNEL_DIR / f"{name}.cu").read_text()


def kernel_files():
    """Names of the .cu files, e.g. ["conv", "dropout", ...]."""
    return sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))


class CupyRuntime:
    name = "cupy"

    def __init__(self, cupy):
        self.xp = cupy

    @functools.cache
    def module(self, name):
        return self.xp.RawModule(code=source(name), options=NVRTC_OPTIONS)

    @staticmethod
    def pointer(a):
        return a.data.ptr


class HarnessRuntime:
    name = "cpu-harness"

    def __init__(self):
        import numpy
        from kernels import harness
        harness.compiler()  # fail here, with the reason, rather than at the first launch
        self.xp = numpy
        self._harness = harness

    def module(self, name):
        return self._harness.load(name)

    @staticmethod
    def pointer(a):
        return a.ctypes.data


@functools.cache
def cupy_runtime():
    from engine import backend
    if not backend.cuda_available():
        raise CudaUnavailable(f"the CUDA kernels need CuPy and a GPU: {backend.cuda_unavailable_reason()}")
    return CupyRuntime(backend.cupy_or_none())


@functools.cache
def harness_runtime():
    return HarnessRuntime()


def runtime(name):
    """The runtime called `name` ("cupy" or "cpu-harness")."""
    factories = {"cupy": cupy_runtime, "cpu-harness": harness_runtime}
    if name not in factories:
        raise ValueError(f"unknown kernel backend {name!r}: expected one of {', '.join(factories)}")
    return factories[name]()
