"""nn/pool.py against Caffe's loop (clipped windows, strict '>'), hand-worked cases and
float64 finite differences."""
import numpy as np
import pytest

from nn.pool import max_pool_backward, max_pool_forward, pool_output_size
from tests.gradcheck import check_layer


def caffe_pool(x, kernel, stride, pad):
    """Caffe's CPU MAX pooling written as its loops: returns (y, argmax). The running
    maximum starts at -FLT_MAX with no position (-1), as in Caffe's pooling_layer.cpp."""
    n, c, h, w = x.shape
    ho, wo = pool_output_size(h, kernel, stride, pad), pool_output_size(w, kernel, stride, pad)
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    arg = np.empty((n, c, ho, wo), dtype=np.int64)
    for a in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    hs, ws = i * stride - pad, j * stride - pad
                    he, we = min(hs + kernel, h), min(ws + kernel, w)
                    hs, ws = max(hs, 0), max(ws, 0)
                    best, idx = -np.finfo(np.float32).max, -1
                    for r in range(hs, he):
                        for s in range(ws, we):
                            if x[a, ch, r, s] > best:
                                best, idx = x[a, ch, r, s], r * w + s
                    y[a, ch, i, j], arg[a, ch, i, j] = best, idx
    return y, arg


def scatter_backward(dy, arg, x_shape):
    """Route each dy to its argmax, accumulating (np.add.at); argmax -1 (a window with
    nothing above -FLT_MAX) routes nowhere, as in Caffe's GPU backward."""
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h * w))
    planes = np.arange(n * c).reshape(n, c, 1, 1)
    found = (arg >= 0).reshape(-1)
    np.add.at(dx.reshape(-1), (planes * h * w + arg).reshape(-1)[found], dy.reshape(-1)[found])
    return dx.reshape(x_shape)


