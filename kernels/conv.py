"""Launchers for kernels/conv.cu: Caffe convolution forward and backward on device arrays.

Same signatures as nn/conv.py with a leading `runner` (kernels/runner.py) and an optional
`version`:
    1  direct kernels, one thread per output element (conv_*_v1)
    2  implicit GEMM with register-blocked tiles of 128 columns and 128 or 64 rows
       (conv_*_v2 and conv_*_v2_m64, default; auto_tile_rows picks the height per pass,
       tile_rows=128 or 64 forces one for a layer's forward and backward)
    3  version 2's kernels with tf32 = 1: the same tiles, their products on tensor cores
       in TF32 (inputs rounded to 10 mantissa bits, sums in float32: about 5e-4 of a
       result's largest value against float64; needs compute capability 8.0)
The version chosen in the forward is kept in the cache and used by the backward, except
that versions 2 and 3 compute dx with version 1's gather kernel when stride > 1 (see
conv_backward).

Backward: conv_bias_grad gives db (and, with a fused ReLU, the masked dy the other two
passes use); then dx and dw. Versions 2 and 3's weight gradient reduces over N * Ho * Wo, which
it splits over blocks into partial sums added by gemm.cu's gemm_splitk_reduce
(deterministic): it is a split-K matrix product.
"""
import numpy as np

from kernels.launch_utils import (cdiv, check_array, check_upstream_grad, pick_version,
                                  split_reduction)
from nn.checks import fail
from nn.conv import check_backward_needs, check_conv_params

VERSIONS = (1, 2, 3)
DEFAULT_VERSION = 2
TF32_VERSION = 3   # on tensor cores

BLOCK = 256      # threads per block of every conv.cu kernel
TILE = 128       # version 2's output tile: columns, and rows unless narrow
NARROW = 64      # rows of version 2's narrow tiles (the *_m64 kernels)
_R_STEP = 8      # version 2's reduction step; split chunks are multiples of it


TILED_VERSIONS = (2, 3)          # the versions whose tile height tile_rows= may force,
TILE_HEIGHTS = (TILE, NARROW)    # to one of these


def auto_tile_rows(m):
    """Version 2's tile height for a product with m rows: 64 where 64-row tiles leave fewer
    rows idle than 128-row ones (m = 48: 64 rows computed instead of 128; m = 192: 192
    instead of 256), else 128. A 128-row tile issues more of its instructions as FMAs
    (77-78% of its main loop against 64-67%: python -m tools.sass_stats conv.cu), so ties
    go to it (m = 96). Not weighed: how many blocks a pass gets (conv1's forward at
    batch 1 has 24 tiles of 128 rows for 132 multiprocessors); the first GPU run's
    bench.py --versions times both heights."""
    return NARROW if cdiv(m, NARROW) * NARROW < cdiv(m, TILE) * TILE else TILE


def _height(forced, m):
    """Version 2's tile height for a pass with m rows: the forced one, else auto_tile_rows."""
    return forced or auto_tile_rows(m)


def _pass_kernel(runner, pass_name, version, tile_rows, count, m, ncol, group):
    """(kernel, grid, trailing arguments) of a forward or backward-data pass: version 1's
    kernel over `count` outputs, one thread each; or the implicit GEMM's (versions 2, 3)
    over a product of m rows and ncol columns per group, with its `tf32` argument."""
    if version == 1:
        return runner.kernel("conv.cu", f"conv_{pass_name}_v1"), (cdiv(count, BLOCK), 1, 1), ()
    rows = _height(tile_rows, m)
    return (_v2_kernel(runner, pass_name, rows), (cdiv(ncol, TILE), cdiv(m, rows), group),
            (np.int32(version == TF32_VERSION),))


def _v2_kernel(runner, pass_name, rows):
    """The implicit-GEMM kernel (versions 2 and 3) for a pass ('forward', 'backward_data',
    'backward_weights') and tile height."""
    return runner.kernel("conv.cu", f"conv_{pass_name}_v2" + ("_m64" if rows == NARROW else ""))


def _geometry(x_shape, w_shape, stride, pad, group, ho, wo):
    """The 12 int32 geometry arguments every conv.cu kernel takes (CONV_GEOM_PARAMS)."""
    n, c, h, w = x_shape
    k, _, kh, kw = w_shape
    return tuple(np.int32(v) for v in (n, c, h, w, k, kh, kw, stride, pad, group, ho, wo))


