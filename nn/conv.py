"""Convolution (Caffe's Convolution layer) as im2col + one matrix product per group.

Layout of the column matrix (why: every group's product is then a single large GEMM over
the whole batch, and the weights need no reshuffling):

    cols (group, C/group * kh * kw, N * Ho * Wo)
    cols[g, (c, i, j), (n, ho, wo)] = x_padded[n, g*C/group + c, ho*stride + i, wo*stride + j]

so that  y[g] (K/group, N*Ho*Wo) = w[g] (K/group, C/group*kh*kw) @ cols[g].

The backward pass uses the same matrix: dw[g] = dy[g] @ cols[g]^T, and dx scatters
w[g]^T @ dy[g] back onto the windows (col2im). Two faster algorithms take over where they
pay (conv_algorithm says which; algorithm= can ask for any that applies): 3x3 kernels at
stride 1 (CaffeNet's conv3 to conv5) go through Winograd's F(2x2, 3x3) (nn/winograd.py,
2.25x fewer multiplications), and larger kernels at stride 1 in a batch (conv2's 5x5)
through the discrete Fourier transform (nn/dft_conv.py; its backward is im2col's).
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from nn.dft_conv import dft_forward
from nn.relu import add_bias_relu
from nn.threads import run_split
from nn.winograd import winograd_applies, winograd_backward, winograd_forward
from nn.checks import (check_float_array, check_int, check_same_dtype, check_upstream_grad,
                       expect_shape, fail)


def conv_output_size(size, kernel, stride, pad):
    """Output length along one axis: (size + 2*pad - kernel) // stride + 1 (Caffe's floor)."""
    return (size + 2 * pad - kernel) // stride + 1


def strided_window(a, i, j, stride, ho, wo):
    """View a[..., i + stride*p, j + stride*q] for p < ho, q < wo (last two axes)."""
    return a[..., i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]


