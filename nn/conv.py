"""Convolution (Caffe's Convolution layer) as im2col + matrix products.

Layout of the column matrix (why: the weights need no reshuffling, and any run of
consecutive images is a block of columns that a matrix product can take as it is):

    cols (group, C/group * kh * kw, N * Ho * Wo)
    cols[g, (c, i, j), (n, ho, wo)] = x_padded[n, g*C/group + c, ho*stride + i, wo*stride + j]

so that  y[g] (K/group, N*Ho*Wo) = w[g] (K/group, C/group*kh*kw) @ cols[g].

Speed (the CPU path): the batch is split over threads (nn/threads.py), and each thread
works through its images one at a time, so that what it has just written is still in
the cache when the next step reads it: im2col, the product (whose (K, Ho*Wo) result is
already the image's NCHW output), bias and ReLU in place. The backward puts each
thread's images in the channel-major layout (ReLU mask applied in the same copy), takes
the thread's share of dw in one product, and computes dx image by image (product, then
col2im); the shares are added at the end.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from nn.checks import (check_float_array, check_int, check_same_dtype, check_shape,
                       check_upstream_grad, fail)
from nn.threads import run_split_gemm

def conv_output_size(size, kernel, stride, pad):
    """Output length along one axis: (size + 2*pad - kernel) // stride + 1 (Caffe's floor)."""
    return (size + 2 * pad - kernel) // stride + 1


def strided_window(a, i, j, stride, ho, wo):
    """View a[..., i + stride*p, j + stride*q] for p < ho, q < wo (last two axes)."""
    return a[..., i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]


