"""Run the CUDA kernels of kernels/*.cu on the CPU, with NumPy arrays (docs/kernels.md).

`load(name)` compiles kernels/<name>.cu with g++ -std=c++20 against include/cuda_cpu.h into a
shared library and returns a module shaped like `cupy.RawModule`:

    module.get_function("relu_forward")(grid, block, (x, out, numpy.int32(n)), shared_mem=0)

Arrays go in as device pointers (NumPy's data pointers), NumPy scalars by value; a Python int or
float goes in as 8 bytes, as CuPy passes it, and the library's launch entry rejects any argument
whose size differs from the kernel's signature (the bug CuPy lets through silently).

Two things the C++ side cannot see are done here on the source text:
  - `extern __shared__ T name[];` becomes a pointer to the block's (NaN-poisoned) dynamic shared
    memory: C++ has no unsized block-local arrays;
  - each kernel is marked cooperative (one OS thread per CUDA thread) when its body mentions
    __syncthreads, __shared__ or a shuffle; all others run their threads in a plain loop, which
    is ~100x cheaper. A kernel marked wrongly aborts with a message instead of computing garbage.

Libraries are cached under $ALEXNET_KERNEL_CACHE, else $XDG_CACHE_HOME/alexnet-kernels, else
~/.cache/alexnet-kernels, named by a hash of the generated source, the header, the compiler and
the flags. ALEXNET_HARNESS_SANITIZE=address|thread builds instrumented libraries (see
docs/kernels.md for the LD_PRELOAD the sanitizer runtimes need).
"""
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from alexnet.kernels import sources

KERNEL_DIR = Path(__file__).resolve().parent
HEADER = KERNEL_DIR / "include" / "cuda_cpu.h"
FLAGS = ("-std=c++20", "-O2", "-shared", "-fPIC", "-pthread")
SANITIZE_FLAGS = {
    "address": ("-fsanitize=address", "-fno-omit-frame-pointer", "-g"),
    "thread": ("-fsanitize=thread", "-g"),
}
SANITIZER_RUNTIME = {"address": "libasan.so", "thread": "libtsan.so"}
MIN_GCC = 12  # <barrier> and std::atomic_ref<float>::fetch_add

_KERNEL_HEAD = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]\s*;")
_COOPERATIVE = re.compile(r"__syncthreads|__shared__|__shfl")


class HarnessUnavailable(RuntimeError):
    """No suitable C++ compiler here (or a sanitizer build without its runtime preloaded)."""


class LaunchError(RuntimeError):
    """The harness refused a launch (unknown kernel, wrong argument count or size, bad shape)."""


