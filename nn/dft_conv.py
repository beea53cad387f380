"""Convolution through the discrete Fourier transform, for larger kernels at stride 1 in a
batch (CaffeNet's conv2: 5x5): the CPU path's forward.

The convolution theorem turns a sliding window into a pointwise product. Caffe's
convolution is a correlation, y[o] = sum_i x_padded[o + i] w[i]; on a period P no shorter
than the padded input no kept output wraps around, and

    Y[u] = conj(Wf[u]) X[u]      (X, Wf: the length-P DFTs of x_padded and w; u < P)

in 2D likewise, per frequency (u, v). Summed over input channels, each frequency becomes
one small complex matrix product, (K/group x C/group) @ (C/group x N): a 5x5 kernel costs
one complex multiply-add (4 real ones) per frequency instead of 25 per output.

The transforms are not FFTs: the images are small (31 x 31 padded for conv2), so each is
a product with an explicit DFT matrix, one large BLAS call per axis, with the padding
folded into the matrices (they read x at positions h + pad). Real inputs have Hermitian
spectra, so only v <= P_w / 2 is kept (as numpy.fft.rfft2 does) and the inverse counts
the others twice. Complex numbers are kept as real and imaginary parts side by side, so
every step is a real product or add (in the input's dtype):

    X  = A x Bt^T                along h with A (2U, H), then along w with Bt (2V, W):
                                 cos and -sin rows (U = P_h, V = P_w // 2 + 1)
    Wf = E w                     E (2F, kh*kw): conj of the filter's transform, F = U*V
    [Yr | Yi] = Wr [Xr | Xi] + Wi [-Xi | Xr]      per frequency and group
    y  = Re(IH Y IW)             the inverse, only at the Ho x Wo outputs kept

Layout: frequencies outermost, so that each frequency's matrices are contiguous for BLAS:
X (U, V, C, 2, N) holding [Xr | Xi] per channel, Wf (2, F, group, K/group, C/group),
Y (U, V, K, 2, N).

What it buys: conv2 at batch 16 takes 390 million multiply-adds in the products (im2col:
3.58 billion) and about 770 million in the transforms, E w the largest (its result holds
2F x K x C/group numbers, 49 MB). `python bench.py --device cpu --only net --batch 16 --layers`,
three runs alternated with the DFT switched off (2026-11-29): conv2 inside the network
34-39 ms against im2col's 46-49. At batch 1 the filter's transform alone costs more than
im2col's whole product, and for 3x3 kernels Winograd (nn/winograd.py) is faster, hence
conv_algorithm's rule (nn/conv.py). The backward pass is im2col's (nn/conv.py): the
forward keeps x. Float32 results differ from im2col's by a few units in the last place of
the largest outputs (about 3e-7 relative; tests/test_dft_conv.py bounds it against
float64).
"""
import functools

import numpy as np

from nn.relu import add_bias_relu
from nn.threads import run_split


def _angles(freqs, positions, period):
    """2 pi f p / period for f < freqs (rows) and each position (columns), float64; the
    product is reduced modulo the period first, so large ones lose no precision."""
    f = np.arange(freqs)[:, None]
    p = np.asarray(positions)[None, :]
    return 2 * np.pi * ((f * p) % period) / period


@functools.lru_cache(maxsize=16)
def _matrices(h, wd, kh, kw, pad, dtype):
    """The transform matrices for an (h, wd) input, a (kh, kw) kernel and `pad`, in
    `dtype` (a name): A (2U, h), Bt (2V, wd), E (2F, kh*kw), IH (2Ho, U) and IW (2V, Wo);
    see the module docstring."""
    ph, pw = h + 2 * pad, wd + 2 * pad
    u_count, v_count = ph, pw // 2 + 1
    ho, wo = ph - kh + 1, pw - kw + 1
    ah = _angles(u_count, np.arange(h) + pad, ph)        # forward: e^{-i angle}
    bw = _angles(v_count, np.arange(wd) + pad, pw)
    a = np.concatenate([np.cos(ah), -np.sin(ah)])
    bt = np.concatenate([np.cos(bw), -np.sin(bw)])
    # The filter's conjugate transform, e^{+i (angle_u + angle_v)}, at every (u, v, i, j).
    eu = _angles(u_count, np.arange(kh), ph)[:, None, :, None]
    ev = _angles(v_count, np.arange(kw), pw)[None, :, None, :]
    e = np.concatenate([np.cos(eu + ev), np.sin(eu + ev)]).reshape(2 * u_count * v_count,
                                                                   kh * kw)
    # Inverse: e^{+i angle}; along v every frequency but 0 (and pw / 2) stands for two,
    # and the real part keeps cos for the real and -sin for the imaginary part.
    ih = _angles(u_count, np.arange(ho), ph).T
    iw = _angles(v_count, np.arange(wo), pw)
    weight = np.full((v_count, 1), 2.0 / (ph * pw))
    weight[0] /= 2
    if pw % 2 == 0:
        weight[-1] /= 2
    ihm = np.concatenate([np.cos(ih), np.sin(ih)])
    iwm = np.concatenate([weight * np.cos(iw), -weight * np.sin(iw)])
    matrices = tuple(m.astype(dtype) for m in (a, bt, e, ihm, iwm))
    for m in matrices:
        m.setflags(write=False)   # shared by every call through the cache
    return matrices


