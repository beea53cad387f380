"""Launchers for kernels/relu.cu: ReLU forward/backward on device arrays.

Same signatures as nn/relu.py with a leading `runner` (kernels/runner.py) and an optional
`version` (1: scalar, 2: float4; default 2 when the arrays are 16-byte aligned).
"""
import numpy as np

from kernels.launch_utils import (BLOCK, VECTOR_VERSIONS, check_array, check_upstream_grad,
                                  vector_grid, vector_version)

VERSIONS = VECTOR_VERSIONS  # the kernel versions kept (bench.py --versions times each)


def relu_forward(runner, x, layer='relu', version=None):
    """x (any shape, float32) -> y = max(x, 0). Returns (y, cache); the cache is y (the
    gradient mask y > 0 equals x > 0), so do not modify y in place before backward."""
    check_array(runner, x, "x", layer, "(N, ...)")
    y = runner.xp.empty_like(x)
    v = vector_version(version, (x, y), layer)
    runner.kernel("relu.cu", f"relu_forward_v{v}")(
        vector_grid(x.size, v), BLOCK, (x, y, np.int32(x.size)))
    return y, y


def relu_backward(runner, dy, cache, version=None):
    """dy (shape of y) -> dx = dy where y > 0, else 0."""
    y = cache
    layer = "relu_backward"
    check_upstream_grad(runner, dy, y.shape, layer)
    dx = runner.xp.empty_like(dy)
    v = vector_version(version, (dy, y, dx), layer)
    runner.kernel("relu.cu", f"relu_backward_v{v}")(
        vector_grid(dy.size, v), BLOCK, (dy, y, dx, np.int32(dy.size)))
    return dx
