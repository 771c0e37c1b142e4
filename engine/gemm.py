"""Every matrix product of the CUDA path goes through `gemm`, which states its compute type.

    out = gemm(rt, a, b, precision, trans_a=False, trans_b=False, out_dtype=np.float32)

computes op(a) @ op(b), op transposing the last two axes where asked, for 2-D operands or stacks
of them (3-D: one product per leading index, as cupy.matmul broadcasts; a 2-D operand is shared by
the whole stack). The precision (engine/precision.py) decides the arithmetic:

    precision   operands       cuBLAS compute type             output
    fp32        float32        CUBLAS_COMPUTE_32F              float32
    tf32        float32        CUBLAS_COMPUTE_32F_FAST_TF32    float32
    bf16        BF16 (uint16)  CUBLAS_COMPUTE_32F              float32 or BF16 (out_dtype)

Why not cupy.matmul: CuPy's own switch for TF32 (CUPY_TF32, cupy._core.set_compute_type) reaches
2-D products but not the batched path the grouped convolutions take, which passes a fixed
float32 compute type to gemmStridedBatchedEx; and it cannot multiply BF16 stored as uint16. So
this calls cuBLAS itself: cublasGemmEx for one product, cublasGemmStridedBatchedEx for a stack,
on the handle CuPy keeps for the device, with the stream CuPy's current one (the bindings set it:
engine/backend.py cublas). For fp32 the handle's math mode is set to the default first, so no
TF32 is used even where something set CUBLAS_TF32_TENSOR_OP_MATH (NVIDIA_TF32_OVERRIDE=0 also
turns tf32 into fp32: the driver's override wins; bench/gpu_step.py's probe shows which ran).

Layouts. cuBLAS is column-major and our arrays are row-major. A row-major (r, c) array is, read
column-major, its transpose (c, r) with leading dimension c. So out = op(a) @ op(b) (M, N) is
computed as out^T = op(b)^T @ op(a)^T, an (N, M) column-major product: cuBLAS's first operand
is b, its second a. Reading b column-major already gives b^T, which is op(b)^T when we asked for
no transpose; when we asked for b^T, op(b)^T = b and cuBLAS must transpose what it reads. So
cuBLAS transposes an operand exactly when we asked for it (`_cublas_args`), and a transposed
operand is read in place: no copy.

On the CPU harness (NumPy arrays) the same call runs np.matmul in float32, with the operands
first rounded as the GPU would read them: to TF32 under tf32 (engine/precision.py round_tf32, an
emulation: the tests measure tolerances with it), converted from BF16 under bf16 (exact, and
BF16 x BF16 products are exact in float32, so only the float32 sums round, as on the GPU), and
the output rounded to BF16 when asked.
"""
import numpy as np

from alexnet.engine import backend
from alexnet.engine.precision import BF16, from_bf16, round_tf32, to_bf16

CUBLAS_COMPUTE_32F = 68              # cublasComputeType_t (cupy_backends/cuda/libs/cublas.pxd)
CUBLAS_COMPUTE_32F_FAST_TF32 = 77
COMPUTE_TYPES = {"fp32": CUBLAS_COMPUTE_32F, "tf32": CUBLAS_COMPUTE_32F_FAST_TF32, "bf16": CUBLAS_COMPUTE_32F}
_ONE, _ZERO = np.ones(1, np.float32), np.zeros(1, np.float32)   # alpha, beta: host pointers, float for 32F


def operand_dtype(precision):
    return BF16 if precision == "bf16" else np.dtype(np.float32)