def _complex_product(pr, pi, qr, qi, re, im):
    """(p + i q)(x + i y) from its four real products pr = p x, pi = p y, qr = q x and
    qi = q y: re = pr - qi and im = pi + qr, written into re and im."""
    np.subtract(pr, qi, out=re)
    np.add(pi, qr, out=im)


def _input_transform(x, a, bt):
    """x (N, C, H, W) -> (U, V, C, 2, N): [Xr | Xi] of every frequency."""
    n, c, h, wd = x.shape
    u_count, v_count = a.shape[0] // 2, bt.shape[0] // 2
    xt = np.ascontiguousarray(x.transpose(2, 1, 0, 3)).reshape(h, c * n * wd)
    z = (a @ xt).reshape(2 * u_count * c * n, wd)                  # along h: (2, U, C, N, W)
    p = (bt @ z.T).reshape(2, v_count, 2, u_count, c, n)           # along w: (2, V, 2, U, ..)
    xs = np.empty((u_count, v_count, c, 2, n), dtype=x.dtype)
    xr, xi = (xs[:, :, :, i].transpose(1, 0, 2, 3) for i in (0, 1))   # (V, U, C, N) views

    run_split(v_count, lambda lo, hi: _complex_product(   # (br + i bi)(zr + i zi)
        p[0, lo:hi, 0], p[0, lo:hi, 1], p[1, lo:hi, 0], p[1, lo:hi, 1], xr[lo:hi], xi[lo:hi]))
    return xs


def _inverse_transform(ys, ih, iw, b, y, relu):
    """ys (U, V, K, 2, N): [Yr | Yi] -> y (N, K, Ho, Wo), plus the bias b, ReLU when
    relu."""
    u_count, v_count, k, _, n = ys.shape
    ho, wo = ih.shape[0] // 2, iw.shape[1]
    r = (ih @ ys.reshape(u_count, v_count * k * 2 * n)).reshape(2, ho, v_count, k, 2, n)
    q = np.empty((2, v_count, ho, k, n), dtype=ys.dtype)          # along u: real, imaginary
    qr, qi = (q[i].transpose(1, 0, 2, 3) for i in (0, 1))          # (Ho, V, K, N) views

    run_split(ho, lambda lo, hi: _complex_product(        # (cos + i sin)(Yr + i Yi)
        r[0, lo:hi, ..., 0, :], r[0, lo:hi, ..., 1, :], r[1, lo:hi, ..., 0, :],
        r[1, lo:hi, ..., 1, :], qr[lo:hi], qi[lo:hi]))
    # Along v: (Ho * K * N, 2V) @ (2V, Wo), the real part taken by IW's signs.
    out = (q.reshape(2 * v_count, ho * k * n).T @ iw).reshape(ho, k, n, wo)
    src = out.transpose(2, 1, 0, 3)
    run_split(n, lambda lo, hi: add_bias_relu(src[lo:hi], b, y[lo:hi], relu))


def dft_forward(x, w, b, pad, group, relu=False):
    """Convolution at stride 1 through the DFT, ReLU applied when relu.

    x (N, C, H, W), w (K, C // group, kh, kw), b (K,) -> y (N, K, Ho, Wo),
    Ho = H + 2*pad - kh + 1 (the caller, nn/conv.py, has checked the arguments).
    """
    n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    a, bt, e, ih, iw = _matrices(h, wd, kh, kw, pad, x.dtype.name)
    u_count, v_count = a.shape[0] // 2, bt.shape[0] // 2
    f = u_count * v_count
    xs = _input_transform(x, a, bt)                                 # (U, V, C, 2, N)
    swapped = np.empty_like(xs)                                     # [-Xi | Xr]
    np.negative(xs[:, :, :, 1], out=swapped[:, :, :, 0])
    swapped[:, :, :, 1] = xs[:, :, :, 0]
    wf = (e @ w.reshape(k * cg, kh * kw).T).reshape(2, f, group, k // group, cg)
    # [Yr | Yi] = Wr [Xr | Xi] + Wi [-Xi | Xr]: per frequency and group two (K/g x C/g) @
    # (C/g x 2N) products. They are small (conv2 at batch 16: 2 x 992 of (128 x 48) @
    # (48 x 32)), too small for the BLAS library to split, so the frequencies are split
    # over the CPU threads.
    x1, x2 = (t.reshape(f, group, cg, 2 * n) for t in (xs, swapped))
    ys = np.empty((f, group, k // group, 2 * n), dtype=x.dtype)

    def products(lo, hi):
        np.matmul(wf[0, lo:hi], x1[lo:hi], out=ys[lo:hi])
        ys[lo:hi] += np.matmul(wf[1, lo:hi], x2[lo:hi])
    run_split(f, products)
    y = np.empty((n, k, h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1), dtype=x.dtype)
    _inverse_transform(ys.reshape(u_count, v_count, k, 2, n), ih, iw, b, y, relu)
    return y
