// digits.h: carrying an index's digits across a grid-stride loop instead of dividing (docs/kernels.md,
// "Integer division"). A thread splits its first index and the grid stride into digits once, with
// index_digit, before its loop; each iteration adds the stride's digits to its own and brings each
// back under its radix with index_carry, as in written addition. kernels/loader.py pastes this file
// into the .cu files that include it.

// The lowest digit of v in base `radix`, leaving the rest in v. It divides: only before the loops.
__device__ __forceinline__ int index_digit(int& v, int radix) {
    const int rest = v / radix;
    const int digit = v - rest * radix;
    v = rest;
    return digit;
}

// A digit that may have reached its radix after an addition: brought back under it, returning the
// carry into the next digit. Both addends are below the radix, so one subtraction always suffices.
__device__ __forceinline__ int index_carry(int& digit, int radix) {
    const int carry = digit >= radix;
    if (carry) digit -= radix;
    return carry;
}
