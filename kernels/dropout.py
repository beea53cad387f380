"""Launchers for kernels/dropout.cu: dropout with the counter hash of docs/design.md.

Same signatures as nn/dropout.py with a leading `runner`. The mask is never stored: it is a
function of (seed, flat index), so backward recomputes it. Masks and outputs are
bit-identical to the NumPy reference (same hash, same threshold, same float32 scale and
the same single multiply).
"""
import numpy as np

from nn.dropout import check_dropout_params, keep_threshold
from kernels.launch_utils import (BLOCK, check_array, check_upstream_grad, grid_1d,
                                  pick_version)

VERSIONS = (1,)  # the kernel versions kept (bench.py --versions times each)


def _apply(runner, a, params, version):
    """out = a * mask for the (seed, threshold, scale) in params; a any shape."""
    seed, threshold, scale = params
    out = runner.xp.empty_like(a)
    runner.kernel("dropout.cu", f"dropout_apply_v{version}")(
        grid_1d(a.size), BLOCK, (a, out, np.int32(a.size), np.uint32(seed), threshold, scale))
    return out


def dropout_forward(runner, x, ratio, seed, train=True, layer='dropout', version=None):
    """x (any shape, float32) -> y (same shape).

    train: y = x * keep / (1 - ratio), keep[i] = hash32(seed, i) > threshold; test: y = x
    (the same array, like the reference). Returns (y, cache); cache is None in test mode,
    else ((seed, threshold, scale), x's shape), what backward needs.
    """
    # check_array also bounds the size by the kernel's int element index (< 2**31).
    check_array(runner, x, "x", layer, "(N, ...)")
    ratio, seed = check_dropout_params(ratio, seed, layer)
    version = pick_version(version, VERSIONS, 1, layer)
    if not train:
        return x, None
    # The scale is rounded to float32 exactly as in nn/dropout.py.
    params = (seed, keep_threshold(ratio), np.float32(1.0 / (1.0 - ratio)))
    return _apply(runner, x, params, version), (params, tuple(x.shape))


def dropout_backward(runner, dy, cache, version=None):
    """dy (shape of x) -> dx = dy * mask, the forward's mask (identity in test mode)."""
    layer = "dropout_backward"
    version = pick_version(version, VERSIONS, 1, layer)
    if cache is None:
        check_array(runner, dy, "dy", layer, "(N, ...)")
        return dy
    params, shape = cache
    check_upstream_grad(runner, dy, shape, layer)
    return _apply(runner, dy, params, version)
