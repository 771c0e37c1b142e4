"""Winograd's minimal filtering F(m x m, r x r): the CPU algorithm for 3x3 and 5x5 stride-1
convolutions (AlexNet's conv2 (5x5), conv3, conv4 and conv5 (3x3)), used by Conv2d in place of
im2col. Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2015).

The idea, on the smallest case F(2x2, 3x3). Each output tile of 2x2 pixels depends on a 4x4 input
tile d. Instead of the 36 multiply-adds per channel pair of the direct sum, Winograd computes it
with 16 products:
    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, all 4x4 in the middle)
      B^T = [[1, 0,-1, 0],   G = [[ 1,   0,   0 ],   A^T = [[1, 1, 1, 0],
             [0, 1, 1, 0],        [1/2, 1/2, 1/2],          [0, 1,-1, 1]]
             [0,-1, 1, 0],        [1/2,-1/2, 1/2],
             [0,-1, 0, 1]]        [ 0,   0,   1 ]]
Exact in real arithmetic: a polynomial-interpolation identity. Read the filter g and the m
outputs' weights as polynomials; G evaluates the filter's at the points 0, 1, -1 (and its leading
coefficient: the point infinity), B^T carries the input to the same points, the products multiply
there, and A^T interpolates back. With alpha = m + r - 1 points (alpha - 1 finite ones and
infinity) the same construction gives F(m x m, r x r) for any m: alpha x alpha input tiles,
alpha^2 products per m x m output tile where the direct sum has m^2 r^2. `transforms(m, r)` builds
the three matrices from the points in exact rational arithmetic: A^T[i, j] = p_j^i, G[j, k] =
p_j^k / prod_{l != j} (p_j - p_l) (infinity's row and column pick the leading coefficients), and
B^T the one matrix that makes the identity hold; then each row j of B^T is multiplied by the s_j
that makes it primitive integers (exact in float32) and row j of G divided by it, the sign chosen
so that G's first nonzero entry is positive. For F(2x2, 3x3) that gives the matrices above (Lavin
and Gray's, up to the sign of the point infinity's column and row).

Which tile. Larger tiles need fewer products per output (alpha^2 / m^2) and, as much, fewer
transformed tiles to write and read, which on a CPU cost as much as the products; but the points
spread out, the transforms' coefficients grow, and float32 rounding grows with them (`OUTPUT_TILE`):
    3x3 kernels, F(2x2, 3x3): 4x4 tiles at 0, 1, -1: 16 products per 4 outputs (direct: 36)
    5x5 kernels, F(4x4, 5x5): 8x8 tiles at 0, 1, -1, 2, -2, 1/2, -1/2: 64 products per 16 outputs
                (direct: 400), 4 per output where F(2x2, 5x5) has 9
Their float32 error, measured against float64 direct sums over 256 channels of normal data
(largest error over the mean output): 2e-6 for F(2x2, 3x3), 3e-5 for F(4x4, 5x5) (F(2x2, 5x5):
2e-5), where the direct float32 sum has 5e-7; the point sets are the most accurate of those tried.
Measured on 2 cores in the batch-32 step (bench/cpu_step.py, alternating; docs/benchmarks.md):
conv2 forward+backward 178-194 ms with F(2x2, 5x5), 106-136 ms with F(4x4, 5x5). For the 3x3 layers' 13x13 outputs
F(3x3, 3x3) and F(4x4, 3x3) were no faster (20% and 27% fewer products, but smaller ones, which
BLAS runs less well), so they keep the most accurate tile.
Not in IEEE arithmetic at NaN and infinity: the transforms multiply every pixel of a tile by the
zeros of B too, so a non-finite input makes all m x m outputs of each tile whose input tile holds
it NaN (for 3x3 kernels up to 4 tiles, 16 outputs, where the direct sum has 9 non-finite).
Summed over input channels, the elementwise product becomes alpha^2 matrix products, one per
position xi of the alpha x alpha transformed tile:
    V[xi] = (B^T d B)[xi]   for every (input channel, tile):  (C, T), T = tiles in the batch chunk
    U[xi] = (G g G^T)[xi]   for every (output, input channel): (O, C)
    M[xi] = U[xi] @ V[xi]                                      (O, T)
    Y     = A^T M A per tile, cropped to the output size
With the tiles flattened to alpha^2-vectors the transforms are small matrices too: V = Bk @ D with
Bk = kron(B^T, B^T) (alpha^2 x alpha^2) and D the input tiles, U = Gk g with Gk = kron(G, G)
(alpha^2 x r^2), and Y = Ak @ M with Ak = kron(A^T, A^T) (m^2 x alpha^2). For conv3's 13x13
output (7x7 tiles of 2x2) the 16 products cost 16 * 49 / (9 * 169) = 0.52 of im2col's single
product; for conv2 (27x27, 7x7 tiles of 4x4) the 64 products 64 * 49 / (25 * 729) = 0.17. The
transforms add 10-30%.

Backward. The forward is a chain of linear maps, so the backward is their transposes in reverse
(exact, not an approximation of the direct conv's gradient):
    dM  = Ak^T @ dY                    (dY: dout cut into the same m x m output tiles)
    dU[xi] = dM[xi] @ V[xi]^T  ->  dW = Gk^T applied to dU      (V is cached by the forward)
    dV[xi] = U[xi]^T @ dM[xi]  ->  dD = Bk^T @ dV, and each input tile gradient is added back to
    the input pixels it was cut from (tiles overlap by r - 1 pixels: overlapping tiles add up).
Groups are a batch axis of the products: U[xi] is (groups, O/groups, C/groups), V[xi] is
(groups, C/groups, T). (G is the filter transform above, never the number of groups.)

Layouts (per batch chunk of n samples): the padded input xc is channel-major (C, n, Hp, Wp), as
in im2col; tiles are ordered (n, tile row, tile column), so T = n * TH * TW.

The interface Conv2d calls is layers/conv_im2col.py's: prepare_weights (here U, the transformed
filters, once per forward), forward_chunk (saves V) and backward_chunk.
"""
import math
from fractions import Fraction

