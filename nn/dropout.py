"""Dropout with a counter-based hash, so NumPy, the GPU kernels and the emulator drop
exactly the same elements for a given seed (see docs/design.md, "The dropout hash")."""
import numpy as np

from nn.checks import check_float_array, check_int, check_number, check_upstream_grad, fail

_U32 = np.uint32


def hash32(seed, index):
    """The project's 32-bit mixing hash, on uint32 with wrap-around.

    seed: integer in [0, 2**32); index: uint32 array (any shape) of flat element indices.
    Returns a uint32 array of index's shape.
    """
    # seed * 0x85EBCA77 is one scalar: do it on Python ints and wrap by hand.
    h = index.astype(_U32, copy=True)
    h *= _U32(0x9E3779B1)
    h += _U32((seed * 0x85EBCA77) & 0xFFFFFFFF)
    h ^= h >> _U32(16)
    h *= _U32(0x85EBCA6B)
    h ^= h >> _U32(13)
    h *= _U32(0xC2B2AE35)
    h ^= h >> _U32(16)
    return h


def keep_threshold(ratio):
    """uint32(floor(ratio * 4294967295.0)): an element is kept when its hash exceeds it."""
    return _U32(np.floor(ratio * 4294967295.0))


def check_dropout_params(ratio, seed, layer):
    """ratio a number in [0, 1), seed an integer in [0, 2**32); shared with the kernel
    launcher kernels/dropout.py. Returns (ratio as float, seed as int)."""
    ratio = check_number(ratio, "ratio", layer, minimum=0.0, maximum=1.0, max_inclusive=False)
    seed = check_int(seed, "seed", layer, 0)
    if seed >= 2 ** 32:
        fail(layer, f"seed must be < 2**32 (it is used as a uint32), got {seed}")
    return ratio, seed


def dropout_forward(x, ratio, seed, train=True, layer='dropout'):
    """x (any shape) -> y (same shape).

    train: y = x * keep / (1 - ratio) with keep[i] = hash32(seed, i) > threshold and i the
    flat (C-order) element index; test: y = x (the same array). Returns (y, cache).
    """
    check_float_array(x, "x", layer, expected="(N, ...)")
    ratio, seed = check_dropout_params(ratio, seed, layer)
    if not train:
        return x, None
    if x.size >= 2 ** 32:
        fail(layer, f"x has {x.size} elements; the uint32 element index allows < 2**32")
    keep = hash32(seed, np.arange(x.size, dtype=_U32)) > keep_threshold(ratio)
    # mask holds 0 or 1/(1-ratio) in x's dtype, so y = x * mask is one multiply, the same
    # rounding as the kernel's x * scale.
    mask = keep.reshape(x.shape).astype(x.dtype)
    mask *= x.dtype.type(1.0 / (1.0 - ratio))
    return x * mask, mask


def dropout_backward(dy, cache):
    """dy (shape of x) -> dx: the same mask and scale as the forward (identity in test)."""
    if cache is None:
        check_float_array(dy, "dy", "dropout_backward")
        return dy
    check_upstream_grad(dy, cache.shape, cache.dtype, "dropout_backward")
    return dy * cache
