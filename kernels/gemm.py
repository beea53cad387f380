"""Launchers for kernels/gemm.cu: fully connected layers and a plain matrix product.

Same signatures as nn/inner_product.py with a leading `runner` (kernels/runner.py) and an
optional `version`:
    1  one thread per output (gemm_v1)
    2  16 x 16 shared-memory tiles (gemm_v2)
    3  128 x 128 register-blocked tiles, float4 loads, double buffering (gemm_v3, default)
    4  version 3 on tensor cores in TF32 (gemm_v4: inputs rounded to 10 mantissa bits,
       sums in float32; needs compute capability 8.0)
`matmul` exposes the bare product so the benchmark can time it against cuBLAS. The layer's
shapes are checked by nn.inner_product.check_inner_product_shapes, shared with the reference.

All three products of a layer use one kernel, told the operands' layouts by two flags
(see the header of gemm.cu):
    forward   y  = x @ w^T  (+ b, ReLU)    trans_b
    backward  dx = dy @ w
              dw = dy^T @ x                trans_a
              db = column sums of dy       (ip_bias_grad, which also applies the ReLU mask)
"""
import numpy as np

from kernels.launch_utils import (cdiv, check_array, check_upstream_grad, pick_version,
                                  split_reduction)
from nn.checks import fail
from nn.inner_product import check_inner_product_shapes

VERSIONS = (1, 2, 3, 4)
DEFAULT_VERSION = 3
TF32_VERSION = 4   # on tensor cores

# Tile shapes of gemm.cu, for the grids: (rows of C, columns of C, threads per block).
_TILE = {1: 16, 2: 16, 3: 128, 4: 128}

# Split-K (see gemm.cu) follows launch_utils.split_reduction; slices start on a multiple
# of every version's tile depth.
_CHUNK_MULTIPLE = 16

_BIAS_NONE, _BIAS_PER_COLUMN = 0, 1


def _split_k(k, blocks, split_k):
    """Slice depth and slice count for K = k over `blocks` output tiles
    (launch_utils.split_reduction with slices a multiple of 16)."""
    return split_reduction(k, blocks, split_k, _CHUNK_MULTIPLE)


def _gemm(runner, a, b, c, bias, m, n, k, trans_a, trans_b, bias_mode, relu, version,
          split_k=None):
    """c (m, n) = op(a) @ op(b), then the epilogue (bias, ReLU); see gemm.cu for layouts.

    Arrays are already checked. split_k: None (automatic for versions 3 and 4, none
    otherwise) or the number of K slices; with more than one slice the partial products
    go to a temporary (slices, m, n) buffer and gemm_splitk_reduce adds them up.
    """
    tile = _TILE[version]
    grid_xy = (cdiv(n, tile), cdiv(m, tile))
    if split_k is None and version < 3:
        split_k = 1
    k_chunk, slices = _split_k(k, grid_xy[0] * grid_xy[1], split_k)
    block = (256, 1, 1) if version >= 3 else (16, 16, 1)
    target = c if slices == 1 else runner.xp.empty((slices, m, n), dtype=np.float32)
    flags = (np.int32(trans_a), np.int32(trans_b))
    if slices == 1:
        epilogue = (np.int32(bias_mode), np.int32(relu))
    else:   # the epilogue runs once, in the reduction
        epilogue = (np.int32(_BIAS_NONE), np.int32(0))
    runner.kernel("gemm.cu", f"gemm_v{version}")(
        grid_xy + (slices,), block,
        (a, b, target, bias, np.int32(m), np.int32(n), np.int32(k)) + flags + epilogue +
        (np.int32(k_chunk),))
    if slices > 1:
        runner.kernel("gemm.cu", "gemm_splitk_reduce")(
            (cdiv(m * n, 256), 1, 1), (256, 1, 1),
            (target, c, bias, np.int32(m), np.int32(n), np.int32(slices),
             np.int32(bias_mode), np.int32(relu)))
    return c