import numpy as np
from numpy.lib.stride_tricks import as_strided

from alexnet.engine import workspace
from alexnet.engine.threads import batch_grain

# (m, r) -> the finite points of F(m x m, r x r) (infinity is always the last one). The layer runs
# OUTPUT_TILE's; F(2x2, 5x5), the one conv2 ran before, stays to compare with (and the
# walkthrough's one-tile example is F(2x2, 3x3))
POINTS = {(2, 3): (0, 1, -1), (2, 5): (0, 1, -1, 2, -2), (4, 5): (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))}
OUTPUT_TILE = {3: 2, 5: 4}          # kernel side r -> the output tile side m the layer runs
_TRANSFORMS, _MATS = {}, {}


def _solve(rows, rhs):
    """The one x with rows @ x = rhs, in Fractions (Gauss-Jordan; the system may have more equations
    than unknowns but must be consistent and of full rank)."""
    aug = [list(row) + [v] for row, v in zip(rows, rhs)]
    n, pivots, top = len(rows[0]), [], 0
    for col in range(n):
        pivot = next((i for i in range(top, len(aug)) if aug[i][col] != 0), None)
        if pivot is None:
            continue
        aug[top], aug[pivot] = aug[pivot], aug[top]
        aug[top] = [v / aug[top][col] for v in aug[top]]
        for i in range(len(aug)):
            if i != top and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [v - f * w for v, w in zip(aug[i], aug[top])]
        pivots.append(col)
        top += 1
    if any(row[-1] != 0 for row in aug[top:]):
        raise ArithmeticError("the Winograd identity has no solution for these points")
    if len(pivots) < n:             # distinct points give a unique B^T; repeated ones would not
        raise ArithmeticError("the Winograd identity does not fix B^T for these points")
    x = [Fraction(0)] * n
    for i, col in enumerate(pivots):
        x[col] = aug[i][-1]
    return x