def im2col_into(x, kh, kw, stride, pad, out):
    """Columns of the images x (m, C, H, W) into out (C, kh, kw, m, Ho, Wo), which is a
    view of the column matrix (see the module docstring) for these m images.

    The windows are a strided view of the padded input (no copy); one transposing copy
    then writes them all, never a loop over pixels.
    """
    m, c, h, w = x.shape
    ho, wo = out.shape[4:]
    if pad > 0:
        xp = np.zeros((m, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
        xp[:, :, pad:pad + h, pad:pad + w] = x
    else:
        xp = x
    # windows[n, c, p, q, i, j] = xp[n, c, p*stride + i, q*stride + j]
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    out[...] = windows[:, :, :ho, :wo].transpose(1, 4, 5, 0, 2, 3)


def col2im_into(cols, kh, kw, stride, pad, out):
    """Adjoint of im2col_into: cols (C, kh, kw, m, Ho, Wo) -> out (m, C, H, W).

    Overlapping windows accumulate, one vectorised add per kernel offset, in a
    (C, m, Hp, Wp) buffer so that every add runs over whole channel planes.
    """
    m, c, h, w = out.shape
    ho, wo = cols.shape[4:]
    acc = np.zeros((c, m, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            strided_window(acc, i, j, stride, ho, wo)[...] += cols[:, i, j]
    out[...] = acc[:, :, pad:pad + h, pad:pad + w].transpose(1, 0, 2, 3)


def _check_conv_args(x, w, b, stride, pad, group, layer):
    """Validate convolution arguments; return (stride, pad, group, Ho, Wo)."""
    check_float_array(x, "x", layer, ndim=4, expected="(N, C, H, W)")
    check_float_array(w, "w", layer, ndim=4, expected="(K, C // group, kh, kw)")
    stride = check_int(stride, "stride", layer, 1)
    pad = check_int(pad, "pad", layer, 0)
    group = check_int(group, "group", layer, 1)
    k, cg, kh, kw = w.shape
    n, c, h, wid = x.shape
    if k % group:
        fail(layer, f"the number of filters K = {k} (w.shape[0]) must be divisible by "
                    f"group = {group}")
    if c != cg * group:
        fail(layer, f"x must have shape (N, {cg * group}, H, W) (C = w.shape[1] * group = "
                    f"{cg} * {group}), got {x.shape}")
    check_float_array(b, "b", layer, ndim=1, expected=f"({k},)")
    check_shape(b, "b", layer, (k,), "(one bias per filter, K = w.shape[0])")
    check_same_dtype(layer, x=x, w=w, b=b)
    ho, wo = conv_output_size(h, kh, stride, pad), conv_output_size(wid, kw, stride, pad)
    if ho < 1 or wo < 1:
        fail(layer, f"kernel {kh}x{kw} does not fit the padded input {h + 2 * pad}x"
                    f"{wid + 2 * pad} (x of shape {x.shape}, pad = {pad})")
    return stride, pad, group, ho, wo


def conv_forward(x, w, b, stride=1, pad=0, group=1, relu=False, layer='conv'):
    """Caffe convolution, optionally followed by ReLU.

    x (N, C, H, W), w (K, C // group, kh, kw), b (K,)  ->  y (N, K, Ho, Wo),
    Ho = (H + 2*pad - kh) // stride + 1. Group g maps input channels
    [g*C/group, (g+1)*C/group) to output channels [g*K/group, (g+1)*K/group).
    Returns (y, cache). y is referenced by the cache when relu=True: do not modify it
    in place before conv_backward.
    """
    stride, pad, group, ho, wo = _check_conv_args(x, w, b, stride, pad, group, layer)
    n, c = x.shape[:2]
    k, cg, kh, kw = w.shape
    kg, rows, p = k // group, cg * kh * kw, ho * wo
    cols = np.empty((group, rows, n * p), dtype=x.dtype)
    cols6 = cols.reshape(c, kh, kw, n, ho, wo)
    wg = w.reshape(group, kg, rows)
    bg = b.reshape(group, kg, 1)
    y = np.empty((n, k, ho, wo), dtype=x.dtype)

    def work(lo, hi):
        for i in range(lo, hi):
            im2col_into(x[i:i + 1], kh, kw, stride, pad, cols6[:, :, :, i:i + 1])
            # One image's product is already in NCHW order: (K/group, Ho*Wo) per group.
            yi = y[i].reshape(group, kg, p)
            for g in range(group):
                np.matmul(wg[g], cols[g, :, i * p:(i + 1) * p], out=yi[g])
            yi += bg
            if relu:
                np.maximum(yi, 0, out=yi)

    run_split_gemm(n, work)
    cache = (x.shape, w, cols, stride, pad, group, (ho, wo), y if relu else None)
    return y, cache


def conv_backward(dy, cache, need_dx=True):
    """Gradients of conv_forward.

    dy (N, K, Ho, Wo) -> (dx (N, C, H, W), dw (K, C // group, kh, kw), db (K,)).
    When the forward had relu=True the ReLU gradient (y > 0) is applied first.
    need_dx=False skips the input gradient (dx is None): a network's first layer needs
    none, and for CaffeNet's conv1 it is about a third of the layer's backward work.
    """
    x_shape, w, cols, stride, pad, group, (ho, wo), y = cache
    k, cg, kh, kw = w.shape
    n, c = x_shape[:2]
    check_upstream_grad(dy, (n, k, ho, wo), w.dtype, "conv_backward")
    kg, rows, p = k // group, cg * kh * kw, ho * wo
    # Channel-major gradient (group, K/group, N*Ho*Wo), matching the cols layout.
    dyt = np.empty((group, kg, n * p), dtype=dy.dtype)
    dyt3 = dyt.reshape(k, n, p)
    wg = w.reshape(group, kg, rows)
    dx = np.empty(x_shape, dtype=dy.dtype) if need_dx else None

    def work(lo, hi):
        # This thread's images in the channel-major layout, the ReLU mask applied in the
        # same copy.
        src = dy[lo:hi].reshape(hi - lo, k, p).transpose(1, 0, 2)
        if y is not None:
            np.multiply(src, y[lo:hi].reshape(hi - lo, k, p).transpose(1, 0, 2) > 0,
                        out=dyt3[:, lo:hi])
        else:
            dyt3[:, lo:hi] = src
        # Its share of dw: one product over all its columns; and of db.
        dw_part = np.empty((group, kg, rows), dtype=dy.dtype)
        for g in range(group):
            np.matmul(dyt[g, :, lo * p:hi * p], cols[g, :, lo * p:hi * p].T, out=dw_part[g])
        db_part = dyt3[:, lo:hi].sum(axis=(1, 2))
        if need_dx:
            dcols = np.empty((group, rows, p), dtype=dy.dtype)  # one image's, reused
            for i in range(lo, hi):
                for g in range(group):
                    np.matmul(wg[g].T, dyt[g, :, i * p:(i + 1) * p], out=dcols[g])
                col2im_into(dcols.reshape(c, kh, kw, 1, ho, wo), kh, kw, stride, pad,
                            dx[i:i + 1])
        return dw_part, db_part

    parts = run_split_gemm(n, work)
    dw, db = parts[0]
    for dw_part, db_part in parts[1:]:
        dw += dw_part
        db += db_part
    return dx, dw.reshape(w.shape), db
