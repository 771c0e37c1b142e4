"""Backend selection: the only module that imports CuPy.

Layers never choose a device; they read it from their input: a NumPy array runs the layer's NumPy
path, a CuPy array its CUDA path on the kernels of kernels/*.cu (`kernel_runtime_of`). The device
is chosen once, where the parameters live (`Sequential.to`).
"""
import numpy as np

from alexnet.kernels import loader

_cupy = None
_cupy_checked = False


def cupy_or_none():
    """The cupy module if it imports, else None (imported once, lazily: CuPy is an optional extra)."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy
            _cupy = cupy
        except Exception:  # CuPy missing or broken (e.g. no CUDA runtime): the CPU path still works
            _cupy = None
    return _cupy


def cuda_available():
    """True when CuPy imports and at least one CUDA device answers."""
    cp = cupy_or_none()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def cuda_unavailable_reason():
    """One line saying why `--device cuda` cannot work here."""
    cp = cupy_or_none()
    if cp is None:
        return "CuPy is not installed (pip install -e '.[cuda]')"
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"CuPy is installed but no usable GPU was found ({type(e).__name__}: {e})".splitlines()[0]
    return "no CUDA device found" if count == 0 else ""


def gpu_count():
    """How many CUDA devices CuPy sees (0 without CuPy or a GPU)."""
    if not cuda_available():
        return 0
    return cupy_or_none().cuda.runtime.getDeviceCount()


def use_gpu(index):
    """Make device `index` this process's current device (an MPI rank takes its own GPU) before
    anything is allocated on it."""
    cupy_or_none().cuda.Device(index).use()


def nccl_or_reason():
    """(CuPy's NCCL bindings, "") when NCCL is usable, else (None, why not): engine/comm.py sums GPU
    arrays over the ranks through it."""
    cp = cupy_or_none()
    if cp is None:
        return None, "CuPy is not installed"
    try:
        from cupy.cuda import nccl
    except Exception as e:
        return None, f"cupy.cuda.nccl does not import ({type(e).__name__}: {e})".splitlines()[0]
    if not getattr(nccl, "available", True):
        return None, "CuPy finds no NCCL library (pip install nvidia-nccl-cu13)"
    return nccl, ""


def current_stream_pointer():
    """The raw cudaStream_t of CuPy's current stream, for libraries that take one (NCCL)."""
    return cupy_or_none().cuda.get_current_stream().ptr


def cublas():
    """(CuPy's cuBLAS bindings, its CUDA runtime bindings, the current device's cuBLAS handle), for
    engine/gemm.py. The names used there were checked against CuPy's source (cupy_backends/cuda/
    libs/cublas.pyx: gemmEx and gemmStridedBatchedEx, which set the handle's stream to CuPy's
    current one before each call; cupy/cuda/device.pyx: get_cublas_handle)."""
    from cupy.cuda import device
    from cupy_backends.cuda.api import runtime
    from cupy_backends.cuda.libs import cublas as bindings
    return bindings, runtime, device.get_cublas_handle()


def is_gpu_array(x):
    cp = cupy_or_none()
    return cp is not None and isinstance(x, cp.ndarray)


def get_array_module(x):
    """numpy for NumPy arrays, cupy for CuPy arrays."""
    return cupy_or_none() if is_gpu_array(x) else np


def gpu_runtime():
    """The kernel runtime on the GPU (kernels/loader.py); CudaUnavailable, saying why, without one."""
    if not cuda_available():
        raise loader.CudaUnavailable(f"the CUDA kernels need CuPy and a GPU: {cuda_unavailable_reason()}")
    return loader.cupy_runtime(cupy_or_none())


def kernel_runtime_of(x):
    """The runtime whose kernels compute on `x`: the GPU's for a CuPy array, None (the NumPy path)
    for anything else."""
    return gpu_runtime() if is_gpu_array(x) else None


KERNEL_BACKENDS = ("cpu-harness", "cupy")


def kernel_runtime(name):
    """The kernel runtime called `name`: "cupy" (the GPU) or "cpu-harness" (the same .cu files
    built with g++ and run on the CPU with NumPy arrays, for tests and `alexnet kernels --check`)."""
    if name == "cupy":
        return gpu_runtime()
    if name == "cpu-harness":
        return loader.harness_runtime()
    raise ValueError(f"unknown kernel backend {name!r}: expected one of {', '.join(KERNEL_BACKENDS)}")


def device_of(x):
    return "cuda" if is_gpu_array(x) else "cpu"


DEVICES = ("cpu", "cuda")


def require(device):
    """Raise, with the reason, unless `device` is one this machine can compute on: CudaUnavailable
    (CuPy missing, no GPU) for "cuda", ValueError for a name that is no device."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cuda" and not cuda_available():
        raise loader.CudaUnavailable(f"--device cuda is not usable: {cuda_unavailable_reason()}")


def to_device(x, device):
    """Copy an array to "cpu" (NumPy) or "cuda" (CuPy); a no-op when it is already there."""
    require(device)
    return to_numpy(x) if device == "cpu" else cupy_or_none().asarray(x)


def to_numpy(x):
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)


def check_same_device(layer_name, x, params):
    """Raise a clear error when an input and a layer's parameters live on different devices."""
    want = device_of(x)
    for key, p in params.items():
        have = device_of(p)
        if have != want:
            kind = {"cpu": "a NumPy array", "cuda": "a CuPy array"}
            raise ValueError(
                f"{layer_name}: input is {kind[want]} ({want}) but parameter {key} is "
                f"{kind[have]} ({have}); move the model with .to({want!r}) or the input with "
                f"alexnet.engine.backend.to_device(x, {have!r})")
