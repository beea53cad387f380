"""MAX pooling exactly as Caffe's Pooling layer (pool: MAX).

Caffe scans each window in row-major order with a running maximum that starts at
-FLT_MAX with no position, replacing it only on a strict '>': so ties go to the first
maximum, padding is never a candidate (windows start at ho*stride - pad and are clipped to
the image), NaN never wins, and a window with no value above -FLT_MAX (one lying wholly
outside the image, possible when stride > kernel, or all -inf) gives -FLT_MAX with
argmax -1 and passes no gradient back.

We get the same numbers window-separably, each step vectorised over whole planes:
first along rows (for every input row and every window's column range: the maximum and
the column of its first occurrence), then down those row maxima (the first row holding
the window's maximum, and that row's column). The first maximum in row-major order is
exactly "first row that holds the maximum, then its first column", and each pass keeps
the first occurrence with the trick "offset = max(offset, o * (v > best))" (offsets only
grow, so the last strict improvement wins). Padding is filled with -inf, which never
beats the -FLT_MAX start. The batch is split over threads (nn/threads.py).

The backward pass is one scatter-add: np.bincount over each window's flat argmax in the
whole batch, weighted by dy. Where overlapping windows share a maximum it sums their
gradients in float64 and rounds once, so the float32 result is the correctly rounded
sum; Caffe adds them one by one in float32, which can differ by more than that when
the terms cancel. It replaced kernel*kernel strided adds, one per window offset:
27 -> 14 ms for pool1/2/5 at batch 16 on 2 cores.
"""
import numpy as np

from nn.checks import check_float_array, check_int, check_upstream_grad, fail
from nn.threads import run_split

FLT_MAX = float(np.finfo(np.float32).max)  # Caffe's running maximum starts at -FLT_MAX