def gemm(rt, a, b, precision, trans_a=False, trans_b=False, out_dtype=np.float32, who="gemm"):
    """op(a) @ op(b) in `precision`'s arithmetic; a new array of dtype out_dtype."""
    M, K, N, G = _shapes(a, b, trans_a, trans_b, who)
    want = operand_dtype(precision)
    for what, x in (("a", a), ("b", b)):
        if x.dtype != want or not x.flags.c_contiguous:
            raise TypeError(f"{who}: operand {what} must be a C-contiguous {_name(want)} array under precision "
                            f"{precision}, got {_name(x.dtype)} with shape {tuple(x.shape)}")
    out_dtype = np.dtype(out_dtype)
    if out_dtype != np.float32 and (precision != "bf16" or out_dtype != BF16):
        raise TypeError(f"{who}: output {_name(out_dtype)} under precision {precision}: float32, or BF16 under bf16")
    out = rt.xp.empty(((G,) if G else ()) + (M, N), out_dtype)
    if rt.name == "cupy":
        _cublas(a, b, out, precision, trans_a, trans_b, (M, K, N, G))
    else:
        _emulate(a, b, out, precision, trans_a, trans_b)
    return out


def _name(dtype):
    return "BF16 (uint16)" if np.dtype(dtype) == BF16 else np.dtype(dtype).name


def _shapes(a, b, trans_a, trans_b, who):
    """(M, K, N, G): op(a) is (M, K), op(b) (K, N), G the stack's length (0: one product)."""
    if a.ndim not in (2, 3) or b.ndim not in (2, 3):
        raise ValueError(f"{who}: operands must be 2-D or 3-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    M, K = a.shape[-1:-3:-1] if trans_a else a.shape[-2:]
    K2, N = b.shape[-1:-3:-1] if trans_b else b.shape[-2:]
    stacks = {x.shape[0] for x in (a, b) if x.ndim == 3}
    if K != K2 or len(stacks) > 1:
        raise ValueError(f"{who}: cannot multiply {tuple(a.shape)}{'.T' if trans_a else ''} by "
                         f"{tuple(b.shape)}{'.T' if trans_b else ''}")
    return M, K, N, (stacks.pop() if stacks else 0)


def _emulate(a, b, out, precision, trans_a, trans_b):
    """The product as the GPU computes it, in NumPy (the CPU harness)."""
    read = {"fp32": lambda x: x, "tf32": round_tf32, "bf16": from_bf16}[precision]
    opa, opb = read(a), read(b)
    opa = np.swapaxes(opa, -1, -2) if trans_a else opa
    opb = np.swapaxes(opb, -1, -2) if trans_b else opb
    product = np.matmul(opa, opb)                        # float32 operands: float32 sums (BLAS)
    out[...] = to_bf16(product) if out.dtype == BF16 else product


def _cublas_args(x, transposed):
    """(cuBLAS operation: CUBLAS_OP_T = 1 when `transposed`, else CUBLAS_OP_N = 0; the leading
    dimension, the row length; the elements between stacked matrices, 0 for a shared 2-D one)."""
    return int(transposed), x.shape[-1], (x.shape[-2] * x.shape[-1] if x.ndim == 3 else 0)


def _cublas(a, b, out, precision, trans_a, trans_b, sizes):
    M, K, N, G = sizes
    cublas, runtime, handle = backend.cublas()
    types = {np.dtype(np.float32): runtime.CUDA_R_32F, BF16: runtime.CUDA_R_16BF}
    if precision == "fp32":
        cublas.setMathMode(handle, cublas.CUBLAS_DEFAULT_MATH)
    op_b, ld_b, stride_b = _cublas_args(b, trans_b)
    op_a, ld_a, stride_a = _cublas_args(a, trans_a)
    compute, algo = COMPUTE_TYPES[precision], cublas.CUBLAS_GEMM_DEFAULT
    if G == 0:
        cublas.gemmEx(handle, op_b, op_a, N, M, K, _ONE.ctypes.data, b.data.ptr, types[b.dtype], ld_b,
                      a.data.ptr, types[a.dtype], ld_a, _ZERO.ctypes.data, out.data.ptr, types[out.dtype], N,
                      compute, algo)
    else:
        cublas.gemmStridedBatchedEx(handle, op_b, op_a, N, M, K, _ONE.ctypes.data,
                                    b.data.ptr, types[b.dtype], ld_b, stride_b,
                                    a.data.ptr, types[a.dtype], ld_a, stride_a, _ZERO.ctypes.data,
                                    out.data.ptr, types[out.dtype], N, M * N, G, compute, algo)
