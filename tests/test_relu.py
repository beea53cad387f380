"""nn/relu.py: values, gradient, errors."""
import numpy as np
import pytest

from nn.relu import relu_backward, relu_forward
from tests.gradcheck import check_layer


def away_from_zero(rng, shape):
    """Random values with |x| >= 0.1, so finite differences never cross the kink."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + 0.1, x - 0.1)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 5, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_backward_values(shape, dtype):
    rng = np.random.default_rng(10)
    x = away_from_zero(rng, shape).astype(dtype)
    y, cache = relu_forward(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0))
    dy = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(relu_backward(dy, cache), np.where(x > 0, dy, 0))


def test_hand_worked():
    y, cache = relu_forward(np.array([[-2.0, 0.0, 3.0]]))
    np.testing.assert_array_equal(y, [[0.0, 0.0, 3.0]])
    np.testing.assert_array_equal(relu_backward(np.array([[5.0, 6.0, 7.0]]), cache),
                                  [[0.0, 0.0, 7.0]])   # Caffe: gradient 0 at x == 0


def test_gradients():
    rng = np.random.default_rng(11)
    check_layer(relu_forward, relu_backward, (away_from_zero(rng, (2, 3, 5, 3)),))


def test_bad_input():
    with pytest.raises(ValueError, match="relu6: x must be a float32 or float64 array"):
        relu_forward(np.ones(3, dtype=np.int32), layer="relu6")
    _, cache = relu_forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3\)"):
        relu_backward(np.ones((3, 2)), cache)