@functools.cache
def compiler():
    """(path, version line) of a g++ new enough for the header; HarnessUnavailable otherwise."""
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if path is None:
        raise HarnessUnavailable(f"the CPU kernel harness needs g++ >= {MIN_GCC}, and {cxx} is not on PATH")
    version = subprocess.run([path, "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < MIN_GCC:
        raise HarnessUnavailable(f"the CPU kernel harness needs g++ >= {MIN_GCC}, {path} is {version or 'unknown'}")
    return path, version


def kernels_in(source):
    """[(kernel name, cooperative?)] in source order; a kernel's body runs to its matching brace."""
    found = []
    for head in _KERNEL_HEAD.finditer(source):
        depth, i = 0, source.index("{", head.end())
        start = i
        while True:
            depth += {"{": 1, "}": -1}.get(source[i], 0)
            if depth == 0:
                break
            i += 1
        found.append((head.group(1), bool(_COOPERATIVE.search(source, start, i))))
    return found


def translate(source, filename):
    """The C++ translation unit for one .cu file (line numbers in errors point into the .cu)."""
    body = _DYNAMIC_SHARED.sub(r"\1* \2 = reinterpret_cast<\1*>(harness::dynamic_shared());", source)
    table = ", ".join(f"HARNESS_KERNEL({name}, {str(coop).lower()})" for name, coop in kernels_in(source))
    return f'#include "cuda_cpu.h"\n#line 1 "{filename}"\n{body}\nHARNESS_KERNELS({table})\n'


def cache_dir():
    root = os.environ.get("ALEXNET_KERNEL_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alexnet-kernels"


def sanitizer():
    """The sanitizer named by ALEXNET_HARNESS_SANITIZE ('' for none), checked for usability."""
    name = os.environ.get("ALEXNET_HARNESS_SANITIZE", "")
    if not name:
        return ""
    if name not in SANITIZE_FLAGS:
        raise HarnessUnavailable(f"ALEXNET_HARNESS_SANITIZE must be address or thread, got {name!r}")
    runtime = SANITIZER_RUNTIME[name]
    if runtime not in os.environ.get("LD_PRELOAD", ""):
        raise HarnessUnavailable(f"ALEXNET_HARNESS_SANITIZE={name} needs its runtime loaded first: "
                                 f"LD_PRELOAD=$(g++ -print-file-name={runtime}) (see docs/kernels.md)")
    return name


def build(source, filename):
    """Path of the cached shared library for this source, compiling it if needed."""
    cxx, version = compiler()
    san = sanitizer()
    flags = FLAGS + SANITIZE_FLAGS.get(san, ())
    unit = translate(source, filename)
    key = hashlib.sha256("\0".join([unit, HEADER.read_text(), version, *flags]).encode()).hexdigest()[:20]
    out = cache_dir() / f"{Path(filename).stem}-{san or 'plain'}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        cpp, so = Path(tmp) / "unit.cpp", Path(tmp) / "unit.so"
        cpp.write_text(unit)
        result = subprocess.run([cxx, *flags, "-I", str(HEADER.parent), "-o", str(so), str(cpp)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"g++ failed on {filename}:\n{result.stderr}")
        os.replace(so, out)  # atomic: a concurrent build of the same key writes the same bytes
    return out


class Function:
    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, grid, block, args, shared_mem=0):
        grid3, block3 = _dim3(grid), _dim3(block)
        # 0-d arrays holding each argument's bytes, alive until the launch returns
        values = [_argument(self.name, a) for a in args]
        n = len(values)
        ptrs = (ctypes.c_void_p * max(1, n))(*[v.ctypes.data for v in values])
        sizes = (ctypes.c_size_t * max(1, n))(*[v.itemsize for v in values])
        err = ctypes.create_string_buffer(512)
        if self.module.lib.harness_launch(self.name.encode(), grid3, block3, shared_mem, ptrs, sizes, n,
                                          err, len(err)):
            raise LaunchError(err.value.decode())


def _dim3(d):
    """An int or a 1-3 tuple, as CuPy takes grid and block, as three unsigned ints."""
    d = (d,) if isinstance(d, int) else tuple(d)
    return (ctypes.c_uint * 3)(*(d + (1, 1))[:3])


def _argument(kernel, a):
    """A 0-d array holding the bytes the kernel receives for `a` (the data pointer for arrays)."""
    if isinstance(a, np.ndarray):
        if not a.flags.c_contiguous:
            raise LaunchError(f"{kernel}: array arguments must be C-contiguous, got strides {a.strides}")
        return np.array(a.ctypes.data, np.uintp)
    if isinstance(a, np.generic):
        return np.array(a)
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        raise LaunchError(f"{kernel}: cannot pass a {type(a).__name__} to a kernel (the CPU harness takes "
                          f"NumPy arrays and NumPy scalars)")
    return np.array(a, np.int64 if isinstance(a, int) else np.float64)


class Module:
    """The compiled kernels of one .cu file; `get_function` as on cupy.RawModule."""

    def __init__(self, source, filename):
        self.kernels = dict(kernels_in(source))
        self.lib = ctypes.CDLL(str(build(source, filename)))
        u3, size = ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t
        self.lib.harness_launch.argtypes = (ctypes.c_char_p, u3, u3, size, ctypes.POINTER(ctypes.c_void_p),
                                            ctypes.POINTER(size), ctypes.c_int, ctypes.c_char_p, size)
        self.lib.harness_launch.restype = ctypes.c_int

    def get_function(self, name):
        if name not in self.kernels:
            raise LaunchError(f"no kernel named {name}; this module has {', '.join(self.kernels)}")
        return Function(self, name)


@functools.cache
def _load(name, sanitize):
    return Module(sources.source(name), str(KERNEL_DIR / f"{name}.cu"))


def load(name):
    """The harness module for kernels/<name>.cu (built once per process and sanitizer setting)."""
    return _load(name, os.environ.get("ALEXNET_HARNESS_SANITIZE", ""))
