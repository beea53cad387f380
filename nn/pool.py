"""MAX pooling exactly as Caffe's Pooling layer (pool: MAX).

Windows start at ho*stride - pad and are clipped to the image, so padding is never a
candidate maximum. We get the clipping for free by padding with -inf (which never wins a
strict '>' comparison against a real value) and then loop over the kernel*kernel offsets,
each step vectorised over the whole batch; the strict '>' keeps the first maximum in
row-major window order, as Caffe does.
"""
import numpy as np

from nn.checks import check_float_array, check_int, check_upstream_grad, fail
from nn.conv import strided_window


def pool_output_size(size, kernel, stride, pad):
    """Caffe's pooled length: ceil((size + 2*pad - kernel) / stride) + 1, minus one when
    pad > 0 and the last window would start inside the bottom/right padding."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _padded_extent(size, kernel, stride, pad, out):
    """Length of the padded axis that holds every window, clipped ones included."""
    return max(size + 2 * pad, (out - 1) * stride + kernel)


def max_pool_forward(x, kernel, stride, pad=0, layer='pool'):
    """x (N, C, H, W) -> y (N, C, Ho, Wo), square kernel/stride/pad, Caffe's ceil sizes.

    Returns (y, cache); cache['argmax'] (N, C, Ho, Wo) int32 holds the flat index
    h * W + w of each window's maximum within its (H, W) plane.
    """
    check_float_array(x, "x", layer, ndim=4, expected="(N, C, H, W)")
    kernel = check_int(kernel, "kernel", layer, 1)
    stride = check_int(stride, "stride", layer, 1)
    pad = check_int(pad, "pad", layer, 0)
    n, c, h, w = x.shape
    if pad >= kernel:
        fail(layer, f"pad = {pad} must be smaller than kernel = {kernel} (Caffe's rule)")
    if h + 2 * pad < kernel or w + 2 * pad < kernel:
        fail(layer, f"kernel {kernel} does not fit the padded input {h + 2 * pad}x"
                    f"{w + 2 * pad} (x of shape {x.shape}, pad = {pad})")
    ho, wo = pool_output_size(h, kernel, stride, pad), pool_output_size(w, kernel, stride, pad)
    hp = _padded_extent(h, kernel, stride, pad, ho)
    wp = _padded_extent(w, kernel, stride, pad, wo)
    if (hp, wp) == (h, w):
        xp = x  # every window lies inside the image (CaffeNet's case): no copy needed
    else:
        xp = np.full((n, c, hp, wp), -np.inf, dtype=x.dtype)
        xp[:, :, pad:pad + h, pad:pad + w] = x

    # Offset index (i * kernel + j) of the running maximum; uint8 is enough for k <= 16.
    # Offsets are visited in increasing order, so "offset = o where v > y" is the same as
    # offset = max(offset, o * (v > y)), two fast ufuncs instead of a slow masked copy.
    off_dtype = np.uint8 if kernel * kernel <= 256 else np.int32
    y = strided_window(xp, 0, 0, stride, ho, wo).copy()
    offset = np.zeros((n, c, ho, wo), dtype=off_dtype)
    better = np.empty((n, c, ho, wo), dtype=bool)
    candidate = np.empty((n, c, ho, wo), dtype=off_dtype)
    for o in range(1, kernel * kernel):
        v = strided_window(xp, o // kernel, o % kernel, stride, ho, wo)
        np.greater(v, y, out=better)  # strict: ties stay with the earlier offset
        np.multiply(better, off_dtype(o), out=candidate)
        np.maximum(offset, candidate, out=offset)
        np.maximum(y, v, out=y)       # equals v exactly where better, else keeps y

    # Flat argmax within the unpadded plane: h = ho*stride - pad + i, w = wo*stride - pad + j.
    row = (np.arange(ho, dtype=np.int32) * stride - pad).reshape(ho, 1)
    col = (np.arange(wo, dtype=np.int32) * stride - pad).reshape(1, wo)
    oi, oj = np.divmod(offset.astype(np.int32), np.int32(kernel))
    argmax = (row + oi) * np.int32(w) + (col + oj)
    cache = {'argmax': argmax, 'offset': offset, 'x_shape': x.shape, 'dtype': x.dtype,
             'kernel': kernel, 'stride': stride, 'pad': pad, 'padded': (hp, wp)}
    return y, cache


def max_pool_backward(dy, cache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each dy goes to its window's argmax,
    accumulating where overlapping windows share a maximum."""
    n, c, h, w = cache['x_shape']
    kernel, stride, pad = cache['kernel'], cache['stride'], cache['pad']
    offset = cache['offset']
    ho, wo = offset.shape[2:]
    check_upstream_grad(dy, offset.shape, cache['dtype'], "max_pool_backward")
    dxp = np.zeros((n, c) + cache['padded'], dtype=dy.dtype)
    picked = np.empty_like(dy)
    for i in range(kernel):
        for j in range(kernel):
            # For one offset (i, j) the source pixels (ho*stride + i, wo*stride + j) are
            # distinct, so a strided add is a correct scatter; overlaps between windows
            # accumulate across offsets.
            np.multiply(dy, offset == i * kernel + j, out=picked)
            strided_window(dxp, i, j, stride, ho, wo)[...] += picked
    if dxp.shape[2:] == (h, w) and pad == 0:
        return dxp
    return np.ascontiguousarray(dxp[:, :, pad:pad + h, pad:pad + w])
