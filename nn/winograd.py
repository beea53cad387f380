"""Winograd's minimal filtering F(2x2, 3x3): 3x3 stride-1 convolutions (CaffeNet's conv3 to
conv5) with 2.25x fewer multiplications than im2col + GEMM.

A 2x2 tile of outputs needs a 4x4 tile d of the padded input. With the 3x3 filter g
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016):

    y (2x2) = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise over the 4x4 points)

Summed over input channels, each of the 16 points (a, b) becomes one matrix product:

    V[a,b] (P, C)  = point (a, b) of B^T d B, for every tile and image (P = tiles * N)
    U[a,b] (K, Cg) = point (a, b) of G g G^T, for every filter
    M[a,b] (P, K)  = V[a,b] (P, C) @ U[a,b]^T        (per group: its own C and K columns)

so each channel pair costs 16 multiply-adds per 2x2 outputs instead of 4 * 9 = 36. The
transforms are additions over whole arrays (B^T and A^T hold only 0 and +-1); the filter
transform is one small product with kron(G, G).

Layout (why): spatial axes first, so a tile's row or column is a slice of the outermost
axes and every transform step adds long contiguous (N, C) slabs, and V[a,b] is a (P, C)
matrix with C contiguous, ready for BLAS:

    xs (Hp, Wp, N, C) padded input    V (4, 4, Th, Tw, N, C)    M (4, 4, Th, Tw, N, K)

Tile ty covers padded rows 2*ty .. 2*ty + 3; Th = ceil(Ho / 2) tiles, so an odd output
size computes one extra row or column (from zero padding) that is cut off.

The backward pass is the adjoint of every step in reverse order: dM = A dY A^T,
dU = dM^T V, dV = dM U, d(input) = B dV B^T added back onto the overlapping tiles, and
dw = G^T dU G. Float32 results differ from im2col's by a few units in the last place
(the constants are 0, +-1 and 1/2); tests/test_winograd.py bounds that against float64.

What it buys on a CPU: `python bench.py --device cpu --only conv3,conv4,conv5 --versions`
(batch 16, 2 cores) timed im2col against Winograd at 27.2 / 21.5 ms (conv3 forward),
37.0 / 22.4 (conv4), 24.7 / 18.2 (conv5), and backward 55.7 / 39.2, 49.0 / 40.1,
36.4 / 26.1. The matrix products are 1.9x smaller (2.25x, less the tiles' padding to
even sizes); NumPy's passes over the transformed arrays take back part of that.
"""
import numpy as np

from nn.relu import add_bias_relu
from nn.threads import run_split

B_T = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]])
G = np.array([[1, 0, 0],
              [0.5, 0.5, 0.5],
              [0.5, -0.5, 0.5],
              [0, 0, 1]])
A_T = np.array([[1, 1, 1, 0],
                [0, 1, -1, -1]])
# Both sides of the filter transform at once: U[4a + b] = sum_ij G[a, i] G[b, j] g[3i + j].
G_KRON_G = np.kron(G, G)   # (16, 9)


def winograd_applies(kernel_shape, stride):
    """Whether conv_forward uses F(2x2, 3x3): a 3x3 kernel at stride 1 (any pad)."""
    return tuple(kernel_shape) == (3, 3) and stride == 1


def _combine(matrix, parts, out):
    """out[i] = sum_j matrix[i, j] * parts[j], for a matrix of 0 and +-1 (B^T, A^T and
    their transposes), as whole-array adds and subtracts: the first two terms in one pass
    where the first is +1 (every row of those matrices with two or more terms has one)."""
    for i, row in enumerate(matrix):
        terms = sorted(((c, p) for c, p in zip(row, parts) if c != 0), key=lambda t: -t[0])
        (c0, p0), rest = terms[0], terms[1:]
        if c0 == 1 and rest:
            (c1, p1), rest = rest[0], rest[1:]
            (np.add if c1 == 1 else np.subtract)(p0, p1, out=out[i])
        elif c0 == 1:
            np.copyto(out[i], p0)
        else:
            np.negative(p0, out=out[i])
        for c, p in rest:
            (np.add if c == 1 else np.subtract)(out[i], p, out=out[i])


