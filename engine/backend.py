"""Backend selection: the only module that imports CuPy.

Layers never choose a device; they read the array module from their input (`get_array_module`).
The device is chosen once, where the parameters live (`Sequential.to`).
"""
import numpy as np

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


def is_gpu_array(x):
    cp = cupy_or_none()
    return cp is not None and isinstance(x, cp.ndarray)


def get_array_module(x):
    """numpy for NumPy arrays, cupy for CuPy arrays."""
    return cupy_or_none() if is_gpu_array(x) else np


def device_of(x):
    return "cuda" if is_gpu_array(x) else "cpu"


def to_device(x, device):
    """Copy an array to "cpu" (NumPy) or "cuda" (CuPy); a no-op when it is already there."""
    if device == "cpu":
        return to_numpy(x)
    if device == "cuda":
        if not cuda_available():
            raise RuntimeError(f"--device cuda is not usable: {cuda_unavailable_reason()}")
        return cupy_or_none().asarray(x)
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


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
                f"engine.backend.to_device(x, {have!r})")