def pool_output_size(size, kernel, stride, pad):
    """Caffe's pooled length: ceil((size + 2*pad - kernel) / stride) + 1, minus one when
    pad > 0 and the last window would start inside the bottom/right padding."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def check_pool_params(x_shape, kernel, stride, pad, layer):
    """Validate pooling's hyper-parameters against the input shape x_shape (N, C, H, W);
    shared with the kernel launcher kernels/pool.py, so it looks at shapes only.

    kernel, stride >= 1 and 0 <= pad < kernel (Caffe's rule), and the window must fit the
    padded input. Returns (kernel, stride, pad) as ints and the output size (Ho, Wo).
    """
    kernel = check_int(kernel, "kernel", layer, 1)
    stride = check_int(stride, "stride", layer, 1)
    pad = check_int(pad, "pad", layer, 0)
    h, w = x_shape[2:]
    if pad >= kernel:
        fail(layer, f"pad = {pad} must be smaller than kernel = {kernel} (Caffe's rule)")
    if h + 2 * pad < kernel or w + 2 * pad < kernel:
        fail(layer, f"kernel {kernel} does not fit the padded input {h + 2 * pad}x"
                    f"{w + 2 * pad} (x of shape {tuple(x_shape)}, pad = {pad})")
    ho, wo = pool_output_size(h, kernel, stride, pad), pool_output_size(w, kernel, stride, pad)
    return kernel, stride, pad, ho, wo


def check_pool_cache(cache, layer):
    """A max_pool_backward cache must come from a forward that kept its argmax; shared
    with kernels/pool.py."""
    if cache is None:
        fail(layer, "the forward ran with need_argmax=False and kept nothing to route the "
                    "gradient by; run it with need_argmax=True")


def _padded_extent(size, kernel, stride, pad, out):
    """Length of the padded axis that holds every window, clipped ones included."""
    return max(size + 2 * pad, (out - 1) * stride + kernel)


def _offset_dtype(kernel):
    """Smallest integer type for window offsets 0 .. kernel*kernel - 1."""
    return np.uint8 if kernel * kernel <= 256 else np.int32


def _pool_planes(x, kernel, stride, pad, padded, y, argmax):
    """Forward for some images: x (m, C, H, W) -> y, argmax (m, C, Ho, Wo). argmax=None
    finds the maxima only, which takes about half the passes."""
    m, c, h, w = x.shape
    ho, wo = y.shape[2:]
    hp, wp = padded
    track = argmax is not None
    dt = x.dtype.type
    if (hp, wp) == (h, w):
        xp = x  # every window lies inside the image (CaffeNet's case): no copy needed
    else:
        xp = np.full((m, c, hp, wp), -np.inf, dtype=x.dtype)
        xp[:, :, pad:pad + h, pad:pad + w] = x

    def cols(a, j):  # a[..., q*stride + j] for the wo window columns q
        return a[..., j:j + stride * (wo - 1) + 1:stride]

    def rows(a, i):  # a[..., p*stride + i, :] for the ho window rows p
        return a[..., i:i + stride * (ho - 1) + 1:stride, :]

    # Pass 1, along each row: r = max(-FLT_MAX, x[.., q*stride + j] for j < kernel) and
    # rj = the first j reaching it. np.fmax skips NaN, so r is never NaN.
    r = np.fmax(cols(xp, 0), dt(-FLT_MAX))
    if track:
        offset = np.empty(y.shape, dtype=_offset_dtype(kernel))  # i * kernel + j of the max
        off = offset.dtype.type
        rj = np.zeros(r.shape, dtype=offset.dtype)
        better = np.empty(r.shape, dtype=bool)
        candidate = np.empty(r.shape, dtype=offset.dtype)
    for j in range(1, kernel):
        v = cols(xp, j)
        if track:
            np.greater(v, r, out=better)  # strict: ties stay with the earlier column
            np.multiply(better, off(j), out=candidate)
            np.maximum(rj, candidate, out=rj)
        np.fmax(r, v, out=r)              # equals v exactly where better, else keeps r

    # Pass 2, down the window rows: y = max of r, offset = i * kernel + rj of the first.
    y[...] = rows(r, 0)
    if track:
        offset[...] = rows(rj, 0)
        better, candidate = better[..., :ho, :], candidate[..., :ho, :]
    for i in range(1, kernel):
        v = rows(r, i)
        if track:
            np.greater(v, y, out=better)
            np.add(rows(rj, i), off(i * kernel), out=candidate)
            candidate *= better           # row i's offsets exceed all of rows < i
            np.maximum(offset, candidate, out=offset)
        np.maximum(y, v, out=y)
    if not track:
        return

    # Flat argmax within the unpadded plane: (ho*stride - pad + i) * W + wo*stride - pad + j,
    # looked up per offset; windows that found nothing get -1.
    table = np.array([(o // kernel) * w + o % kernel for o in range(kernel * kernel)],
                     dtype=np.int32)
    base = ((np.arange(ho, dtype=np.int32) * stride - pad).reshape(ho, 1) * np.int32(w)
            + (np.arange(wo, dtype=np.int32) * stride - pad))
    np.take(table, offset, out=argmax)
    argmax += base
    argmax[y == dt(-FLT_MAX)] = -1


def max_pool_forward(x, kernel, stride, pad=0, layer='pool', need_argmax=True):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), square kernel/stride/pad, Caffe's ceil sizes.

    Returns (y, cache); cache['argmax'] (N, C, Ho, Wo) int32 holds the flat index
    h * W + w of each window's maximum within its (H, W) plane, -1 where the window has
    no value above -FLT_MAX (y is -FLT_MAX there). need_argmax=False (inference, no
    backward to follow) skips the argmax and returns cache None; y is the same.
    """
    check_float_array(x, "x", layer, ndim=4, expected="(N, C, H, W)")
    kernel, stride, pad, ho, wo = check_pool_params(x.shape, kernel, stride, pad, layer)
    n, c, h, w = x.shape
    padded = (_padded_extent(h, kernel, stride, pad, ho),
              _padded_extent(w, kernel, stride, pad, wo))
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    argmax = np.empty((n, c, ho, wo), dtype=np.int32) if need_argmax else None
    run_split(n, lambda lo, hi: _pool_planes(x[lo:hi], kernel, stride, pad, padded, y[lo:hi],
                                             None if argmax is None else argmax[lo:hi]))
    if argmax is None:
        return y, None
    cache = {'argmax': argmax, 'x_shape': x.shape, 'dtype': x.dtype}
    return y, cache


def max_pool_backward(dy, cache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each dy goes to its window's argmax,
    accumulating where overlapping windows share a maximum; windows with argmax -1 pass
    nothing."""
    check_pool_cache(cache, "max_pool_backward")
    argmax = cache['argmax']
    check_upstream_grad(dy, argmax.shape, cache['dtype'], "max_pool_backward")
    n, c, h, w = cache['x_shape']
    planes = argmax.reshape(n * c, -1)          # one row per (image, channel) plane
    plane_start = np.arange(0, n * c * h * w, h * w, dtype=np.intp)[:, None]
    target = planes.astype(np.intp) + plane_start
    weights = dy.reshape(n * c, -1)
    empty = planes < 0
    if empty.any():
        target[empty] = 0
        weights = np.where(empty, 0, weights)
    dx = np.bincount(target.ravel(), weights=weights.ravel(), minlength=n * c * h * w)
    return dx.astype(dy.dtype).reshape(n, c, h, w)
