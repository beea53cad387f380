"""nn/lrn.py against a per-channel loop of Caffe's formula, hand-worked values and float64
finite differences with a large alpha."""
import numpy as np
import pytest

from nn.lrn import lrn_backward, lrn_forward
from tests.gradcheck import check_layer


def loop_lrn(x, local_size, alpha, beta, k):
    """Caffe's definition, one channel at a time with an explicitly clipped window."""
    c = x.shape[1]
    half = (local_size - 1) // 2
    y = np.empty_like(x, dtype=np.float64)
    for ch in range(c):
        lo, hi = max(0, ch - half), min(c, ch + half + 1)
        scale = k + alpha / local_size * (x[:, lo:hi].astype(np.float64) ** 2).sum(axis=1)
        y[:, ch] = x[:, ch] * scale ** -beta
    return y


def test_hand_worked():
    # One pixel, C = 3, local_size 3, alpha 3 (alpha/n = 1), beta 1, k 1, x = (1, 2, 3):
    # scale = (1 + 1 + 4, 1 + 1 + 4 + 9, 1 + 4 + 9) = (6, 15, 14)
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    y, _ = lrn_forward(x, local_size=3, alpha=3.0, beta=1.0, k=1.0)
    np.testing.assert_allclose(y.ravel(), [1 / 6, 2 / 15, 3 / 14], rtol=1e-15)
    y, _ = lrn_forward(x, local_size=3, alpha=3.0, beta=0.5, k=1.0)
    np.testing.assert_allclose(y.ravel(), [1 / 6 ** .5, 2 / 15 ** .5, 3 / 14 ** .5], rtol=1e-15)


@pytest.mark.parametrize("shape, local_size", [((2, 7, 5, 3), 5), ((1, 3, 4, 5), 5),
                                               ((2, 9, 3, 3), 3), ((1, 2, 3, 2), 7),
                                               ((1, 5, 2, 3), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_loop(shape, local_size, dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    for alpha, beta, k in [(1e-4, 0.75, 1.0), (0.8, 0.75, 0.5), (0.5, 1.3, 2.0)]:
        y, _ = lrn_forward(x, local_size, alpha, beta, k)
        assert y.dtype == dtype
        tol = 2e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(y, loop_lrn(x, local_size, alpha, beta, k), rtol=tol,
                                   atol=tol)


@pytest.mark.parametrize("shape, local_size, alpha, beta, k", [
    ((2, 7, 3, 5), 5, 0.9, 0.75, 0.5),
    ((1, 6, 3, 3), 3, 1.0, 0.75, 1.0),
    ((2, 3, 2, 3), 5, 0.5, 1.5, 0.3),     # window wider than the channel count
    ((1, 9, 2, 2), 7, 0.7, 0.6, 0.2),
])
def test_gradients_large_alpha(shape, local_size, alpha, beta, k):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape) * 1.5
    check_layer(lrn_forward, lrn_backward, (x,),
                dict(local_size=local_size, alpha=alpha, beta=beta, k=k))


def test_caffenet_parameters_float32_backward():
    rng = np.random.default_rng(9)
    x64 = rng.standard_normal((2, 11, 3, 4)) * 20
    dy = rng.standard_normal(x64.shape)
    dx64 = lrn_backward(dy, lrn_forward(x64)[1])
    dx32 = lrn_backward(dy.astype(np.float32), lrn_forward(x64.astype(np.float32))[1])
    assert dx32.dtype == np.float32
    np.testing.assert_allclose(dx32, dx64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x, kw, match", [
    (np.ones((3, 5, 5), np.float32), {}, r"norm1: x must be .*\(N, C, H, W\)"),
    (np.ones((1, 5, 2, 2), np.float32), dict(local_size=4), r"norm1: local_size must be odd"),
    (np.ones((1, 5, 2, 2), np.float32), dict(k=0.0), r"norm1: k must be > 0"),
    (np.ones((1, 5, 2, 2), np.int64), {}, r"norm1: x must be a float32 or float64"),
])
def test_bad_input(x, kw, match):
    with pytest.raises(ValueError, match=match):
        lrn_forward(x, layer="norm1", **kw)
    with pytest.raises(ValueError, match=r"lrn_backward: dy must have shape \(1, 3, 2, 2\)"):
        lrn_backward(np.ones((1, 3, 2, 3)), lrn_forward(np.ones((1, 3, 2, 2)))[1])
