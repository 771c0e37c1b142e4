// A tiled single-precision matrix product, for study: C = A @ B, all row-major float32,
// A (M, K), B (K, N), C (M, N). The engine's products use cuBLAS (cupy.matmul); this is the
// textbook shared-memory version, checked against NumPy like every other kernel.
//
// Block: SGEMM_TILE x SGEMM_TILE threads (16 x 16 = 256). Thread (ty, tx) computes one element,
// C[row, col] with row = tile_row * TILE + ty, col = tile_col * TILE + tx. For each step along K
// the block copies one TILE x TILE tile of A and one of B into shared memory (every thread one
// element of each; adjacent tx read adjacent addresses), waits, accumulates TILE products from
// shared memory (As[ty][k] is a broadcast, Bs[k][tx] conflict-free), and waits again before the
// next copy overwrites the tiles. So each element of A and B is read from global memory
// N / TILE and M / TILE times instead of N and M times. Out-of-range elements load as 0, so any
// M, N, K work. Grid-stride over output tiles in y and x; the loop bounds depend only on the
// block, so every thread of a block reaches every barrier.
// Not yet measured on a GPU.

#define SGEMM_TILE 16

extern "C" __global__ void sgemm_tiled(const float* __restrict__ A, const float* __restrict__ B,
                                       float* __restrict__ C, int M, int N, int K) {
    __shared__ float As[SGEMM_TILE][SGEMM_TILE];
    __shared__ float Bs[SGEMM_TILE][SGEMM_TILE];
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (int tile_row = blockIdx.y; tile_row * SGEMM_TILE < M; tile_row += gridDim.y) {
        for (int tile_col = blockIdx.x; tile_col * SGEMM_TILE < N; tile_col += gridDim.x) {
            const int row = tile_row * SGEMM_TILE + ty;
            const int col = tile_col * SGEMM_TILE + tx;
            float acc = 0.0f;
            for (int k0 = 0; k0 < K; k0 += SGEMM_TILE) {
                As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.0f;
                Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(k0 + ty) * N + col] : 0.0f;
                __syncthreads();
                for (int k = 0; k < SGEMM_TILE; ++k) acc += As[ty][k] * Bs[k][tx];
                __syncthreads();
            }
            if (row < M && col < N) C[row * N + col] = acc;
        }
    }
}
