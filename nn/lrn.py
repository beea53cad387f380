"""Local response normalisation across channels (Caffe's LRN, ACROSS_CHANNELS).

    scale[n, c] = k + alpha / local_size * sum_{c' = c - half .. c + half, clipped} x[n, c']**2
    y = x * scale ** -beta

Caffe's backward (the same window, since it is symmetric):

    dx = dy * scale**-beta - (2 * alpha * beta / local_size) * x * window_sum(dy * y / scale)
"""
import numpy as np

from nn.checks import check_float_array, check_int, check_number, check_upstream_grad, fail
from nn.threads import run_split


def channel_window_sum(a, local_size, out=None):
    """a (N, C, ...) -> s (same shape, written to out if given), s[:, c] = sum of a[:, c']
    for |c' - c| <= half, channels outside [0, C) skipped. One vectorised add per window
    offset (local_size - 1 adds), which is exact, unlike differences of a cumulative sum."""
    half = (local_size - 1) // 2
    s = np.empty_like(a) if out is None else out
    s[...] = a
    for d in range(1, min(half, a.shape[1] - 1) + 1):
        s[:, d:] += a[:, :-d]   # channel c - d contributes to c
        s[:, :-d] += a[:, d:]   # channel c + d contributes to c
    return s


def check_lrn_params(local_size, alpha, beta, k, layer):
    """Validate LRN's hyper-parameters (shared with the kernel launcher kernels/lrn.py):
    local_size an odd integer >= 1, alpha >= 0, beta finite, k > 0.
    Returns (local_size as int, alpha, beta, k as floats)."""
    local_size = check_int(local_size, "local_size", layer, 1)
    if local_size % 2 == 0:
        fail(layer, f"local_size must be odd (a window centred on each channel), got "
                    f"{local_size}")
    alpha = check_number(alpha, "alpha", layer, minimum=0.0)
    beta = check_number(beta, "beta", layer)
    k = check_number(k, "k", layer)
    if k <= 0:   # scale = k + (sum of squares) must stay positive for scale ** -beta
        fail(layer, f"k must be > 0 so that scale stays positive, got {k}")
    return local_size, alpha, beta, k


def lrn_forward(x, local_size=5, alpha=1e-4, beta=0.75, k=1.0, layer='norm'):
    """x (N, C, H, W) -> y (N, C, H, W), Caffe's cross-channel LRN (local_size odd).

    Returns (y, cache); the cache references x and y: do not modify them in place.
    """
    check_float_array(x, "x", layer, ndim=4, expected="(N, C, H, W)")
    local_size, alpha, beta, k = check_lrn_params(local_size, alpha, beta, k, layer)
    dt = x.dtype.type
    scale, scale_pow, y = (np.empty(x.shape, dtype=x.dtype) for _ in range(3))

    def images(lo, hi):   # images are independent: split them over the CPU threads
        xs, sc, sp = x[lo:hi], scale[lo:hi], scale_pow[lo:hi]
        channel_window_sum(xs * xs, local_size, out=sc)
        sc *= dt(alpha / local_size)
        sc += dt(k)
        np.power(sc, dt(-beta), out=sp)
        np.multiply(xs, sp, out=y[lo:hi])

    run_split(x.shape[0], images)
    return y, (x, y, scale, scale_pow, local_size, alpha, beta)


def lrn_backward(dy, cache):
    """dy (N, C, H, W) -> dx (N, C, H, W), Caffe's formula (module docstring)."""
    x, y, scale, scale_pow, local_size, alpha, beta = cache
    check_upstream_grad(dy, x.shape, x.dtype, "lrn_backward")
    dt = x.dtype.type
    dx = np.empty(x.shape, dtype=x.dtype)

    def images(lo, hi):   # images are independent: split them over the CPU threads
        ratio = dy[lo:hi] * y[lo:hi]
        ratio /= scale[lo:hi]
        acc = channel_window_sum(ratio, local_size)
        acc *= x[lo:hi]
        acc *= dt(2.0 * alpha * beta / local_size)
        d = np.multiply(dy[lo:hi], scale_pow[lo:hi], out=dx[lo:hi])
        d -= acc

    run_split(x.shape[0], images)
    return dx
