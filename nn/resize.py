"""OpenCV's ``cv::resize(..., INTER_LINEAR)`` on 8-bit images, bit for bit, in NumPy.

Caffe's ImageData layer reads images with OpenCV and resizes them with INTER_LINEAR; this
module reproduces that arithmetic exactly (checked against OpenCV 3.4, 4.10 and 5.0, see
tests/test_resize.py), so the network sees the same bytes as in the authors' set-up.

Geometry (per axis; the same rule for rows and columns). Output pixel d samples the source at

    p = (d + 0.5) * scale - 0.5,      scale = 1 / (dst_size / src_size)   (float64)

rounded to float32, as OpenCV does. With i = floor(p) and f = p - i, the output is
(1 - f) * src[i] + f * src[i + 1]. Outside the image OpenCV replicates the edge:

* columns: if i < 0 or i >= src_size - 1, the output is src[clip(i)] alone (weights 1, 0);
* rows: the two source rows are clipped to [0, src_size - 1], but the weights (1 - f, f)
  are kept (the same row twice, so the value is the edge row up to rounding).

Fixed point (INTER_RESIZE_COEF_BITS = 11): each weight is rounded to an integer number of
1/2048ths, w = rint(weight * 2048) (float32, ties to even).

1. horizontal pass, exact integers: t = src[i] * a0 + src[i + 1] * a1    (0 .. 255 * 2048)
2. vertical pass, OpenCV's 16-bit shortcut (its SIMD code and its scalar fallback agree):
   out = (((b0 * (t0 >> 4)) >> 16) + ((b1 * (t1 >> 4)) >> 16) + 2) >> 2
   i.e. t0 * b0 + t1 * b1 scaled down by 2**22 with truncations on the way, so it can be one
   level below the exactly rounded value.

Both passes are vectorised: the per-column and per-row indices and weights are computed once,
then whole rows are gathered and combined (no Python loop over pixels).
"""
import numpy as np

COEF_BITS = 11                 # OpenCV's INTER_RESIZE_COEF_BITS
COEF_SCALE = 1 << COEF_BITS    # a weight of 1.0 in fixed point


def source_positions(src_size, dst_size):
    """OpenCV's sample positions along one axis.

    Returns (left, frac): int64 (dst_size,) index floor(p) (may be -1 or src_size - 1 at the
    borders, before any clipping) and float32 (dst_size,) fraction p - floor(p) in [0, 1).
    """
    scale = 1.0 / (dst_size / src_size)    # OpenCV inverts the inverse scale, in float64
    pos = ((np.arange(dst_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    left = np.floor(pos)
    frac = pos - left                      # exact in float32
    return left.astype(np.int64), frac


def fixed_weights(frac):
    """float32 fractions (n,) -> int32 weights (w0, w1), each (n,), in 1/2048ths.

    w0 = rint((1 - frac) * 2048), w1 = rint(frac * 2048), computed in float32 like OpenCV's
    saturate_cast<short>(float); they always add up to 2048.
    """
    frac = np.asarray(frac, dtype=np.float32)
    scale = np.float32(COEF_SCALE)
    w0 = np.rint((np.float32(1) - frac) * scale).astype(np.int32)
    w1 = np.rint(frac * scale).astype(np.int32)
    return w0, w1


def column_taps(src_size, dst_size):
    """Horizontal taps: (x0, x1, a0, a1), each (dst_size,): out = src[x0]*a0 + src[x1]*a1.

    Outside [0, src_size - 1) the edge column is used alone (a0 = 2048, a1 = 0).
    """
    left, frac = source_positions(src_size, dst_size)
    edge = (left < 0) | (left >= src_size - 1)
    frac = np.where(edge, np.float32(0), frac)
    x0 = np.clip(left, 0, src_size - 1)
    x1 = np.minimum(x0 + 1, src_size - 1)
    a0, a1 = fixed_weights(frac)
    return x0, x1, a0, a1


def row_taps(src_size, dst_size):
    """Vertical taps: (y0, y1, b0, b1), each (dst_size,); the rows are clipped to the image,
    the weights are not changed at the borders (OpenCV's rule for rows)."""
    left, frac = source_positions(src_size, dst_size)
    y0 = np.clip(left, 0, src_size - 1)
    y1 = np.clip(left + 1, 0, src_size - 1)
    b0, b1 = fixed_weights(frac)
    return y0, y1, b0, b1


def _horizontal(rows, x0, x1, a0, a1):
    """uint8 (R, W, C) -> int32 (R, w * C): each row resampled to w columns, exact integers.

    The rows are handled as (R, W * C) so that one np.take per tap gathers all channels.
    """
    n_rows, src_w, channels = rows.shape
    flat = rows.reshape(n_rows, src_w * channels)
    lane = np.arange(channels)
    def tap(x, a):   # src[:, x] * a for every output column and channel, in int32
        cols = (x[:, None] * channels + lane).ravel()
        return np.multiply(np.take(flat, cols, axis=1), np.repeat(a, channels),
                           dtype=np.int32)
    t = tap(x0, a0)
    t += tap(x1, a1)
    return t


def _vertical(t0, t1, b0, b1):
    """Two int32 (h, n) horizontal results (one row per output row) and the (h,) weights ->
    uint8 (h, n).

    OpenCV's 8-bit vertical step: drop 4 bits, multiply by the 11-bit weight and keep the
    high 16 bits (a 16 x 16 -> high-16 SIMD multiply), add, then round away the last 2 bits.
    The arrays are updated in place (they are fresh gathers).
    """
    t0 >>= 4
    t0 *= b0[:, None]
    t0 >>= 16
    t1 >>= 4
    t1 *= b1[:, None]
    t1 >>= 16
    t0 += t1
    t0 += 2
    t0 >>= 2
    return t0.astype(np.uint8)


def resize_linear(img, height, width):
    """OpenCV INTER_LINEAR resize of an 8-bit image, bit-exact.

    img: uint8 (H, W, C) or (H, W). Returns uint8 (height, width, C) or (height, width),
    equal to ``cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)``.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or 0 in img.shape:
        raise ValueError(f"resize_linear: expected a non-empty uint8 image (H, W, C) or "
                         f"(H, W), got {img.dtype} {img.shape}")
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"resize_linear: height and width must be positive integers, got "
                         f"{height!r} x {width!r}")
    height, width = int(height), int(width)
    grey = img.ndim == 2
    if grey:
        img = img[:, :, None]
    src_h, src_w, channels = img.shape
    if (src_h, src_w) == (height, width):
        out = img.copy()                   # OpenCV copies too; the formula gives the same
    else:
        x0, x1, a0, a1 = column_taps(src_w, width)
        y0, y1, b0, b1 = row_taps(src_h, height)
        # Resample only the source rows some output row reads (few when shrinking a lot).
        needed = np.unique(np.concatenate([y0, y1]))
        t = _horizontal(img[needed], x0, x1, a0, a1)
        t0 = np.take(t, np.searchsorted(needed, y0), axis=0)
        t1 = np.take(t, np.searchsorted(needed, y1), axis=0)
        out = _vertical(t0, t1, b0, b1).reshape(height, width, channels)
    return out[:, :, 0] if grey else out
