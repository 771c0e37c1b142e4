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

// v = q*d + r with 0 <= r < d, for a divisor d fixed for the whole launch: a quotient and its
// remainder carried together, where a loop body needs both (col2im's (h + P) / S, max-pool's
// h / S, adaptive pooling's bin edges).
struct IndexQR {
    int q, r;
};

// The pair of v. It divides: only before the loops. Floor division, so that a negative v (a
// move backwards) also gets 0 <= r < d.
__device__ __forceinline__ IndexQR index_divmod(int v, int d) {
    const int q = v / d;
    IndexQR a = {q, v - q * d};
    if (a.r < 0) {
        a.r += d;
        --a.q;
    }
    return a;
}

// (a + b) as a pair, from the pairs of a and b: two additions and one compare.
__device__ __forceinline__ IndexQR index_add(IndexQR a, IndexQR b, int d) {
    a.q += b.q;
    a.r += b.r;
    if (a.r >= d) {
        a.r -= d;
        ++a.q;
    }
    return a;
}