def _to_nchw(src, out, b=None, relu=False):
    """out (n, C, H, W) = src (H, W, n, C), a view, plus the bias b (C,) and ReLU when
    given. In two steps: the outer axes to (n, H, W, C), where runs of C stay contiguous,
    then one (H*W, C) -> (C, H*W) transpose per image. One transposing copy, reading src
    with a stride of n*C floats, took 3.7x as long (conv3's output at batch 8: 1.77 ms
    against 0.47)."""
    assert out.flags.c_contiguous, "_to_nchw writes through a reshape of out"
    n, c, h, w = out.shape
    nhwc = np.empty((n, h, w, c), dtype=out.dtype)
    if b is None:
        np.copyto(nhwc, src.transpose(2, 0, 1, 3))
    else:
        add_bias_relu(src.transpose(2, 0, 1, 3), b, nhwc, relu, axis=3)
    out.reshape(n, c, h * w)[...] = nhwc.reshape(n, h * w, c).transpose(0, 2, 1)


def _every_other(a, start, count, axis):
    """View of a[start + 2*t] for t < count along axis 0 or 1: one row (column) of every
    tile."""
    index = slice(start, start + 2 * count - 1, 2)
    return a[index] if axis == 0 else a[:, index]


def _input_transform(x, pad, v):
    """x (n, C, H, W) -> v (4, 4, Th, Tw, n, C) = B^T d B of every tile d of the
    zero-padded input."""
    th, tw = v.shape[2:4]
    n, c, h, wd = x.shape
    xs = np.zeros((2 * th + 2, 2 * tw + 2, n, c), dtype=x.dtype)
    xs[pad:pad + h, pad:pad + wd] = x.transpose(2, 3, 0, 1)
    rows = np.empty((4, th) + xs.shape[1:], dtype=x.dtype)
    _combine(B_T, [_every_other(xs, i, th, 0) for i in range(4)], rows)
    for a in range(4):
        _combine(B_T, [_every_other(rows[a], j, tw, 1) for j in range(4)], v[a])


def _input_transform_adjoint(dv, pad, dx):
    """dv (4, 4, Th, Tw, n, C) -> dx (n, C, H, W): B dV B^T of every tile, added onto the
    overlapping tiles, padding cut off."""
    th, tw, n, c = dv.shape[2:]
    h, wd = dx.shape[2:]
    d_rows = np.zeros((4, th, 2 * tw + 2, n, c), dtype=dv.dtype)
    column = np.empty((4, th, tw, n, c), dtype=dv.dtype)
    for a in range(4):
        _combine(B_T.T, dv[a], column)
        for j in range(4):
            _every_other(d_rows[a], j, tw, 1)[...] += column[j]
    row = np.empty_like(d_rows)
    _combine(B_T.T, d_rows, row)
    dxs = np.zeros((2 * th + 2, 2 * tw + 2, n, c), dtype=dv.dtype)
    for i in range(4):
        _every_other(dxs, i, th, 0)[...] += row[i]
    _to_nchw(dxs[pad:pad + h, pad:pad + wd], dx)


def _output_transform(m, b, y, relu):
    """m (4, 4, Th, Tw, n, K) -> y (n, K, Ho, Wo) = A^T M A of every tile, plus the bias
    b (K,), ReLU applied when relu."""
    th, tw, n, k = m.shape[2:]
    ho, wo = y.shape[2:]
    rows = np.empty((2, 4, th, tw, n, k), dtype=m.dtype)
    _combine(A_T, m, rows)
    ys = np.empty((th, 2, tw, 2, n, k), dtype=m.dtype)
    for r in range(2):
        _combine(A_T, rows[r], [ys[:, r, :, s] for s in range(2)])
    _to_nchw(ys.reshape(2 * th, 2 * tw, n, k)[:ho, :wo], y, b, relu)


def _output_transform_adjoint(dy, dm):
    """dy (n, K, Ho, Wo) -> dm (4, 4, Th, Tw, n, K) = A dY A^T of every tile."""
    th, tw = dm.shape[2:4]
    n, k, ho, wo = dy.shape
    dys = np.zeros((th, 2, tw, 2, n, k), dtype=dy.dtype)
    dys.reshape(2 * th, 2 * tw, n, k)[:ho, :wo] = dy.transpose(2, 3, 0, 1)
    rows = np.empty((2, 4, th, tw, n, k), dtype=dy.dtype)
    for r in range(2):
        _combine(A_T.T, [dys[:, r, :, s] for s in range(2)], rows[r])
    _combine(A_T.T, rows, dm)


