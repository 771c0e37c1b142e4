"""Winograd's minimal filtering F(2x2, rxr): the CPU algorithm for 3x3 and 5x5 stride-1
convolutions (AlexNet's conv2 (5x5), conv3, conv4 and conv5 (3x3)), used by Conv2d in place of
im2col. Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2015).

The idea, for 3x3 kernels. Each output tile of 2x2 pixels depends on a 4x4 input tile d. Instead
of the 36 multiply-adds per channel pair of the direct sum, Winograd computes it with 16 products:
    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, all 4x4 in the middle)
      B^T = [[1, 0,-1, 0],   G = [[ 1,   0,   0 ],   A^T = [[1, 1, 1, 0],
             [0, 1, 1, 0],        [1/2, 1/2, 1/2],          [0, 1,-1,-1]]
             [0,-1, 1, 0],        [1/2,-1/2, 1/2],
             [0, 1, 0,-1]]        [ 0,   0,   1 ]]
Exact in real arithmetic (a polynomial-interpolation identity: evaluate at 0, 1, -1 and infinity,
multiply, interpolate; in float32 it agrees with the direct sum to ~1e-6 relative). For 5x5
kernels the same construction at one more pair of points, 0, 1, -1, 2, -2 and infinity, gives
F(2x2, 5x5): 6x6 input tiles, 36 products per 2x2 output tile where the direct sum has 100 (the
matrices are below: B^T is Lavin's F(4x4, 3x3) one; the larger points cost a few times more
float32 rounding, ~1e-5 relative). In general the tile side is alpha = 2 + r - 1 for an r x r
kernel, and the products per tile alpha^2.
Not in IEEE arithmetic at NaN and infinity: the transforms multiply every pixel of a tile by the
zeros of B too, so a non-finite input makes all four outputs of each 2x2 tile whose input tile
holds it NaN (up to 16 outputs for 3x3, where the direct sum has 9 non-finite).
Summed over input channels, the elementwise product becomes alpha^2 matrix products, one per
position xi of the alpha x alpha transformed tile:
    V[xi] = (B^T d B)[xi]   for every (input channel, tile):  (C, T), T = tiles in the batch chunk
    U[xi] = (G g G^T)[xi]   for every (output, input channel): (O, C)
    M[xi] = U[xi] @ V[xi]                                      (O, T)
    Y     = A^T M A per tile, cropped to the output size
With the tiles flattened to alpha^2-vectors the transforms are small matrices too: V = Bk @ D with
Bk = kron(B^T, B^T) (16x16 for 3x3) and D the input tiles, U = Gk g with Gk = kron(G, G) (16x9),
and Y = Ak @ M with Ak = kron(A^T, A^T) (4x16). For a 13x13 output (7x7 tiles of 2x2) the 16
products cost 16 * 49 / (9 * 169) = 0.52 of im2col's single product; the transforms add ~10%. For
conv2 (27x27, 14x14 tiles) the 36 products cost 36 * 196 / (25 * 729) = 0.39 of im2col's.

Backward. The forward is a chain of linear maps, so the backward is their transposes in reverse
(exact, not an approximation of the direct conv's gradient):
    dM  = Ak^T @ dY                    (dY: dout cut into the same 2x2 output tiles)
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
import numpy as np
from numpy.lib.stride_tricks import as_strided

from alexnet.engine import workspace
from alexnet.engine.threads import batch_grain

# F(2x2, 3x3): the points 0, 1, -1 and infinity
_BT3 = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G3 = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_AT3 = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
# F(2x2, 5x5): 0, 1, -1, 2, -2 and infinity. A^T evaluates the two outputs' polynomial, G the
# filter's, B^T is the inverse Vandermonde's transpose, each of its rows scaled to integers (and
# G's rows divided by the same numbers: their product is unchanged)
_BT5 = np.array([[4, 0, -5, 0, 1, 0], [0, 4, 4, -1, -1, 0], [0, -4, 4, 1, -1, 0], [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_G5 = np.array([[1 / 4, 0, 0, 0, 0], [1 / 6] * 5, [1 / 6, -1 / 6, 1 / 6, -1 / 6, 1 / 6],
                [1 / 24, 1 / 12, 1 / 6, 1 / 3, 2 / 3], [1 / 24, -1 / 12, 1 / 6, -1 / 3, 2 / 3], [0, 0, 0, 0, 1]],
               np.float64)
_AT5 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]], np.float64)
KERNELS = {3: (_BT3, _G3, _AT3), 5: (_BT5, _G5, _AT5)}      # kernel side r -> (B^T, G, A^T)
_MATS = {}


def matrices(dtype, r=3):
    """(Bk, Gk, Ak) in `dtype` for r x r kernels: the 2-D transforms as matrices on flat tiles
    (alpha^2 x alpha^2, alpha^2 x r^2, 4 x alpha^2 with alpha = r + 1)."""
    key = (np.dtype(dtype), r)
    if key not in _MATS:
        _MATS[key] = tuple(np.kron(m, m).astype(key[0]) for m in KERNELS[r])
    return _MATS[key]


def tile_side(r):
    """alpha: the side of the input tile of a 2x2 output tile of an r x r kernel."""
    return r + 1


NAME = "winograd"


def applies(kernel_size, stride):
    return kernel_size in KERNELS and stride == 1


# 5x5 Winograd's products have the input channels per group as their inner dimension; below this
# OpenBLAS runs them too slowly for 2.8x fewer multiplications to pay (measured on 2 cores:
# AlexNet's conv2, 48 per group, forward+backward 200 -> 166 ms at batch 32; 16 per group about
# even; 3 channels 2x slower)
MIN_CHANNELS_5x5 = 32
# the samples of a chunk: as many as keep its products' output M (alpha^2 x O x tiles) near this
# size, so that the memory-bound passes over M (the output transform) stay in cache
CHUNK_BYTES = 16 << 20


def pays(kernel_size, stride, group_channels):
    """Whether `algorithm="auto"` takes Winograd: every 3x3 stride-1 convolution, and the 5x5 ones
    with enough input channels per group."""
    return applies(kernel_size, stride) and (kernel_size == 3 or group_channels >= MIN_CHANNELS_5x5)


def samples_per_chunk(conv, in_shape):
    _, OH, OW = conv.output_shape(in_shape)
    TH, TW = tiles(OH, OW)
    sample_bytes = tile_side(conv.kernel_size) ** 2 * conv.out_channels * TH * TW * 4
    return batch_grain(sample_bytes, CHUNK_BYTES)


def why(conv):
    r = conv.kernel_size
    return (f"winograd F(2x2,{r}x{r}): {r}x{r} stride 1, {tile_side(r) ** 2} products per 2x2 output tile where "
            f"im2col has {4 * r * r}")


def product_flops(conv, in_shape, need_dx=True):
    """(forward, backward) product flops per sample: the alpha^2 products U[xi] @ V[xi] over the
    tiles (the transforms, small matrices against many tiles, are counted too: they are products)."""
    C, O, a2 = conv.in_channels, conv.out_channels, tile_side(conv.kernel_size) ** 2
    _, OH, OW = conv.output_shape(in_shape)
    T = tiles(OH, OW)[0] * tiles(OH, OW)[1]
    products = 2 * a2 * (O // conv.groups) * (C // conv.groups) * conv.groups * T      # M = U V
    input_transform, output_transform = 2 * a2 * a2 * C * T, 2 * 4 * a2 * O * T        # Bk D, Ak M
    forward = products + input_transform + output_transform
    # dM = Ak^T dY; dU = dM V^T; dV = U^T dM; dD = Bk^T dV
    backward = output_transform + products + (products + input_transform if need_dx else 0)
    return forward, backward


def tiles(out_h, out_w):
    """Number of 2x2 output tiles down and across (the last ones may hang over the edge)."""
    return -(-out_h // 2), -(-out_w // 2)


def forward_chunk(conv, x, U, out):
    """x (n, C, H, W) -> out (n, O, OH, OW) written in place, with U = prepare_weights(W) (one
    per forward, shared by the chunks); returns V (alpha^2, C * T) for the backward."""
    n, C, H, Wd = x.shape
    O, OH, OW = out.shape[1:]
    P, groups, b, r = conv.padding, conv.groups, conv.params["b"], conv.kernel_size
    Bk, _, Ak = matrices(x.dtype, r)
    a = tile_side(r)
    TH, TW = tiles(OH, OW)
    T = n * TH * TW
    # zero-padded, channel-major input covering every tile: (C, n, 2 TH + r - 1, 2 TW + r - 1)
    xc = workspace.zeros((C, n, 2 * TH + r - 1, 2 * TW + r - 1), x.dtype)
    xc[:, :, P:P + H, P:P + Wd] = x.transpose(1, 0, 2, 3)
    sC, sN, sH, sW = xc.strides
    # D[u, v, c, t] = d_t[u, v]: the a x a input tile of every (channel, tile), at a stride of 2
    D = workspace.empty((a * a, C * T), x.dtype)
    D.reshape(a, a, C, n, TH, TW)[...] = as_strided(xc, (a, a, C, n, TH, TW),
                                                     (sH, sW, sC, sN, 2 * sH, 2 * sW))
    V = np.matmul(Bk, D, out=workspace.empty((a * a, C * T), x.dtype))         # B^T d B, flat
    M = np.matmul(U, V.reshape(a * a, groups, C // groups, T),
                  out=workspace.empty((a * a, groups, O // groups, T), x.dtype))  # a^2 products
    Y = np.matmul(Ak, M.reshape(a * a, O * T), out=workspace.empty((4, O * T), x.dtype))
    # Y[u, v, o, (n, a, b)] is output pixel (2a + u, 2b + v): interleave the tiles, crop, add bias
    full = workspace.empty((n, O, TH, 2, TW, 2), x.dtype)
    full[...] = Y.reshape(2, 2, O, n, TH, TW).transpose(3, 2, 4, 0, 5, 1)
    np.add(full.reshape(n, O, 2 * TH, 2 * TW)[:, :, :OH, :OW], b[:, None, None], out=out)
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
    Cg, Og, a = C // groups, O // groups, tile_side(r)
    Bk, Gk, Ak = matrices(dout.dtype, r)
    TH, TW = tiles(OH, OW)
    T = n * TH * TW
    # dY[u, v, o, (n, a, b)] = dout[n, o, 2a + u, 2b + v], zero where a tile hangs over the edge
    dpad = workspace.zeros((n, O, 2 * TH, 2 * TW), dout.dtype)
    if relu_out is None:
        dpad[:, :, :OH, :OW] = dout
    else:
        np.multiply(dout, relu_out > 0, out=dpad[:, :, :OH, :OW])
    db = dpad.sum(axis=(0, 2, 3))
    dY = workspace.empty((2, 2, O, n, TH, TW), dout.dtype)
    dY[...] = dpad.reshape(n, O, TH, 2, TW, 2).transpose(3, 5, 1, 0, 2, 4)
    dM = np.matmul(Ak.T, dY.reshape(4, O * T), out=workspace.empty((a * a, O * T), dout.dtype))
    dM = dM.reshape(a * a, groups, Og, T)
    Vg = V.reshape(a * a, groups, Cg, T)
    dU = np.matmul(dM, Vg.transpose(0, 1, 3, 2))                               # (a^2, groups, Og, Cg)
    dW = (dU.reshape(a * a, O * Cg).T @ Gk).reshape(O, Cg, r, r)               # G^T dU G
    if dx is None:
        return dW, db
    dV = np.matmul(U.transpose(0, 1, 3, 2), dM, out=workspace.empty((a * a, groups, Cg, T), dout.dtype))
    dD = np.matmul(Bk.T, dV.reshape(a * a, C * T), out=workspace.empty((a * a, C * T), dout.dtype))
    # add every input tile's gradient back where the tile was cut: entry (u, v) of tile (i, j)
    # came from input pixel (2i + u, 2j + v). One strided add per (u, v), each over all tiles at
    # once; tiles overlap by r - 1 pixels, so overlapping entries add up.
    dxc = workspace.zeros((C, n, 2 * TH + r - 1, 2 * TW + r - 1), dout.dtype)
    dD = dD.reshape(a, a, C, n, TH, TW)
    for u in range(a):
        for v in range(a):
            dxc[:, :, u:u + 2 * TH:2, v:v + 2 * TW:2] += dD[u, v]
    dx[...] = dxc[:, :, P:P + H, P:P + Wd].transpose(1, 0, 2, 3)
    return dW, db