def matmul(runner, a, b, trans_a=False, trans_b=False, version=None, split_k=None):
    """C = op(a) @ op(b) in float32, op = transpose when trans_* is set.

    a (M, K), or (K, M) with trans_a; b (K, N), or (N, K) with trans_b  ->  C (M, N).
    version: 1 to 4 (default 3); split_k: number of K slices (default: automatic).
    """
    layer = "matmul"
    version = pick_version(version, VERSIONS, DEFAULT_VERSION, layer, runner, TF32_VERSION)
    check_array(runner, a, "a", layer, "(K, M)" if trans_a else "(M, K)", ndim=2)
    check_array(runner, b, "b", layer, "(N, K)" if trans_b else "(K, N)", ndim=2)
    m, k = a.shape[::-1] if trans_a else a.shape
    kb, n = b.shape[::-1] if trans_b else b.shape
    if kb != k or m == 0 or n == 0 or k == 0:
        fail(layer, f"the inner sizes must agree and be non-zero: op(a) is ({m}, {k}), "
                    f"so b must have shape {(n, k) if trans_b else (k, n)}, got {b.shape}")
    c = runner.xp.empty((m, n), dtype=np.float32)
    return _gemm(runner, a, b, c, a, m, n, k, bool(trans_a), bool(trans_b), _BIAS_NONE,
                 False, version, split_k)


def inner_product_forward(runner, x, w, b, relu=False, layer='fc', version=None):
    """x (N, ...) flattened to (N, D), w (O, D), b (O,)  ->  y (N, O) = x W^T + b.

    relu=True applies ReLU in the kernel's epilogue. Returns (y, cache); with relu=True the
    cache references y, so do not modify y in place before inner_product_backward.
    """
    version = pick_version(version, VERSIONS, DEFAULT_VERSION, layer, runner, TF32_VERSION)
    check_array(runner, w, "w", layer, "(O, D)", ndim=2)
    o, d = w.shape
    check_array(runner, x, "x", layer, f"(N, {d}) or (N, ...) with {d} elements per sample")
    check_array(runner, b, "b", layer, f"({o},)", ndim=1)
    n, d, o = check_inner_product_shapes(x.shape, w.shape, b.shape, layer)
    x2 = x.reshape(n, d)
    y = runner.xp.empty((n, o), dtype=np.float32)
    _gemm(runner, x2, w, y, b, n, o, d, False, True, _BIAS_PER_COLUMN, relu, version)
    return y, dict(x_shape=x.shape, x2=x2, w=w, y=y if relu else None, version=version,
                   layer=layer)


def inner_product_backward(runner, dy, cache):
    """dy (N, O) -> (dx in x's original shape, dw (O, D), db (O,)).

    The ReLU gradient is included when the forward had relu=True.
    """
    x_shape, x2, w, y, version, layer = (cache[k] for k in (
        "x_shape", "x2", "w", "y", "version", "layer"))
    n, d = x2.shape
    o = w.shape[0]
    check_upstream_grad(runner, dy, (n, o), f"{layer} (backward)")
    xp = runner.xp
    db = xp.empty((o,), dtype=np.float32)
    relu = y is not None
    dy_eff = xp.empty_like(dy) if relu else dy
    runner.kernel("gemm.cu", "ip_bias_grad")(
        (cdiv(o, 32), 1, 1), (32, 8, 1),
        (dy, y if relu else dy, dy_eff, db, np.int32(n), np.int32(o), np.int32(relu)))
    dx = xp.empty((n, d), dtype=np.float32)
    _gemm(runner, dy_eff, w, dx, dy_eff, n, d, o, False, False, _BIAS_NONE, False, version)
    dw = xp.empty((o, d), dtype=np.float32)
    _gemm(runner, dy_eff, x2, dw, dy_eff, o, d, n, True, False, _BIAS_NONE, False, version)
    return dx.reshape(x_shape), dw, db
