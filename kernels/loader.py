"""Where kernels come from: the text of kernels/<name>.cu, compiled once per process.

A *runtime* is everything kernels/ops.py needs besides the arrays:

    rt.name                  "cupy" or "cpu-harness"
    rt.xp                    the array module the kernels read and write (cupy or numpy)
    rt.function(file, name)  the compiled kernel `name` of kernels/<file>.cu, called as
                             fn(grid, block, args, shared_mem=0); looked up once per runtime and
                             kept (a cupy.RawKernel, or the CPU harness's function of that shape)
    rt.pointer(a)            the device address of an array (the fused SGD update takes a pointer table)
    rt.upload(a)             (a device copy of the NumPy array a, what must stay alive with it): on a
                             GPU through pinned memory, so that the copy can be part of a CUDA graph

The launchers take a runtime as their first argument, so the same code runs on a GPU and, through
the harness, on the CPU: that is how the kernel tests and `alexnet kernels --check` run anywhere.

This module never imports CuPy: engine/backend.py does, and hands the module to `cupy_runtime`.
"""
import functools

import numpy as np

from alexnet.kernels.sources import KERNEL_DIR, kernel_files, source  # noqa: F401 (the loader's API too)

NVRTC_OPTIONS = ("--std=c++17", "-ftz=true")  # CuPy adds -arch for the device it runs on


class CudaUnavailable(RuntimeError):
    """CuPy is missing, or installed without a usable GPU."""


class _Runtime:
    def __init__(self):
        self._functions = {}

    def function(self, file, kernel):
        """The kernel `kernel` of kernels/<file>.cu, compiled and looked up on first use only:
        a launch then costs the call itself, not a module lookup and a new function object."""
        key = (file, kernel)
        fn = self._functions.get(key)
        if fn is None:
            fn = self._functions[key] = self.module(file).get_function(kernel)
        return fn


class CupyRuntime(_Runtime):
    name = "cupy"

    def __init__(self, cupy):
        super().__init__()
        self.xp = cupy

    @functools.cache
    def module(self, name):
        return self.xp.RawModule(code=source(name), options=NVRTC_OPTIONS)

    @staticmethod
    def pointer(a):
        return a.data.ptr

    def upload(self, a):
        """A copy of the NumPy array `a` on the device, through a pinned staging buffer, returned
        with it: a copy from pageable memory cannot be captured into a CUDA graph (one from pinned
        memory becomes a node of the graph, which reads the staging buffer at every replay, so the
        caller keeps it as long as it keeps the device array)."""
        a = np.ascontiguousarray(a)
        memory = self.xp.cuda.alloc_pinned_memory(max(1, a.nbytes))
        staged = np.frombuffer(memory, a.dtype, a.size).reshape(a.shape)
        staged[...] = a
        device = self.xp.empty(a.shape, a.dtype)
        device.set(staged)
        return device, memory


class HarnessRuntime(_Runtime):
    name = "cpu-harness"

    def __init__(self):
        super().__init__()
        import numpy

        from alexnet.kernels import harness
        harness.compiler()  # fail here, with the reason, rather than at the first launch
        self.xp = numpy
        self._harness = harness

    def module(self, name):
        return self._harness.load(name)

    @staticmethod
    def pointer(a):
        return a.ctypes.data

    @staticmethod
    def upload(a):
        return np.array(a), None


_cupy_runtimes = {}


def cupy_runtime(cupy):
    """The runtime of the CuPy module `cupy` (one per process); engine/backend.py passes CuPy in
    after checking that a GPU answers."""
    if cupy is None:
        raise CudaUnavailable("the CUDA kernels need CuPy and a GPU: CuPy is not installed "
                              "(pip install -e '.[cuda]')")
    if id(cupy) not in _cupy_runtimes:
        _cupy_runtimes[id(cupy)] = CupyRuntime(cupy)
    return _cupy_runtimes[id(cupy)]


@functools.cache
def harness_runtime():
    return HarnessRuntime()