def transforms(m, r):
    """(B^T, G, A^T) of F(m, r) in float64: alpha x alpha, alpha x r and m x alpha, alpha = m + r - 1,
    built exactly from POINTS[(m, r)] (module docstring)."""
    if (m, r) not in _TRANSFORMS:
        p = [Fraction(v) for v in POINTS[(m, r)]]
        a = m + r - 1
        AT = [[p[j] ** i for j in range(a - 1)] + [Fraction(i == m - 1)] for i in range(m)]
        G = []
        for j in range(a - 1):
            norm = Fraction(1)
            for l in range(a - 1):
                norm *= p[j] - p[l] if l != j else 1
            G.append([p[j] ** k / norm for k in range(r)])
        G.append([Fraction(k == r - 1) for k in range(r)])
        # column l of B^T: sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k] for every output i and tap k
        eqs = [[AT[i][j] * G[j][k] for j in range(a)] for i in range(m) for k in range(r)]
        cols = [_solve(eqs, [Fraction(l == i + k) for i in range(m) for k in range(r)]) for l in range(a)]
        BT = [[cols[l][j] for l in range(a)] for j in range(a)]
        for j in range(a):              # row j of B^T times s, row j of G over s: the product is unchanged
            denominators = math.lcm(*(v.denominator for v in BT[j]))
            s = Fraction(denominators, math.gcd(*(int(v * denominators) for v in BT[j])))
            s = -s if next(v for v in G[j] if v) * s < 0 else s         # G's first entry positive
            BT[j] = [v * s for v in BT[j]]
            G[j] = [v / s for v in G[j]]
        _TRANSFORMS[(m, r)] = tuple(np.array(x, np.float64) for x in (BT, G, AT))
    return _TRANSFORMS[(m, r)]


def matrices(dtype, r=3, m=None):
    """(Bk, Gk, Ak) in `dtype` for r x r kernels and m x m output tiles (default: OUTPUT_TILE[r]):
    the 2-D transforms as matrices on flat tiles (alpha^2 x alpha^2, alpha^2 x r^2, m^2 x alpha^2)."""
    key = (np.dtype(dtype), r, m or OUTPUT_TILE[r])
    if key not in _MATS:
        _MATS[key] = tuple(np.kron(x, x).astype(key[0]) for x in transforms(key[2], r))
    return _MATS[key]


def tile_side(r):
    """alpha: the side of the input tile of an m x m output tile of an r x r kernel."""
    return OUTPUT_TILE[r] + r - 1


NAME = "winograd"


def applies(kernel_size, stride):
    return kernel_size in OUTPUT_TILE and stride == 1


# 5x5 Winograd's products have the input channels per group as their inner dimension; below this
# OpenBLAS runs them too slowly for 6x fewer multiplications to pay. Measured on 2 cores, forward +
# backward at batch 32, 27x27, F(4x4, 5x5) against im2col: 48 channels per group (AlexNet's conv2)
# 117 against 240 ms, 16 per group 49 against 60, 8 per group 16 against 21, 3 per group 14
# against 10 (alexnet-small's conv2, 16 per group at 15x15, batch 128: 35 against 52-63 ms)
MIN_CHANNELS_5x5 = 8
# the samples of a chunk: as many as keep its products' output M (alpha^2 x O x tiles) near this
# size, so that the memory-bound passes over M (the output transform) stay in cache
CHUNK_BYTES = 16 << 20


def pays(kernel_size, stride, group_channels):
    """Whether `algorithm="auto"` takes Winograd: every 3x3 stride-1 convolution, and the 5x5 ones
    with enough input channels per group."""
    return applies(kernel_size, stride) and (kernel_size == 3 or group_channels >= MIN_CHANNELS_5x5)


