"""nn/winograd.py: the F(2x2, 3x3) constants on a hand-checkable 1-D case, and float32
accuracy against float64. (Agreement with im2col and float64 gradient checks of the
Winograd path are in tests/test_conv.py: its 3x3 stride-1 cases run through Winograd.)"""
import numpy as np
import pytest

from nn.conv import conv_backward, conv_forward
from nn.winograd import A_T, B_T, G


def test_one_dimensional_f23_is_a_correlation():
    """F(2, 3): two outputs of a 3-tap correlation from four inputs with 4 multiplies."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, g = rng.standard_normal(4), rng.standard_normal(3)
        y = A_T @ ((G @ g) * (B_T @ d))
        expected = [d[0] * g[0] + d[1] * g[1] + d[2] * g[2],
                    d[1] * g[0] + d[2] * g[1] + d[3] * g[2]]
        np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)


def test_hand_worked_tile():
    """One 4x4 input, one 3x3 filter of ones: every output is the sum of a 3x3 window."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 3, 3))
    y, _ = conv_forward(x, w, np.zeros(1), algorithm='winograd')
    np.testing.assert_array_equal(y[0, 0], [[45, 54], [81, 90]])


@pytest.mark.parametrize("shape", [
    (2, 48, 13, 13, 64, 1, 2),    # conv4-like (smaller): groups, 13x13 with pad 1
    (1, 32, 9, 12, 40, 0, 1),     # no padding, non-square, one image
])
def test_float32_error_is_that_of_float32(shape):
    """Float32 Winograd stays within a few ulps of float64, like im2col does."""
    n, c, h, wid, k, pad, group = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, wid))
    w = rng.standard_normal((k, c // group, 3, 3))
    b = rng.standard_normal(k)
    y64, cache64 = conv_forward(x, w, b, pad=pad, group=group, algorithm='im2col')
    dy = rng.standard_normal(y64.shape)
    exact = (y64,) + conv_backward(dy, cache64)
    errors = {}
    for algorithm in ('im2col', 'winograd'):
        y, cache = conv_forward(*(a.astype(np.float32) for a in (x, w, b)), pad=pad,
                                group=group, algorithm=algorithm)
        got = (y,) + conv_backward(dy.astype(np.float32), cache)
        errors[algorithm] = [np.abs(a - e).max() / np.abs(e).max() for a, e in zip(got, exact)]
        assert all(a.dtype == np.float32 for a in got)
    for name, wino, im2col in zip(("y", "dx", "dw", "db"), errors['winograd'], errors['im2col']):
        assert wino < 2e-6, f"{name}: Winograd float32 error {wino:.1e}"
        assert wino < 4 * im2col + 1e-7, f"{name}: {wino:.1e} against im2col's {im2col:.1e}"
