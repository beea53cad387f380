"""Launchers for kernels/lrn.cu: Caffe's cross-channel LRN forward/backward.

Same signatures as nn/lrn.py with a leading `runner` and an optional `version`
(1: one thread per element, 2: one thread per (n, h, w) column sliding the channel
window, the default). The hyper-parameters are checked by nn.lrn.check_lrn_params, the
reference's own check.
"""
import numpy as np

from nn.lrn import check_lrn_params
from kernels.launch_utils import (BLOCK, check_array, check_upstream_grad, grid_1d,
                                  pick_version)

VERSIONS = (1, 2)  # the kernel versions kept (bench.py --versions times each)
DEFAULT_VERSION = 2


def _launch(runner, name, version, shape, args):
    """Run lrn_<name>_v<version> over an (N, C, H, W) shape: v1 has one thread per element,
    v2 one per (n, h, w) column."""
    n, c, h, w = shape
    items = n * c * h * w if version == 1 else n * h * w
    runner.kernel("lrn.cu", f"lrn_{name}_v{version}")(grid_1d(items), BLOCK, args)


def lrn_forward(runner, x, local_size=5, alpha=1e-4, beta=0.75, k=1.0, layer='norm',
                version=None):
    """x (N, C, H, W) float32 -> y (N, C, H, W), Caffe's cross-channel LRN (local_size odd).

    Returns (y, cache); the cache holds x, y and scale: do not modify them in place.
    """
    check_array(runner, x, "x", layer, "(N, C, H, W)", ndim=4)
    local_size, alpha, beta, k = check_lrn_params(local_size, alpha, beta, k, layer)
    version = pick_version(version, VERSIONS, DEFAULT_VERSION, layer)
    n, c, h, w = x.shape
    y = runner.xp.empty_like(x)
    scale = runner.xp.empty_like(x)
    half = (local_size - 1) // 2
    _launch(runner, "forward", version, x.shape,
            (x, y, scale, np.int32(n), np.int32(c), np.int32(h * w), np.int32(half),
             np.float32(alpha / local_size), np.float32(beta), np.float32(k)))
    cache = {"x": x, "y": y, "scale": scale, "half": half, "beta": beta,
             "ratio": 2.0 * alpha * beta / local_size}
    return y, cache


def lrn_backward(runner, dy, cache, version=None):
    """dy (N, C, H, W) -> dx (N, C, H, W), Caffe's formula:
    dx = dy * scale^-beta - (2 alpha beta / n) * x * window_sum(dy * y / scale)."""
    layer = "lrn_backward"
    x = cache["x"]
    check_upstream_grad(runner, dy, x.shape, layer)
    version = pick_version(version, VERSIONS, DEFAULT_VERSION, layer)
    n, c, h, w = x.shape
    dx = runner.xp.empty_like(x)
    _launch(runner, "backward", version, x.shape,
            (dy, x, cache["y"], cache["scale"], dx, np.int32(n), np.int32(c), np.int32(h * w),
             np.int32(cache["half"]), np.float32(cache["beta"]), np.float32(cache["ratio"])))
    return dx
