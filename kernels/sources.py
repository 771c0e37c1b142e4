"""The text of the kernels: kernels/<name>.cu with its includes pasted in, as every compiler gets it
(NVRTC through CuPy, the NVRTC check, the CPU harness's g++)."""
import re
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
INCLUDE_DIR = KERNEL_DIR / "include"
# `#include "precision.h"` (or "digits.h") in a .cu file: pasted in by source() (cuda_cpu.h is the
# harness's own, included before)
_INCLUDE = re.compile(r'^#include "(\w+\.h)"[ \t]*$', re.M)


def source(name):
    """The text of kernels/<name>.cu with its includes of kernels/include/ pasted in, as NVRTC, the
    harness and the compile test all get it: one text, so CuPy's cache (keyed by the source)
    sees a change to a header, and no include path is needed. #line directives keep the line
    numbers of compiler messages pointing into the right file."""
    text = (KERNEL_DIR / f"{name}.cu").read_text()

    def paste(m):
        after = text.count("\n", 0, m.end()) + 2     # the line after the #include, 1-based
        return f'#line 1 "{m.group(1)}"\n{(INCLUDE_DIR / m.group(1)).read_text()}#line {after} "{name}.cu"'
    return _INCLUDE.sub(paste, text)


def kernel_files():
    """Names of the .cu files, e.g. ["conv", "dropout", ...]."""
    return sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))
