"""Every kernels/*.cu compiles with NVRTC, exactly as CuPy builds it, with no GPU needed.

NVRTC, not only nvcc or g++: it is the compiler CuPy's RawModule uses, and it differs (no
<math.h>, no INFINITY macro). Each file is compiled to a CUBIN for a real architecture with
CuPy's options plus -Xptxas=-v, so ptxas runs and logs each kernel's registers, spills and static
shared memory; the test fails on any error or warning, any spill, or shared memory over the 48 KB
a block can have without opting in. NVRTC comes from an NVIDIA wheel (nvidia-cuda-nvrtc, CUDA 13,
as the [test] extra installs; or nvidia-cuda-nvrtc-cu12), loaded with ctypes; the test skips,
saying so, without one.

The same compiler's PTX (compute_90) shows where the kernels divide integers: a `div`/`rem` by a
run-time value has no hardware instruction behind it (about 20 SASS instructions on sm_90;
docs/kernels.md), so none may sit inside a loop, and each kernel's count before its loops is
bounded (test_no_integer_division_inside_a_loop prints the table with -s).
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
PTX_ARCH = "compute_90"


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


def compile_ptx(source, name, arch=PTX_ARCH):
    """The PTX NVRTC makes of `source` for a virtual architecture, with CuPy's options."""
    prog = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None) == 0
    try:
        opts = [o.encode() for o in loader.NVRTC_OPTIONS + ("--device-as-default-execution-space", f"-arch={arch}")]
        result = NVRTC.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        assert result == 0, f"{name}: {NVRTC.nvrtcGetErrorString(result).decode()}"
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetPTX(prog, ptx)
        return ptx.value.decode()
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))


