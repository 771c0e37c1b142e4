"""Every kernels/*.cu compiles with NVRTC, exactly as CuPy builds it, with no GPU needed.

NVRTC, not only nvcc or g++: it is the compiler CuPy's RawModule uses, and it differs (no
<math.h>, no INFINITY macro). Each file is compiled to a CUBIN for a real architecture with
CuPy's options plus -Xptxas=-v, so ptxas runs and logs each kernel's registers, spills and static
shared memory; the test fails on any error or warning, any spill, or shared memory over the 48 KB
a block can have without opting in. NVRTC comes from an NVIDIA wheel (nvidia-cuda-nvrtc, CUDA 13,
as the [test] extra installs; or nvidia-cuda-nvrtc-cu12), loaded with ctypes; the test skips,
saying so, without one.
"""
import ctypes
import glob
import os
import re

import pytest

from alexnet.kernels import harness, loader

ARCHS = ("sm_80", "sm_90")  # A100, H100
OPTIONS = loader.NVRTC_OPTIONS + ("--device-as-default-execution-space", "-Xptxas=-v")
SHARED_LIMIT = 48 * 1024


def find_nvrtc():
    """ctypes handle on libnvrtc from an NVIDIA wheel (newest CUDA first), or None.

    libnvrtc loads its builtins library (libnvrtc-builtins.so.*) from its own folder at the first
    compile; where the loader's search path does not cover that folder (the CUDA 13 wheel's
    nvidia/cu13/lib), it fails there. So the builtins are loaded first, globally, from the same
    folder."""
    try:
        import nvidia
    except ImportError:
        return None
    found = [path for root in nvidia.__path__
             for path in glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*"))
             if "builtins" not in path and ".alt." not in path]
    def version(path):
        return tuple(int(part) for part in re.findall(r"\d+", path.rsplit(".so", 1)[-1]))

    for path in sorted(found, key=version, reverse=True):
        try:
            for builtins in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*"))):
                if ".alt." not in builtins:
                    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib
    return None


def nvrtc_version():
    major, minor = ctypes.c_int(), ctypes.c_int()
    NVRTC.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


NVRTC = find_nvrtc()
needs_nvrtc = pytest.mark.skipif(NVRTC is None, reason="NVRTC wheel not installed: pip install "
                                                       "nvidia-cuda-nvrtc (no GPU needed)")


def compile_cubin(source, name, arch):
    """(ok, log) of NVRTC compiling `source` to a CUBIN for `arch`."""
    prog = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None) == 0
    try:
        opts = [o.encode() for o in OPTIONS + (f"-arch={arch}",)]
        result = NVRTC.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace")
        if result != 0:
            text = f"{NVRTC.nvrtcGetErrorString(result).decode()}\n{text}"
        return result == 0, text
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))


def resources(log):
    """{kernel: {"registers", "spill_stores", "spill_loads", "smem"}} parsed from the ptxas -v log."""
    found = {}
    for section in re.split(r"(?=ptxas info\s+: Compiling entry function)", log)[1:]:
        name = re.search(r"Compiling entry function '(\w+)'", section).group(1)
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", section)
        regs = re.search(r"Used (\d+) registers", section)
        smem = re.search(r"(\d+) bytes smem", section)
        found[name] = {"registers": int(regs.group(1)), "spill_stores": int(spills.group(1)),
                       "spill_loads": int(spills.group(2)), "smem": int(smem.group(1)) if smem else 0}
    return found


def problems(log, expected_kernels):
    """What is wrong with a successful compile's log: warnings, missing kernels, spills, shared memory."""
    bad = [line for line in log.splitlines() if re.search(r"\bwarning\b", line, re.I)]
    res = resources(log)
    bad += [f"{k}: not in the ptxas log" for k in expected_kernels if k not in res]
    for k, r in res.items():
        if r["spill_stores"] or r["spill_loads"]:
            bad.append(f"{k}: spills ({r['spill_stores']} bytes stored, {r['spill_loads']} loaded)")
        if r["smem"] > SHARED_LIMIT:
            bad.append(f"{k}: {r['smem']} bytes of static shared memory > {SHARED_LIMIT}")
    return bad


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", loader.kernel_files())
def test_kernel_file_compiles_cleanly_with_nvrtc(name, arch):
    source = loader.source(name)
    ok, log = compile_cubin(source, f"{name}.cu", arch)
    assert ok, log
    assert problems(log, [k for k, _ in harness.kernels_in(source)]) == [], log


@needs_nvrtc
def test_the_nvrtc_found_is_a_current_one():
    assert nvrtc_version() >= (12, 0)


@needs_nvrtc
def test_nvrtc_rejects_what_nvcc_would_accept():
    ok, log = compile_cubin('extern "C" __global__ void f(float* x) { x[0] = INFINITY; }', "inf.cu", "sm_80")
    assert not ok and "INFINITY" in log


def test_log_parser_flags_spills_and_shared_memory():
    log = """ptxas info    : Compiling entry function 'a' for 'sm_80'
ptxas info    : Function properties for a
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 50000 bytes smem, 388 bytes cmem[0]
ptxas info    : Compiling entry function 'b' for 'sm_80'
ptxas info    : Function properties for b
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 388 bytes cmem[0]
"""
    assert resources(log)["a"] == {"registers": 255, "spill_stores": 4, "spill_loads": 4, "smem": 50000}
    assert problems(log, ["a", "b", "c"]) == ["c: not in the ptxas log", "a: spills (4 bytes stored, 4 loaded)",
                                               "a: 50000 bytes of static shared memory > 49152"]