def distinct(rng, shape):
    """Values spaced >= 0.01 apart (a random permutation), so no ties and no near-ties."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 1.0)


def test_output_size_rules():
    assert pool_output_size(6, 3, 2, 0) == 3    # ceil(3/2)+1: last window clipped
    assert pool_output_size(55, 3, 2, 0) == 27  # CaffeNet pool1
    assert pool_output_size(13, 3, 2, 0) == 6   # CaffeNet pool5
    assert pool_output_size(5, 2, 2, 1) == 3    # ceil gives 4, the pad>0 correction drops it
    assert pool_output_size(6, 3, 2, 1) == 4    # no correction: last window starts in image


def test_hand_worked_ceil_clipping():
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    y, cache = max_pool_forward(x, 3, 2)
    # windows rows/cols [0,3), [2,5), [4,6) (clipped): the max is each window's last element
    np.testing.assert_array_equal(y[0, 0], [[14, 16, 17], [26, 28, 29], [32, 34, 35]])
    np.testing.assert_array_equal(cache['argmax'][0, 0], y[0, 0])


def test_hand_worked_padding_is_never_the_max():
    # All values negative: zero padding would win if it were a candidate.
    x = -np.arange(1, 17, dtype=np.float64).reshape(1, 1, 4, 4)
    y, cache = max_pool_forward(x, 3, 2, pad=1)
    # window starts -1, 1, 3 clipped to [0,2), [1,4), [3,4): max at its top-left element
    starts = np.array([0, 1, 3])
    expected_arg = starts[:, None] * 4 + starts[None, :]
    np.testing.assert_array_equal(cache['argmax'][0, 0], expected_arg)
    np.testing.assert_array_equal(y[0, 0], -(expected_arg + 1.0))


def test_ties_go_to_first_in_row_major_order():
    x = np.zeros((1, 1, 3, 4), dtype=np.float32)
    x[0, 0] = [[1, 5, 2, 5],
               [5, 0, 5, 3],
               [2, 2, 2, 2]]
    y, cache = max_pool_forward(x, 2, 1)
    np.testing.assert_array_equal(y[0, 0], [[5, 5, 5], [5, 5, 5]])
    # window (0,0): 5 at (0,1) before (1,0); (0,1): (0,1) before (1,2); (0,2): (0,3) vs (1,2)
    # -> (0,3) first in row-major order; row 1 windows: (1,0), (1,2), (1,2)
    np.testing.assert_array_equal(cache['argmax'][0, 0], [[1, 1, 3], [4, 6, 6]])
    # all equal: the first element of each clipped window (starts 0, 1, 3 as above)
    _, cache = max_pool_forward(np.ones((1, 1, 4, 4)), 3, 2, pad=1)
    np.testing.assert_array_equal(cache['argmax'][0, 0], [[0, 1, 3], [4, 5, 7], [12, 13, 15]])


def test_hand_worked_window_outside_the_image():
    # H = W = 3, kernel 2, stride 3: Ho = ceil(1/3) + 1 = 2, and the second window starts
    # at row/column 3, wholly outside the image. Caffe: -FLT_MAX, argmax -1, no gradient.
    lowest = -np.finfo(np.float32).max
    for dtype in (np.float32, np.float64):
        x = np.arange(1, 10, dtype=dtype).reshape(1, 1, 3, 3)
        y, cache = max_pool_forward(x, 2, 3)
        assert y.dtype == dtype
        np.testing.assert_array_equal(y[0, 0], [[5, lowest], [lowest, lowest]])
        np.testing.assert_array_equal(cache['argmax'][0, 0], [[4, -1], [-1, -1]])
        dx = max_pool_backward(np.array([[[[1, 2], [3, 4]]]], dtype=dtype), cache)
        expected = np.zeros((1, 1, 3, 3))
        expected[0, 0, 1, 1] = 1
        np.testing.assert_array_equal(dx, expected)


def test_hand_worked_nothing_above_lowest_and_nan():
    # Caffe replaces its -FLT_MAX start only on a strict '>': a window of -inf (or of
    # -FLT_MAX itself) keeps -FLT_MAX and argmax -1; NaN is never '>' and never wins.
    lowest = -np.finfo(np.float32).max
    x = np.array([[-np.inf, lowest, 2.0, np.nan],
                  [-np.inf, -np.inf, np.nan, 1.0]], dtype=np.float32).reshape(1, 1, 2, 4)
    y, cache = max_pool_forward(x, 2, 2)
    np.testing.assert_array_equal(y[0, 0], [[lowest, 2.0]])
    np.testing.assert_array_equal(cache['argmax'][0, 0], [[-1, 2]])
    np.testing.assert_array_equal(max_pool_forward(x, 2, 2, need_argmax=False)[0], y)
    dx = max_pool_backward(np.array([[[[5.0, 7.0]]]], np.float32), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 7, 0], [0, 0, 0, 0]])
    ey, earg = caffe_pool(x, 2, 2, 0)
    np.testing.assert_array_equal(y, ey)
    np.testing.assert_array_equal(cache['argmax'], earg)


def test_backward_accumulates_overlapping_windows():
    # The centre of a 5x5 plane lies in all four 3x3/stride-2 windows.
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 1.0
    _, cache = max_pool_forward(x, 3, 2)
    dy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    dx = max_pool_backward(dy, cache)
    expected = np.zeros((1, 1, 5, 5))
    expected[0, 0, 2, 2] = 10.0
    np.testing.assert_array_equal(dx, expected)


CASES = [(2, 3, 7, 9, 3, 2, 0), (1, 2, 8, 7, 3, 2, 1), (2, 2, 9, 9, 2, 2, 1),
         (1, 3, 6, 6, 3, 2, 0), (2, 1, 5, 11, 4, 3, 2), (1, 2, 7, 7, 3, 1, 1)]
# stride > kernel: the last window row/column lies wholly outside the image (its -FLT_MAX
# outputs would swamp a finite-difference objective, so these are for the exact checks).
OUTSIDE_CASES = [(5, 2, 6, 9, 2, 3, 0), (3, 2, 7, 8, 2, 4, 0)]


@pytest.mark.parametrize("n, c, h, w, kernel, stride, pad", CASES + OUTSIDE_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_caffe_loops(n, c, h, w, kernel, stride, pad, dtype):
    rng = np.random.default_rng(5)
    # integer-valued data in a small range: many ties, exercising the first-max rule
    x = rng.integers(-3, 4, size=(n, c, h, w)).astype(dtype)
    y, cache = max_pool_forward(x, kernel, stride, pad)
    ey, earg = caffe_pool(x, kernel, stride, pad)
    np.testing.assert_array_equal(y, ey)
    np.testing.assert_array_equal(cache['argmax'], earg)
    y_only, no_cache = max_pool_forward(x, kernel, stride, pad, need_argmax=False)
    np.testing.assert_array_equal(y_only, ey)
    assert no_cache is None
    assert ((earg == -1).any()) == ((n, c, h, w, kernel, stride, pad) in OUTSIDE_CASES)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(max_pool_backward(dy, cache),
                               scatter_backward(dy, earg, x.shape), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n, c, h, w, kernel, stride, pad", CASES)
def test_gradients(n, c, h, w, kernel, stride, pad):
    rng = np.random.default_rng(6)
    x = distinct(rng, (n, c, h, w))
    check_layer(max_pool_forward, max_pool_backward, (x,),
                dict(kernel=kernel, stride=stride, pad=pad))


@pytest.mark.parametrize("shape, kw, match", [
    ((2, 3, 5), dict(kernel=3, stride=2), r"pool2: x must be .*\(N, C, H, W\)"),
    ((1, 1, 2, 2), dict(kernel=3, stride=1), r"pool2: kernel 3 does not fit"),
    ((1, 1, 5, 5), dict(kernel=3, stride=2, pad=3), r"pool2: pad = 3 must be smaller"),
    ((1, 1, 5, 5), dict(kernel=3, stride=0), r"pool2: stride must be an integer >= 1"),
])
def test_bad_input(shape, kw, match):
    with pytest.raises(ValueError, match=match):
        max_pool_forward(np.ones(shape, np.float32), layer="pool2", **kw)
    _, cache = max_pool_forward(np.ones((1, 2, 5, 5)), 3, 2)
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 2, 2, 2\)"):
        max_pool_backward(np.ones((1, 2, 2, 3)), cache)
    _, cache = max_pool_forward(np.ones((1, 2, 5, 5)), 3, 2, need_argmax=False)
    with pytest.raises(ValueError, match="max_pool_backward: the forward ran with "
                                         "need_argmax=False"):
        max_pool_backward(np.ones((1, 2, 2, 2)), cache)
