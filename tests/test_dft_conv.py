"""nn/dft_conv.py: the transform matrices on hand-checkable cases, a hand-worked
convolution, and float32 accuracy against float64. (Agreement with im2col, gradients and
the algorithm choice are in tests/test_conv.py.)"""
import numpy as np
import pytest

from nn.conv import conv_forward
from nn.dft_conv import _matrices


def test_forward_matrices_are_the_dft_of_the_padded_input():
    """A and Bt applied to an image give numpy.fft.rfft2 of the zero-padded image."""
    rng = np.random.default_rng(0)
    h, wd, pad = 5, 6, 2
    img = rng.standard_normal((h, wd))
    a, bt, *_ = _matrices(h, wd, 3, 3, pad, 'float64')
    u_count, v_count = a.shape[0] // 2, bt.shape[0] // 2
    z = (a[:u_count] + 1j * a[u_count:]) @ img                      # along h
    got = z @ (bt[:v_count] + 1j * bt[v_count:]).T                  # along w
    want = np.fft.rfft2(np.pad(img, pad))
    assert got.shape == want.shape == (h + 2 * pad, (wd + 2 * pad) // 2 + 1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width", [7, 8])   # odd and even periods (the Nyquist column)
def test_inverse_keeps_the_real_part_of_the_full_spectrum(width):
    """IH and IW applied to rfft2(y) give y back at the kept outputs (the first Ho x Wo)."""
    rng = np.random.default_rng(1)
    h, kh, kw = 6, 3, 2
    a, bt, e, ih, iw = _matrices(h, width, kh, kw, 0, 'float64')
    y = rng.standard_normal((h, width))
    spectrum = np.fft.rfft2(y)                                      # (U, V)
    ho = ih.shape[0] // 2
    v_count = iw.shape[0] // 2
    q = (ih[:ho] + 1j * ih[ho:]) @ spectrum                         # along u: (Ho, V)
    got = q.real @ iw[:v_count] + q.imag @ iw[v_count:]             # along v, real part
    np.testing.assert_allclose(got, y[:h - kh + 1, :width - kw + 1], rtol=1e-12, atol=1e-12)


def test_hand_worked_convolution():
    """A 4x4 input and a 3x3 filter of ones, pad 1: each output sums its window."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y, _ = conv_forward(x, np.ones((1, 1, 3, 3)), np.zeros(1), pad=1, algorithm='dft')
    xp = np.pad(x[0, 0], 1)
    want = [[xp[i:i + 3, j:j + 3].sum() for j in range(4)] for i in range(4)]
    np.testing.assert_allclose(y[0, 0], want, rtol=1e-13, atol=1e-12)
    assert y[0, 0, 0, 0] == pytest.approx(0 + 1 + 4 + 5)


@pytest.mark.parametrize("shape", [
    (9, 96, 27, 27, 40, 5, 2, 2),    # conv2's geometry (fewer filters), a batch of 9
    (1, 12, 10, 13, 8, 4, 0, 1),     # even kernel, no padding, non-square, one image
])
def test_float32_error_is_that_of_float32(shape):
    """Float32 through the DFT stays within a few float32 ulps of float64's result, like
    im2col (relative to the largest output; measured about 3e-7)."""
    n, c, h, wid, k, ksize, pad, group = shape
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, c, h, wid))
    w = rng.standard_normal((k, c // group, ksize, ksize))
    b = rng.standard_normal(k)
    want, _ = conv_forward(x, w, b, pad=pad, group=group, algorithm='im2col')
    got, _ = conv_forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32),
                          pad=pad, group=group, algorithm='dft')
    assert got.dtype == np.float32
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error < 2e-6
