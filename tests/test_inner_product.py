"""nn/inner_product.py against explicit sums and float64 finite differences."""
import numpy as np
import pytest

from nn.inner_product import ROW_BLOCK, inner_product_backward, inner_product_forward
from tests.gradcheck import check_layer


def make(rng, x_shape, o, dtype=np.float64):
    d = int(np.prod(x_shape[1:]))
    return (rng.standard_normal(x_shape).astype(dtype),
            rng.standard_normal((o, d)).astype(dtype), rng.standard_normal(o).astype(dtype))


@pytest.mark.parametrize("x_shape", [(3, 7), (2, 3, 5, 3), (1, 6)])   # (1, 6): one image, unsplit
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_explicit_sum(x_shape, dtype):
    rng = np.random.default_rng(12)
    x, w, b = make(rng, x_shape, 5, dtype)
    y, _ = inner_product_forward(x, w, b)
    assert y.shape == (x_shape[0], 5) and y.dtype == dtype
    xf = x.reshape(x_shape[0], -1).astype(np.float64)
    expected = np.array([[sum(xf[n, d] * w[o, d] for d in range(w.shape[1])) + b[o]
                          for o in range(5)] for n in range(x_shape[0])])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
    yr, _ = inner_product_forward(x, w, b, relu=True)
    np.testing.assert_array_equal(yr, np.maximum(y, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_fills_a_partial_last_row_block(dtype):
    # the forward splits W's rows over threads in blocks of ROW_BLOCK: O = 2 blocks + 5
    # rows leaves a partial last block, which must be computed too (batch > 1: split)
    rng = np.random.default_rng()
    o = 2 * ROW_BLOCK + 5
    x, w, b = make(rng, (4, 2, 3, 3), o, dtype)
    y, _ = inner_product_forward(x, w, b)
    assert y.shape == (4, o) and y.dtype == dtype
    expected = x.reshape(4, -1).astype(np.float64) @ w.T.astype(np.float64) + b
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


def test_hand_worked():
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    w = np.array([[1.0, 1.0], [2.0, -1.0], [0.0, 1.0]])
    b = np.array([0.5, 0.0, -3.0])
    y, cache = inner_product_forward(x, w, b, relu=True)
    np.testing.assert_array_equal(y, [[3.5, 0.0, 0.0], [2.5, 7.0, 0.0]])
    dx, dw, db = inner_product_backward(np.ones((2, 3)), cache)
    # rows of w whose output is active: sample 0 -> row 0; sample 1 -> rows 0 and 1
    np.testing.assert_array_equal(dx, [[1.0, 1.0], [3.0, 0.0]])
    np.testing.assert_array_equal(dw, [[4.0, 1.0], [3.0, -1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(db, [2.0, 1.0, 0.0])


@pytest.mark.parametrize("x_shape", [(3, 7), (2, 3, 5, 3), (1, 6)])   # (1, 6): one image, unsplit
@pytest.mark.parametrize("relu", [False, True])
def test_gradients(x_shape, relu):
    rng = np.random.default_rng(13)
    x, w, b = make(rng, x_shape, 5)
    if relu:
        pre, _ = inner_product_forward(x, w, b)
        assert np.abs(pre).min() > 1e-3 and (pre > 0).any() and (pre < 0).any()
    dx, _, _ = check_layer(inner_product_forward, inner_product_backward, (x, w, b),
                           dict(relu=relu), names=["x", "w", "b"])
    assert dx.shape == x_shape


def test_bad_input():
    x = np.ones((2, 3, 4), np.float32)
    w = np.ones((5, 11), np.float32)
    with pytest.raises(ValueError, match=r"fc6: x must have D = 11 .*got \(2, 3, 4\)"):
        inner_product_forward(x, w, np.ones(5, np.float32), layer="fc6")
    with pytest.raises(ValueError, match=r"fc6: b must have shape \(5,\)"):
        inner_product_forward(np.ones((2, 11), np.float32), w, np.ones(4, np.float32),
                              layer="fc6")
    with pytest.raises(ValueError, match=r"fc: x must be .*\(N, D\)"):
        inner_product_forward(np.ones(11, np.float32), w, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="fc: b has dtype float64 but x has float32"):
        inner_product_forward(np.ones((2, 11), np.float32), w, np.ones(5))
    _, cache = inner_product_forward(np.ones((2, 11), np.float32), w, np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 5\)"):
        inner_product_backward(np.ones((2, 4), np.float32), cache)
