"""Precision: how the GPU path stores numbers and multiplies matrices. One setting per model,
chosen where the model moves to its device (`model.to("cuda", precision="bf16")`, `--precision`).

    fp32   (default, strict) every array float32; every product in float32 arithmetic
           (cuBLAS compute type CUBLAS_COMPUTE_32F on a handle in its default math mode, so no
           TF32 whatever NVIDIA_TF32_OVERRIDE or CuPy's settings say)
    tf32   every array float32; the products on the tensor cores in TF32: each operand rounded to
           10 mantissa bits, products and sums in float32 (CUBLAS_COMPUTE_32F_FAST_TF32).
           Everything outside the products is exactly fp32's.
    bf16   mixed precision as llm.c trains: float32 master weights, biases and momentum; the
           activations, their gradients, the cached patch matrices and the products' operands
           stored as BF16 (8 exponent bits like float32, 8 significant bits); every product
           accumulated in float32 (CUBLAS_COMPUTE_32F with BF16 inputs), every kernel computing
           in float32 and rounding only what it stores; the weight gradients float32; the
           softmax and the loss float32 (the model hands its logits over as float32). The SGD
           kernel updates the float32 masters and writes each weight's BF16 copy for the next
           step's products.

What each keeps and loses, and why BF16 needs no loss scaling but does need float32 masters:
docs/kernels.md, "Precision". On the CPU, NumPy has neither TF32 nor BF16 arithmetic: the CPU
path is fp32 always, and `check` refuses the others there in one line. The CUDA kernels run on
the CPU harness in every precision (tests), where engine/gemm.py emulates TF32 and BF16 products
with the helpers below.

BF16 values live in arrays of dtype BF16 (uint16: the 16 bits, as kernels/include/precision.h
reads them); `to_bf16` / `from_bf16` convert NumPy arrays (rounding to nearest even, as the
kernels do; ml_dtypes.bfloat16 agrees bit for bit, tests/test_precision.py).
"""
import numpy as np

from alexnet.kernels.ops import BF16

PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT = "fp32"


def check(precision, device):
    """Raise ValueError, in one line, unless `precision` is one the model can run in on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if device == "cpu" and precision != "fp32":
        raise ValueError(f"--precision {precision} needs --device cuda: the CPU path computes in float32 "
                         f"(NumPy has no TF32 or BF16 arithmetic; --precision fp32 runs on the CPU)")


def activation_dtype(precision):
    """How activations and their gradients are stored: BF16 under bf16, else float32."""
    return BF16 if precision == "bf16" else np.dtype(np.float32)


def to_bf16(a):
    """float32 NumPy array -> its BF16 bits (uint16), rounded to nearest, ties to even; a NaN
    becomes the quiet NaN of its sign (0x7FC0 / 0xFFC0), as kernels/include/precision.h does."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = ((u >> np.uint32(16)) & np.uint32(0x8000) | np.uint32(0x7FC0)).astype(np.uint16)
    return np.where(nan, quiet, rounded)


def from_bf16(bits):
    """BF16 bits (uint16) -> float32, exactly."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def round_tf32(a):
    """float32 -> the nearest float32 with a 10-bit mantissa (TF32's), ties away from zero, as
    the tensor cores' input conversion (cvt.rna.tf32.f32) does; an emulation for the CPU harness."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    finite = (u & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    rounded = (u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return np.where(finite, rounded, u).view(np.float32)
