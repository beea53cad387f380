"""Launchers for kernels/pool.cu: MAX pooling forward/backward, exactly Caffe's rules.

Same signatures as nn/pool.py with a leading `runner` and an optional `version` for the
forward (1: one thread per output, 2: shared-memory patch per block of TILE_H x TILE_W
outputs, the default). The parameters and the output size are checked and computed by
nn.pool.check_pool_params, shared with the reference.
"""
import numpy as np

from nn.checks import fail
from nn.pool import check_pool_cache, check_pool_params
from kernels.launch_utils import (BLOCK, cdiv, check_array, check_upstream_grad, grid_1d,
                                  pick_version)
from kernels.runner import MAX_GRID_DIMS, MAX_SHARED_BYTES

# The forward kernel versions kept (bench.py --versions times each); backward has one.
VERSIONS = (1, 2)

# Output tile of max_pool_forward_v2 (rows TILE_H, columns TILE_W): the block shape, from
# which the kernel takes the tile, so this is its only statement.
TILE_W, TILE_H = 32, 8
MAX_GRID_Z = MAX_GRID_DIMS[2]     # CUDA's limit on gridDim.z; v2 loops over the other planes
SHARED_LIMIT = MAX_SHARED_BYTES   # shared memory per block the runners allow


def _v2_shared_bytes(kernel, stride):
    """Bytes of the input patch that one v2 block stages in shared memory."""
    return ((TILE_H - 1) * stride + kernel) * ((TILE_W - 1) * stride + kernel) * 4


def max_pool_forward(runner, x, kernel, stride, pad=0, layer='pool', version=None,
                     need_argmax=True):
    """x (N, C, H, W) float32 -> y (N, C, Ho, Wo), Caffe's ceil output size.

    Returns (y, cache); cache['argmax'] (N, C, Ho, Wo) int32 holds the flat index
    h * W + w of each window's maximum within its (H, W) plane (first maximum on ties).
    need_argmax=False returns cache None, as the reference does; the kernels write the
    argmax all the same (one int per output, a small part of their traffic).
    """
    check_array(runner, x, "x", layer, "(N, C, H, W)", ndim=4)
    kernel, stride, pad, ho, wo = check_pool_params(x.shape, kernel, stride, pad, layer)
    n, c, h, w = x.shape
    shared = _v2_shared_bytes(kernel, stride)
    version = pick_version(version, VERSIONS, 2 if shared <= SHARED_LIMIT else 1, layer)
    if version == 2 and shared > SHARED_LIMIT:
        fail(layer, f"version=2 would need {shared} bytes of shared memory for kernel "
                    f"{kernel}, stride {stride} (limit {SHARED_LIMIT}); use version=1")
    y = runner.xp.empty((n, c, ho, wo), dtype=np.float32)
    argmax = runner.xp.empty((n, c, ho, wo), dtype=np.int32)
    args = (x, y, argmax) + tuple(np.int32(v) for v in (n * c, h, w, ho, wo, kernel, stride,
                                                         pad))
    if version == 1:
        runner.kernel("pool.cu", "max_pool_forward_v1")(grid_1d(y.size), BLOCK, args)
    else:
        grid = (cdiv(wo, TILE_W), cdiv(ho, TILE_H), max(1, min(n * c, MAX_GRID_Z)))
        runner.kernel("pool.cu", "max_pool_forward_v2")(grid, (TILE_W, TILE_H), args,
                                                        shared_mem=shared)
    if not need_argmax:
        return y, None
    cache = {"argmax": argmax, "x_shape": (n, c, h, w), "kernel": kernel, "stride": stride,
             "pad": pad}
    return y, cache


def max_pool_backward(runner, dy, cache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): every input gathers dy from the windows whose
    argmax it is (deterministic, no atomics)."""
    layer = "max_pool_backward"
    check_pool_cache(cache, layer)
    argmax = cache["argmax"]
    n, c, h, w = cache["x_shape"]
    ho, wo = argmax.shape[2:]
    check_upstream_grad(runner, dy, argmax.shape, layer)
    dx = runner.xp.empty((n, c, h, w), dtype=np.float32)
    args = (dy, argmax, dx) + tuple(np.int32(v) for v in (
        n * c, h, w, ho, wo, cache["kernel"], cache["stride"], cache["pad"]))
    runner.kernel("pool.cu", "max_pool_backward_v1")(grid_1d(dx.size), BLOCK, args)
    return dx