_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(")
_LABEL = re.compile(r"^(\$\w+):")
_BRANCH = re.compile(r"^(@!?%\w+\s+)?bra(?:\.uni)?\s+(\$\w+)\s*;")
_RETURN = re.compile(r"^(@!?%\w+\s+)?(?:ret|exit)\b")
INTEGER_DIVISION = re.compile(r"^(?:@!?%\w+\s+)?(?:div|rem)(?:\.\w+)*\.[su](?:16|32|64)\s")


def ptx_bodies(ptx):
    """{kernel: the instruction lines of its body} for every .entry in a PTX text."""
    bodies = {}
    for head in _ENTRY.finditer(ptx):
        start = i = ptx.index("{", head.end())
        depth = 0
        while True:
            depth += {"{": 1, "}": -1}.get(ptx[i], 0)
            if depth == 0:
                break
            i += 1
        lines = (line.split("//")[0].strip() for line in ptx[start + 1:i].splitlines())
        bodies[head.group(1)] = [line for line in lines if line and line not in "{}" and not line.startswith(".")]
    return bodies


def division_counts(lines):
    """(integer div/rem instructions, how many of them inside a loop) of one kernel's PTX body.

    Inside a loop means in a basic block that lies on a cycle of the control-flow graph: a block of
    a strongly connected component with more than one block, or one that branches to itself."""
    blocks, label_of = [[]], {}
    for line in lines:
        label = _LABEL.match(line)
        if label:
            if blocks[-1]:
                blocks.append([])
            label_of[label.group(1)] = len(blocks) - 1
            continue
        blocks[-1].append(line)
        if _BRANCH.match(line) or _RETURN.match(line):
            blocks.append([])
    successors = []
    for b, block in enumerate(blocks):
        last = block[-1] if block else ""
        branch, ret = _BRANCH.match(last), _RETURN.match(last)
        succ = {label_of[branch.group(2)]} if branch else set()
        if not ((branch or ret) and not (branch or ret).group(1)) and b + 1 < len(blocks):
            succ.add(b + 1)  # falls through unless it ends in an unconditional branch or return
        successors.append(succ)
    # Tarjan's strongly connected components
    index, low, on_stack, stack, cyclic = {}, {}, set(), [], set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in successors[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in successors[v]:
                cyclic.update(component)

    for v in range(len(blocks)):
        if v not in index:
            visit(v)
    per_block = [sum(bool(INTEGER_DIVISION.match(line)) for line in block) for block in blocks]
    return sum(per_block), sum(n for b, n in enumerate(per_block) if b in cyclic)


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


# ---- integer division in the PTX --------------------------------------------------------------------
# The integer div/rem instructions each kernel's PTX keeps (NVRTC 13.5, compute_90), all of them
# before its loops: the digits of the thread's first index and of the grid stride, the
# quotient-remainder pairs its loops add instead of dividing, and any the compiler adds itself to
# count a loop's trips before unrolling it (sgd_update's two, one in conv_bias_forward and in
# maxpool_forward). Before issue 19 the kernels had 71, 68 of them inside loops (docs/kernels.md).
DIVISIONS_BEFORE_LOOPS = {
    "conv_im2col": 6, "conv_col2im": 12, "conv_bias_forward": 5, "conv_bias_backward": 4,
    "maxpool_forward": 5, "maxpool_backward": 11, "avgpool_forward": 10, "avgpool_backward": 16,
    "lrn_forward": 4, "lrn_backward": 4, "dropout_forward": 3, "dropout_backward": 3,
    "softmax_xent_backward": 3, "sgd_update": 2, "augment_batch": 6,
}
DEFAULT_DIVISIONS = 0      # a kernel not listed above
COMPILER_SLACK = 2         # another NVRTC may count a loop's trips (one division) where 13.5 does not


def division_table():
    """[(file, kernel, div/rem in the PTX, of which inside loops)] for every kernel."""
    return [(file, kernel, *division_counts(body))
            for file in loader.kernel_files()
            for kernel, body in ptx_bodies(compile_ptx(loader.source(file), f"{file}.cu")).items()]


@needs_nvrtc
def test_no_integer_division_inside_a_loop():
    rows = division_table()
    lines = [f"{'kernel':24} {'div/rem':>7} {'in loops':>8} {'bound':>5}"]
    bad = []
    for file, kernel, total, in_loops in rows:
        # a BF16 entry point instantiates the float32 kernel's body with another storage type
        bound = DIVISIONS_BEFORE_LOOPS.get(kernel.removesuffix("_bf16"), DEFAULT_DIVISIONS) + COMPILER_SLACK
        lines.append(f"{kernel:24} {total:7} {in_loops:8} {bound:5}")
        if in_loops:
            bad.append(f"{kernel} ({file}.cu): {in_loops} integer div/rem inside a loop")
        if total > bound:
            bad.append(f"{kernel} ({file}.cu): {total} integer div/rem, more than {bound}")
    lines.append(f"{'all':24} {sum(r[2] for r in rows):7} {sum(r[3] for r in rows):8}")
    table = "\n".join(lines)
    version = ".".join(map(str, nvrtc_version()))
    print(f"\ninteger div/rem per kernel in the PTX (NVRTC {version}, {PTX_ARCH}):\n{table}")
    assert not bad, "\n".join(bad) + "\n" + table
    assert {k for _, k, _, _ in rows} >= set(DIVISIONS_BEFORE_LOOPS)


@needs_nvrtc
def test_the_division_count_sees_loops():
    """A division of loop-invariant values stays before the loop; one by the loop index is inside."""
    source = """extern "C" __global__ void probe(int* out, int n, int d) {
        const int q = n / d;
        for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = i % d + q;
    }
    extern "C" __global__ void nested(int* out, int n, int d) {
        for (int i = 0; i < n; ++i) {
            for (int j = 0; j < n; ++j) out[i * n + j] = j;
            out[i] = i / d;
        }
    }"""
    counts = {k: division_counts(body) for k, body in ptx_bodies(compile_ptx(source, "probe.cu")).items()}
    assert counts["probe"][0] >= 2 and counts["probe"][1] == 1
    assert counts["nested"][1] >= 1