def samples_per_chunk(conv, in_shape):
    _, OH, OW = conv.output_shape(in_shape)
    TH, TW = tiles(OH, OW, conv.kernel_size)
    sample_bytes = tile_side(conv.kernel_size) ** 2 * conv.out_channels * TH * TW * 4
    return batch_grain(sample_bytes, CHUNK_BYTES)


def why(conv):
    r = conv.kernel_size
    m = OUTPUT_TILE[r]
    return (f"winograd F({m}x{m},{r}x{r}): {r}x{r} stride 1, {tile_side(r) ** 2} products per {m}x{m} output tile "
            f"where im2col has {m * m * r * r}")


def product_flops(conv, in_shape, need_dx=True):
    """(forward, backward) product flops per sample: the alpha^2 products U[xi] @ V[xi] over the
    tiles (the transforms, small matrices against many tiles, are counted too: they are products)."""
    C, O, r = conv.in_channels, conv.out_channels, conv.kernel_size
    m, a2 = OUTPUT_TILE[r], tile_side(r) ** 2
    _, OH, OW = conv.output_shape(in_shape)
    TH, TW = tiles(OH, OW, r)
    T = TH * TW
    products = 2 * a2 * (O // conv.groups) * (C // conv.groups) * conv.groups * T      # M = U V
    input_transform, output_transform = 2 * a2 * a2 * C * T, 2 * m * m * a2 * O * T        # Bk D, Ak M
    forward = products + input_transform + output_transform
    # dM = Ak^T dY; dU = dM V^T; dV = U^T dM; dD = Bk^T dV
    backward = output_transform + products + (products + input_transform if need_dx else 0)
    return forward, backward


def tiles(out_h, out_w, r):
    """Number of m x m output tiles down and across for r x r kernels (the last ones may hang over
    the edge)."""
    m = OUTPUT_TILE[r]
    return -(-out_h // m), -(-out_w // m)


def forward_chunk(conv, x, U, out):
    """x (n, C, H, W) -> out (n, O, OH, OW) written in place, with U = prepare_weights(W) (one
    per forward, shared by the chunks); returns V (alpha^2, C * T) for the backward."""
    n, C, H, Wd = x.shape
    O, OH, OW = out.shape[1:]
    P, groups, b, r = conv.padding, conv.groups, conv.params["b"], conv.kernel_size
    Bk, _, Ak = matrices(x.dtype, r)
    m, a = OUTPUT_TILE[r], tile_side(r)
    TH, TW = tiles(OH, OW, r)
    T = n * TH * TW
    # zero-padded, channel-major input covering every tile: (C, n, m TH + r - 1, m TW + r - 1)
    xc = workspace.zeros((C, n, m * TH + r - 1, m * TW + r - 1), x.dtype)
    xc[:, :, P:P + H, P:P + Wd] = x.transpose(1, 0, 2, 3)
    sC, sN, sH, sW = xc.strides
    # D[u, v, c, t] = d_t[u, v]: the a x a input tile of every (channel, tile), at a stride of m
    D = workspace.empty((a * a, C * T), x.dtype)
    D.reshape(a, a, C, n, TH, TW)[...] = as_strided(xc, (a, a, C, n, TH, TW),
                                                     (sH, sW, sC, sN, m * sH, m * sW))
    V = np.matmul(Bk, D, out=workspace.empty((a * a, C * T), x.dtype))         # B^T d B, flat
    M = np.matmul(U, V.reshape(a * a, groups, C // groups, T),
                  out=workspace.empty((a * a, groups, O // groups, T), x.dtype))  # a^2 products
    Y = np.matmul(Ak, M.reshape(a * a, O * T), out=workspace.empty((m * m, O * T), x.dtype))
    # Y[u, v, o, (n, i, j)] is output pixel (m i + u, m j + v): interleave the tiles, crop, add bias
    full = workspace.empty((n, O, TH, m, TW, m), x.dtype)
    full[...] = Y.reshape(m, m, O, n, TH, TW).transpose(3, 2, 4, 0, 5, 1)
    np.add(full.reshape(n, O, m * TH, m * TW)[:, :, :OH, :OW], b[:, None, None], out=out)
    return V


def prepare_weights(W, groups):
    """U[xi, g, o, c] = (G w G^T)[xi] for the r x r filter w = W[g * Og + o, c]:
    (alpha^2, groups, Og, Cg)."""
    O, Cg, r = W.shape[:3]
    Gk = matrices(W.dtype, r)[1]
    U = (W.reshape(O * Cg, r * r) @ Gk.T).T                                    # (alpha^2, O * Cg)
    return np.ascontiguousarray(U).reshape(-1, groups, O // groups, Cg)


def backward_chunk(conv, dout, V, U, x_shape, dx, relu_out=None):
    """dout (n, O, OH, OW), the forward's V and U -> (dW, db) of this chunk; dx (n, C, H, W) is
    written in place unless it is None; `relu_out`: an absorbed ReLU's output, whose mask dout
    takes first."""
    n, O, OH, OW = dout.shape
    _, C, H, Wd = x_shape
    P, groups, r = conv.padding, conv.groups, conv.kernel_size
    Cg, Og, m, a = C // groups, O // groups, OUTPUT_TILE[r], tile_side(r)
    Bk, Gk, Ak = matrices(dout.dtype, r)
    TH, TW = tiles(OH, OW, r)
    T = n * TH * TW
    # dY[u, v, o, (n, i, j)] = dout[n, o, m i + u, m j + v], zero where a tile hangs over the edge
    dpad = workspace.zeros((n, O, m * TH, m * TW), dout.dtype)
    if relu_out is None:
        dpad[:, :, :OH, :OW] = dout
    else:
        np.multiply(dout, relu_out > 0, out=dpad[:, :, :OH, :OW])
    db = dpad.sum(axis=(0, 2, 3))
    dY = workspace.empty((m, m, O, n, TH, TW), dout.dtype)
    dY[...] = dpad.reshape(n, O, TH, m, TW, m).transpose(3, 5, 1, 0, 2, 4)
    dM = np.matmul(Ak.T, dY.reshape(m * m, O * T), out=workspace.empty((a * a, O * T), dout.dtype))
    dM = dM.reshape(a * a, groups, Og, T)
    Vg = V.reshape(a * a, groups, Cg, T)
    dU = np.matmul(dM, Vg.transpose(0, 1, 3, 2))                               # (a^2, groups, Og, Cg)
    dW = (dU.reshape(a * a, O * Cg).T @ Gk).reshape(O, Cg, r, r)               # G^T dU G
    if dx is None:
        return dW, db
    dV = np.matmul(U.transpose(0, 1, 3, 2), dM, out=workspace.empty((a * a, groups, Cg, T), dout.dtype))
    dD = np.matmul(Bk.T, dV.reshape(a * a, C * T), out=workspace.empty((a * a, C * T), dout.dtype))
    # add every input tile's gradient back where the tile was cut: entry (u, v) of tile (i, j)
    # came from input pixel (m i + u, m j + v). One strided add per (u, v), each over all tiles at
    # once; tiles overlap by r - 1 pixels, so overlapping entries add up.
    dxc = workspace.zeros((C, n, m * TH + r - 1, m * TW + r - 1), dout.dtype)
    dD = dD.reshape(a, a, C, n, TH, TW)
    for u in range(a):
        for v in range(a):
            dxc[:, :, u:u + m * TH:m, v:v + m * TW:m] += dD[u, v]
    dx[...] = dxc[:, :, P:P + H, P:P + Wd].transpose(1, 0, 2, 3)
    return dW, db
