// precision.h: the storage types a kernel reads and writes, and their conversions to float.
//
// Every kernel computes in float32. What changes with --precision bf16 is the storage of the
// activations, their gradients and the products' operands: BF16, the top 16 bits of a float32
// (sign, the same 8 exponent bits, 7 of the 23 mantissa bits). CUDA has __nv_bfloat16, but its
// header cannot be compiled by g++ for the CPU harness; so BF16 is a struct of the 16 bits, and
// two conversions written out here:
//
//   to_f32(bf16)     exact: the 16 bits become the top of a float32, the rest zeros
//   store(p, i, v)   float32 -> BF16 rounded to nearest, ties to even (the rounding cuBLAS,
//                    PyTorch and ml_dtypes use); a NaN stays a quiet NaN of the same sign
//
// A kernel body is a template over its storage types (float or bf16) and reads through to_f32 and
// writes through store, so one body serves both precisions; each file's extern "C" wrappers
// instantiate it (relu_forward for float32, relu_forward_bf16 for BF16). No name expressions and
// no C++ name mangling: the loader, the harness and the NVRTC check find every kernel by name.
//
// kernels/loader.py pastes this file into every .cu that includes it (NVRTC sees one text, and
// CuPy's cache key covers it), and the harness compiles the same text with g++. (No #pragma once:
// the text lands in the main file, where NVRTC would warn about it.)

struct bf16 {
    unsigned short bits;
};

__device__ __forceinline__ float to_f32(float v) { return v; }

__device__ __forceinline__ float to_f32(bf16 v) { return __int_as_float((int)((unsigned)v.bits << 16)); }

// Round to nearest even on the bit pattern: adding 0x7FFF plus the lowest kept bit carries into the
// kept bits exactly when the dropped half is above one half, or equal to it with an odd kept part.
// An overflow past the largest finite BF16 carries into the exponent and gives infinity, as it must.
__device__ __forceinline__ bf16 f32_to_bf16(float v) {
    const unsigned u = (unsigned)__float_as_int(v);
    bf16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h.bits = (unsigned short)((u >> 16 & 0x8000u) | 0x7fc0u);  // NaN: the canonical quiet one
    } else {
        h.bits = (unsigned short)((u + 0x7fffu + (u >> 16 & 1u)) >> 16);
    }
    return h;
}

__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }

__device__ __forceinline__ void store(bf16* p, long long i, float v) { p[i] = f32_to_bf16(v); }