def im2col(x, kh, kw, stride, pad, group):
    """x (N, C, H, W) -> cols (group, C//group * kh * kw, N * Ho * Wo), see module docstring.

    The windows are a strided view of the padded input (no copy); one transposing copy
    then writes the column matrix, never a loop over pixels. Channels are independent, so
    the copy is split over the CPU threads by channel (im2col alone for conv1 and conv2
    at batch 16 on 2 cores: 9-10 ms on one thread, 6-7 ms on two).
    """
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, stride, pad), conv_output_size(w, kw, stride, pad)
    cols = np.empty((c, kh, kw, n, ho, wo), dtype=x.dtype)

    def fill(lo, hi):
        xp = x[:, lo:hi]
        if pad > 0:
            xp = np.zeros((n, hi - lo, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
            xp[:, :, pad:pad + h, pad:pad + w] = x[:, lo:hi]
        # windows[n, c, p, q, i, j] = xp[n, c, p*stride + i, q*stride + j]
        windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
        cols[lo:hi] = windows[:, :, :ho, :wo].transpose(1, 4, 5, 0, 2, 3)

    run_split(c, fill)
    return cols.reshape(group, (c // group) * kh * kw, n * ho * wo)


def col2im(cols, x_shape, kh, kw, stride, pad):
    """Adjoint of im2col: cols (group, C//group*kh*kw, N*Ho*Wo) -> dx (N, C, H, W).

    Overlapping windows accumulate, one vectorised add per kernel offset.
    """
    n, c, h, w = x_shape
    ho, wo = conv_output_size(h, kh, stride, pad), conv_output_size(w, kw, stride, pad)
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    # Accumulate in (C, N, Hp, Wp) so every add is over whole contiguous channel planes.
    dxt = np.zeros((c, n, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)

    def accumulate(lo, hi):   # channels are independent: split them over the CPU threads
        for i in range(kh):
            for j in range(kw):
                strided_window(dxt[lo:hi], i, j, stride, ho, wo)[...] += cols[lo:hi, i, j]

    run_split(c, accumulate)
    dxt = dxt[:, :, pad:pad + h, pad:pad + w]
    return np.ascontiguousarray(dxt.transpose(1, 0, 2, 3))


def check_conv_params(x_shape, w_shape, b_shape, stride, pad, group, layer):
    """Validate a convolution's hyper-parameters against the shapes x (N, C, H, W),
    w (K, C // group, kh, kw), b (K,); shared with the kernel launcher kernels/conv.py, so
    it looks at shapes only. Returns (stride, pad, group) as ints and the output size
    (Ho, Wo)."""
    stride = check_int(stride, "stride", layer, 1)
    pad = check_int(pad, "pad", layer, 0)
    group = check_int(group, "group", layer, 1)
    k, cg, kh, kw = w_shape
    n, c, h, wid = x_shape
    if min(k, cg, kh, kw, n) == 0:   # nothing to compute (and a zero-size grid on the GPU)
        fail(layer, f"x {tuple(x_shape)} and w {tuple(w_shape)} must not have empty axes")
    if k % group:
        fail(layer, f"the number of filters K = {k} (w.shape[0]) must be divisible by "
                    f"group = {group}")
    if c != cg * group:
        fail(layer, f"x must have shape (N, {cg * group}, H, W) (C = w.shape[1] * group = "
                    f"{cg} * {group}), got {tuple(x_shape)}")
    expect_shape(b_shape, "b", layer, (k,), "(one bias per filter, K = w.shape[0])")
    ho, wo = conv_output_size(h, kh, stride, pad), conv_output_size(wid, kw, stride, pad)
    if ho < 1 or wo < 1:
        fail(layer, f"kernel {kh}x{kw} does not fit the padded input {h + 2 * pad}x"
                    f"{wid + 2 * pad} (x of shape {tuple(x_shape)}, pad = {pad})")
    return stride, pad, group, ho, wo


def _check_conv_args(x, w, b, stride, pad, group, layer):
    """The reference's arrays (float32/float64 NumPy, one dtype), then the shared
    check_conv_params; returns what that returns."""
    check_float_array(x, "x", layer, ndim=4, expected="(N, C, H, W)")
    check_float_array(w, "w", layer, ndim=4, expected="(K, C // group, kh, kw)")
    check_float_array(b, "b", layer, ndim=1, expected=f"({w.shape[0]},)")
    check_same_dtype(layer, x=x, w=w, b=b)
    return check_conv_params(x.shape, w.shape, b.shape, stride, pad, group, layer)


ALGORITHMS = ('im2col', 'winograd', 'dft')
DFT_MIN_KERNEL = 5   # below: Winograd (3x3) or im2col are faster
# When the DFT pays (nn/dft_conv.py): per filter and input channel it costs about
# 2F (kh*kw + 2N) multiply-adds (the filter's transform, then the products; 2F real
# numbers per spectrum, F = P_h * (P_w // 2 + 1)), im2col kh*kw*Ho*Wo*N. The filter's
# transform does not shrink with the batch, nor the padded input's spectrum with the
# outputs, so small batches and small outputs go to im2col. conv2 alone on 2 cores,
# im2col against the DFT: batch 1 3.3 / 11 ms, batch 4 13 / 20, batch 8 26 / 26 (a
# saving of 3.6), batch 16 60-66 / 47-50, batch 64 217-269 / 160-186. A fully
# convolutional fc6 (a 6x6 kernel on a 6x6 input, one output; a saving of 0.12) took
# 580 ms against im2col's 24 at batch 8.
DFT_MIN_SAVING = 3.5
# And the filters' spectra, 2F numbers for each of K * C/group filters, must stay small:
# conv2's are 12 million (49 MB in float32); a fully convolutional fc6 on a 13x13 map
# would need 190 million.
DFT_MAX_FILTER_SPECTRA = 16 * 2**20   # numbers (64 MiB in float32)


def _spectrum_size(kernel_shape, out_shape):
    """2F: the real numbers in one half spectrum of the padded input."""
    (kh, kw), (ho, wo) = kernel_shape, out_shape
    return (ho + kh - 1) * 2 * ((wo + kw - 1) // 2 + 1)


def dft_saving(kernel_shape, out_shape, batch):
    """im2col's multiply-adds over the DFT's, roughly, for a stride-1 convolution with
    this kernel, output size (Ho, Wo) and batch (see DFT_MIN_SAVING)."""
    kernel = kernel_shape[0] * kernel_shape[1]
    return (kernel * out_shape[0] * out_shape[1] * batch
            / (_spectrum_size(kernel_shape, out_shape) * (kernel + 2 * batch)))


def _dft_pays(kernel_shape, batch, out_shape, filters):
    """conv_algorithm's rule for 'dft' where it applies (see DFT_MIN_KERNEL,
    DFT_MIN_SAVING, DFT_MAX_FILTER_SPECTRA)."""
    return (min(kernel_shape) >= DFT_MIN_KERNEL and None not in (batch, out_shape, filters)
            and dft_saving(kernel_shape, out_shape, batch) >= DFT_MIN_SAVING
            and filters * _spectrum_size(kernel_shape, out_shape) <= DFT_MAX_FILTER_SPECTRA)


def conv_algorithms(kernel_shape, stride):
    """The algorithms that can compute a convolution with this kernel and stride:
    'im2col' always, 'winograd' for 3x3 at stride 1, 'dft' at stride 1."""
    return (('im2col',) + (('winograd',) if winograd_applies(kernel_shape, stride) else ())
            + (('dft',) if stride == 1 else ()))


def conv_algorithm(kernel_shape, stride, algorithm=None, layer='conv', batch=None,
                   out_shape=None, filters=None):
    """How conv_forward computes: 'winograd' (nn/winograd.py: F(2x2, 3x3)) for a 3x3
    kernel at stride 1; 'dft' (nn/dft_conv.py) for kernels of at least DFT_MIN_KERNEL at
    stride 1 where the batch, the output size out_shape (Ho, Wo) and the number of 2D
    filters (K * C/group) make it pay (_dft_pays: conv2 from a batch of 8); 'im2col'
    (this module) otherwise. algorithm= asks for one of conv_algorithms(kernel_shape,
    stride)."""
    applicable = conv_algorithms(kernel_shape, stride)
    if algorithm is None:
        if 'winograd' in applicable:
            return 'winograd'
        if 'dft' in applicable and _dft_pays(kernel_shape, batch, out_shape, filters):
            return 'dft'
        return 'im2col'
    if algorithm not in ALGORITHMS:
        fail(layer, f"algorithm must be None or one of {', '.join(map(repr, ALGORITHMS))}, "
                    f"got {algorithm!r}")
    if algorithm not in applicable:
        needs = "a 3x3 kernel at stride 1" if algorithm == 'winograd' else "stride 1"
        fail(layer, f"algorithm {algorithm!r} needs {needs}, got a "
                    f"{kernel_shape[0]}x{kernel_shape[1]} kernel at stride {stride}")
    return algorithm


def _im2col_forward(x, w, b, stride, pad, group, ho, wo, relu):
    """y (N, K, Ho, Wo) = one matrix product per group with the column matrix, bias added
    (and ReLU applied when relu); returns (y, cols)."""
    n = x.shape[0]
    k, cg, kh, kw = w.shape
    cols = im2col(x, kh, kw, stride, pad, group)
    wg = w.reshape(group, k // group, cg * kh * kw)
    yg = np.empty((group, k // group, n * ho * wo), dtype=x.dtype)
    for g in range(group):
        np.matmul(wg[g], cols[g], out=yg[g])
    # (K, N, Ho, Wo) -> NCHW while adding the bias: one pass instead of copy + add.
    y = np.empty((n, k, ho, wo), dtype=x.dtype)
    yt = yg.reshape(k, n, ho, wo).transpose(1, 0, 2, 3)
    run_split(n, lambda lo, hi: add_bias_relu(yt[lo:hi], b, y[lo:hi], relu))
    return y, cols


def _im2col_backward(dy, x_shape, w, cols, stride, pad, group, need_dx, need_dw):
    """Gradients from the column matrix: dw = dy cols^T and dx = col2im(W^T dy) per group
    (each None unless needed; db comes with dw). dy (N, K, Ho, Wo), cols (group,
    C/group*kh*kw, N*Ho*Wo), read only for dw (None will do when need_dw is False)."""
    k, cg, kh, kw = w.shape
    n_out = dy.shape[0] * dy.shape[2] * dy.shape[3]   # N*Ho*Wo, the columns
    # Channel-major gradient (group, K/group, N*Ho*Wo), matching the cols layout.
    dyt = np.empty((group, k // group, n_out), dtype=dy.dtype)
    dyt.reshape((k,) + dy.shape[:1] + dy.shape[2:])[...] = dy.transpose(1, 0, 2, 3)
    wg = w.reshape(group, k // group, cg * kh * kw)
    dx = dw = db = None
    if need_dw:
        db = dyt.sum(axis=2).reshape(k)
        dw = np.empty_like(wg)
        for g in range(group):
            np.matmul(dyt[g], cols[g].T, out=dw[g])
        dw = dw.reshape(w.shape)
    if need_dx:
        dcols = np.empty((group, cg * kh * kw, n_out), dtype=dy.dtype)
        for g in range(group):
            np.matmul(wg[g].T, dyt[g], out=dcols[g])
        dx = col2im(dcols, x_shape, kh, kw, stride, pad)
    return dx, dw, db


def conv_forward(x, w, b, stride=1, pad=0, group=1, relu=False, layer='conv',
                 algorithm=None):
    """Caffe convolution, optionally followed by ReLU.

    x (N, C, H, W), w (K, C // group, kh, kw), b (K,)  ->  y (N, K, Ho, Wo),
    Ho = (H + 2*pad - kh) // stride + 1. Group g maps input channels
    [g*C/group, (g+1)*C/group) to output channels [g*K/group, (g+1)*K/group).
    algorithm: see conv_algorithm (default: Winograd for 3x3 stride 1, the DFT for
    larger kernels at stride 1 in a batch, else im2col).
    Returns (y, cache). y is referenced by the cache when relu=True, and x when the
    algorithm is 'dft' (its backward rebuilds im2col's matrix from x): do not modify them
    in place before conv_backward.
    """
    stride, pad, group, ho, wo = _check_conv_args(x, w, b, stride, pad, group, layer)
    algorithm = conv_algorithm(w.shape[2:], stride, algorithm, layer, batch=x.shape[0],
                               out_shape=(ho, wo), filters=w.shape[0] * w.shape[1])
    if algorithm == 'winograd':
        y, saved = winograd_forward(x, w, b, pad, group, relu)
    elif algorithm == 'dft':
        y, saved = dft_forward(x, w, b, pad, group, relu), x
    else:
        y, saved = _im2col_forward(x, w, b, stride, pad, group, ho, wo, relu)
    # saved: im2col's column matrix, winograd_forward's (V, U), or (dft) the input x.
    cache = dict(algorithm=algorithm, saved=saved, x_shape=x.shape, w=w, stride=stride,
                 pad=pad, group=group, y_shape=y.shape, y=y if relu else None)
    return y, cache


def check_backward_needs(need_dx, need_dw, layer):
    """conv_backward must compute something; shared with kernels/conv.py."""
    if not (need_dx or need_dw):
        fail(layer, "need_dx and need_dw are both False: nothing to compute")


def conv_backward(dy, cache, need_dx=True, need_dw=True):
    """Gradients of conv_forward.

    dy (N, K, Ho, Wo) -> (dx (N, C, H, W), dw (K, C // group, kh, kw), db (K,)).
    When the forward had relu=True the ReLU gradient (y > 0) is applied first.
    need_dx=False skips the input gradient (dx is None): a network's first layer needs
    none, and for CaffeNet's conv1 it is about a third of the layer's backward work.
    need_dw=False skips the weight and bias gradients (dw, db None): bench.py times the
    two passes apart.
    """
    w, y = cache['w'], cache['y']
    check_upstream_grad(dy, cache['y_shape'], w.dtype, "conv_backward")
    check_backward_needs(need_dx, need_dw, "conv_backward")
    if y is not None:
        dy = dy * (y > 0)
    if cache['algorithm'] == 'winograd':
        return winograd_backward(dy, cache['x_shape'], cache['pad'], cache['group'],
                                 cache['saved'], need_dx, need_dw)
    if cache['algorithm'] == 'dft':
        # The DFT path's backward is im2col's. Only dw reads the column matrix, so it is
        # rebuilt from the kept x only then (conv2 at batch 16: 106 MB, about 10 ms).
        x = cache['saved']
        cols = (im2col(x, w.shape[2], w.shape[3], cache['stride'], cache['pad'],
                       cache['group']) if need_dw else None)
    else:
        cols = cache['saved']
    return _im2col_backward(dy, cache['x_shape'], w, cols, cache['stride'],
                            cache['pad'], cache['group'], need_dx, need_dw)