def _split_images(n, fn, *arrays):
    """fn(*parts) with the N images split over the CPU threads (nn/threads.py): each part
    is the images lo:hi of an array, whose image axis is 0 (N, C, H, W) or -2 (tiles,
    (4, 4, Th, Tw, N, C)). The transforms are NumPy passes over memory; two threads take
    about 10% off conv3 and conv4's forward (2 cores, batch 16)."""
    def part(lo, hi):
        fn(*(a[lo:hi] if a.ndim == 4 else a[..., lo:hi, :] for a in arrays))
    run_split(n, part)


def _group_slices(group, cg, kg):
    """(input channels, output channels) of each group, as slices."""
    return [(slice(g * cg, (g + 1) * cg), slice(g * kg, (g + 1) * kg)) for g in range(group)]


def winograd_forward(x, w, b, pad, group, relu=False):
    """Convolution with 3x3 filters at stride 1 by F(2x2, 3x3), ReLU applied when relu.

    x (N, C, H, W), w (K, C // group, 3, 3), b (K,) -> y (N, K, Ho, Wo), Ho = H + 2*pad - 2
    (the caller, nn/conv.py, has checked the arguments). Returns (y, (V, U)), the
    transformed input and filters that winograd_backward needs.
    """
    n, c, h, wd = x.shape
    k, cg = w.shape[:2]
    ho, wo = h + 2 * pad - 2, wd + 2 * pad - 2
    th, tw = -(-ho // 2), -(-wo // 2)                 # 2x2 output tiles down, across
    v6 = np.empty((4, 4, th, tw, n, c), dtype=x.dtype)
    _split_images(n, lambda xi, vi: _input_transform(xi, pad, vi), x, v6)
    v = v6.reshape(16, th * tw * n, c)                                       # V[a,b] (P, C)
    u = (G_KRON_G.astype(w.dtype) @ w.reshape(k * cg, 9).T).reshape(16, k, cg)  # U[a,b] (K, Cg)
    m = np.empty((16, th * tw * n, k), dtype=x.dtype)
    for cs, ks in _group_slices(group, cg, k // group):
        np.matmul(v[:, :, cs], u[:, ks].transpose(0, 2, 1), out=m[:, :, ks])
    y = np.empty((n, k, ho, wo), dtype=x.dtype)
    _split_images(n, lambda mi, yi: _output_transform(mi, b, yi, relu),
                  m.reshape(4, 4, th, tw, n, k), y)
    return y, (v, u)


def winograd_backward(dy, x_shape, pad, group, saved, need_dx=True, need_dw=True):
    """Gradients of winograd_forward: dy (N, K, Ho, Wo) -> (dx (N, C, H, W) or None,
    dw (K, C // group, 3, 3) or None, db (K,) or None: dx when need_dx, dw and db when
    need_dw); x_shape, pad and group as in the forward, saved its (V, U)."""
    n, c, h, wd = x_shape
    v, u = saved
    k, cg = u.shape[1:]
    ho, wo = dy.shape[2:]
    th, tw = -(-ho // 2), -(-wo // 2)
    dm6 = np.empty((4, 4, th, tw, n, k), dtype=dy.dtype)
    _split_images(n, _output_transform_adjoint, dy, dm6)
    dm = dm6.reshape(16, th * tw * n, k)                                     # dM[a,b] (P, K)
    groups = _group_slices(group, cg, k // group)
    dx = dw = db = None
    if need_dw:
        db = dy.sum(axis=(0, 2, 3))
        du = np.empty_like(u)
        for cs, ks in groups:
            np.matmul(dm[:, :, ks].transpose(0, 2, 1), v[:, :, cs], out=du[:, ks])
        dw = np.ascontiguousarray(
            (G_KRON_G.T.astype(u.dtype) @ du.reshape(16, k * cg)).T.reshape(k, cg, 3, 3))
    if need_dx:
        dv = np.empty_like(v)
        for cs, ks in groups:
            np.matmul(dm[:, :, ks], u[:, ks], out=dv[:, :, cs])
        dx = np.empty((n, c, h, wd), dtype=dy.dtype)
        _split_images(n, lambda dvi, dxi: _input_transform_adjoint(dvi, pad, dxi),
                      dv.reshape(4, 4, th, tw, n, c), dx)
    return dx, dw, db