def _check_conv_args(runner, x, w, b, stride, pad, group, layer):
    """The launcher's arrays (C-contiguous float32 device arrays), then the reference's
    shape and parameter check nn.conv.check_conv_params; returns (stride, pad, group, Ho,
    Wo)."""
    check_array(runner, x, "x", layer, "(N, C, H, W)", ndim=4)
    check_array(runner, w, "w", layer, "(K, C // group, kh, kw)", ndim=4)
    check_array(runner, b, "b", layer, f"({w.shape[0]},)", ndim=1)
    return check_conv_params(x.shape, w.shape, b.shape, stride, pad, group, layer)


def conv_forward(runner, x, w, b, stride=1, pad=0, group=1, relu=False, layer='conv',
                 version=None, tile_rows=None):
    """Caffe convolution, optionally followed by ReLU (fused into the kernel).

    x (N, C, H, W), w (K, C // group, kh, kw), b (K,)  ->  y (N, K, Ho, Wo),
    Ho = (H + 2*pad - kh) // stride + 1. Returns (y, cache); with relu=True the cache
    references y, so do not modify y in place before conv_backward. tile_rows: see the
    module docstring (None: each pass picks its own).
    """
    version = pick_version(version, VERSIONS, DEFAULT_VERSION, layer, runner, TF32_VERSION)
    if tile_rows is not None and (version not in TILED_VERSIONS or type(tile_rows) is not int
                                  or tile_rows not in TILE_HEIGHTS):
        fail(layer, f"tile_rows must be None or one of {TILE_HEIGHTS} with version 2 or 3, "
                    f"got {tile_rows!r} with version {version}")
    stride, pad, group, ho, wo = _check_conv_args(runner, x, w, b, stride, pad, group, layer)
    n, k = x.shape[0], w.shape[0]
    if version != 1:
        _check_int32_offsets(layer, x=x.size, w=w.size, y=n * k * ho * wo)
    geom = _geometry(x.shape, w.shape, stride, pad, group, ho, wo)
    y = runner.xp.empty((n, k, ho, wo), dtype=np.float32)
    kernel, grid, tf32 = _pass_kernel(runner, "forward", version, tile_rows, y.size,
                                      k // group, n * ho * wo, group)
    kernel(grid, (BLOCK, 1, 1), (x, w, b, y) + geom + (np.int32(relu),) + tf32)
    cache = dict(x=x, w=w, y=y if relu else None, geom=geom, version=version, layer=layer,
                 tile_rows=tile_rows)
    return y, cache


def _check_int32_offsets(layer, **sizes):
    """Versions 2 and 3 address their tensors with 32-bit offsets: refuse any of 2^31
    elements or more (CaffeNet's largest, conv1's output at batch 256, has 74 million).
    sizes: name -> element count."""
    for name, size in sizes.items():
        if size >= 2 ** 31:
            fail(layer, f"versions 2 and 3 need {name} under 2^31 elements, got {size}; "
                        f"use a smaller batch or version=1")


def conv_backward(runner, dy, cache, need_dx=True, need_dw=True):
    """Gradients of conv_forward.

    dy (N, K, Ho, Wo) -> (dx (N, C, H, W), dw (K, C // group, kh, kw), db (K,)).
    When the forward had relu=True the ReLU gradient (y > 0) is applied first.
    need_dx=False skips the input-gradient kernel and returns dx = None (a network's
    first layer needs no gradient for its input); need_dw=False skips the weight
    gradient's (and, without ReLU, the bias pass) and returns dw = db = None.
    """
    x, w, y, geom, version, forced = (cache[key] for key in
                                      ("x", "w", "y", "geom", "version", "tile_rows"))
    n, c, h, wid, k, kh, kw, stride, pad, group, ho, wo = (int(v) for v in geom)
    layer = f"{cache['layer']} (backward)"
    check_upstream_grad(runner, dy, (n, k, ho, wo), layer)
    check_backward_needs(need_dx, need_dw, layer)
    xp = runner.xp
    relu = y is not None

    db, dy_eff = None, dy
    if need_dw or relu:   # the bias pass also applies the ReLU mask for the other passes
        db = xp.empty((k,), dtype=np.float32)
        dy_eff = xp.empty_like(dy) if relu else dy
        runner.kernel("conv.cu", "conv_bias_grad")(
            (k, 1, 1), (BLOCK, 1, 1),
            (dy, y if relu else dy, dy_eff, db, np.int32(n), np.int32(k), np.int32(ho * wo),
             np.int32(relu)))

    # The implicit GEMM (versions 2, 3) for dx pays for every (output, tap) pair, but with
    # stride s only 1 in s*s of them reaches a pixel; the gather of version 1 visits just
    # those, so it is the faster one there (conv1, stride 4, batch 1 on the emulator:
    # 0.12 s instead of 11 s).
    dx = None
    if need_dx:
        dx = _backward_data(runner, dy_eff, w, xp.empty_like(x), geom,
                            1 if stride > 1 else version, forced)
    if not need_dw:
        return dx, None, None
    dw = xp.empty_like(w)
    if version == 1:
        runner.kernel("conv.cu", "conv_backward_weights_v1")(
            (cdiv(dw.size, BLOCK), 1, 1), (BLOCK, 1, 1), (dy_eff, x, dw) + geom)
    else:
        _backward_weights_v2(runner, dy_eff, x, dw, geom, tile_rows=forced,
                             tf32=version == TF32_VERSION)
    return dx, dw, db


def _backward_data(runner, dy_eff, w, dx, geom, version, tile_rows=None):
    """dx (N, C, H, W) from the (ReLU-masked) dy by version 1's gather or the implicit
    GEMM of versions 2 and 3 (tiles of tile_rows rows, None for auto_tile_rows)."""
    n, c, h, wid, k, kh, kw, stride, pad, group, ho, wo = (int(v) for v in geom)
    kernel, grid, tf32 = _pass_kernel(runner, "backward_data", version, tile_rows, dx.size,
                                      c // group, n * h * wid, group)
    kernel(grid, (BLOCK, 1, 1), (dy_eff, w, dx) + geom + tf32)
    return dx


def _weight_grad_split(reduction, tiles, splits=None):
    """Chunk length and chunk count for version 2's weight-gradient reduction,
    reduction = N * Ho * Wo over `tiles` output tiles (launch_utils.split_reduction with
    chunks a multiple of version 2's reduction step)."""
    return split_reduction(reduction, tiles, splits, _R_STEP)


def _backward_weights_v2(runner, dy_eff, x, dw, geom, splits=None, tile_rows=None,
                         tf32=False):
    """dw (K, Cg, kh, kw) by conv_backward_weights_v2 (on tensor cores with tf32=True,
    version 3), with the reduction over N * Ho * Wo split into chunks (partial sums in a
    (chunks, K, Cg, kh, kw) buffer, then gemm_splitk_reduce, the fully connected layers'
    split-K sum) when there are few output tiles. splits: see _weight_grad_split;
    tile_rows: None for auto_tile_rows."""
    n, c, h, wid, k, kh, kw, stride, pad, group, ho, wo = (int(v) for v in geom)
    cols, rows = (c // group) * kh * kw, k // group
    height = _height(tile_rows, rows)
    grid_xy = (cdiv(cols, TILE), cdiv(rows, height))
    chunk, count = _weight_grad_split(n * ho * wo, grid_xy[0] * grid_xy[1] * group, splits)
    target = dw if count == 1 else runner.xp.empty((count,) + dw.shape, dtype=np.float32)
    _v2_kernel(runner, "backward_weights", height)(
        grid_xy + (group * count,), (BLOCK, 1, 1),
        (dy_eff, x, target) + geom + (np.int32(chunk), np.int32(tf32)))
    if count > 1:
        # dw as gemm's C (K rows, Cg*kh*kw columns), no bias (dw stands in for the unread
        # bias array) and no ReLU.
        runner.kernel("gemm.cu", "gemm_splitk_reduce")(
            (cdiv(dw.size, BLOCK), 1, 1), (BLOCK, 1, 1),
            (target, dw, dw, np.int32(k), np.int32(dw.size // k), np.int32(count),
             np.int32(0), np.int32(0)))
    return dw
