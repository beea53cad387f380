"""The gradient checker itself must catch wrong gradients."""
import numpy as np
import pytest

from nn.relu import relu_forward
from tests.gradcheck import check_gradients, check_layer


def test_detects_a_wrong_layer_gradient():
    x = np.random.default_rng(20).uniform(0.5, 1.5, size=(3, 4))
    check_layer(relu_forward, lambda dy, y: dy * (y > 0), (x,))   # right: passes
    with pytest.raises(AssertionError, match="gradient of input 0"):
        check_layer(relu_forward, lambda dy, y: dy * 1.001, (x,))


def test_detects_a_wrong_gradient_of_a_callable_with_sampling():
    rng = np.random.default_rng(21)
    a = rng.standard_normal((40, 30))

    def f():
        return float(np.sum(np.sin(a)))

    check_gradients(f, {"a": a}, {"a": np.cos(a)}, max_checks=50)
    wrong = np.cos(a)
    wrong[wrong.size // 2 // 30, :] += 1e-3   # one wrong row: sampling must still see it
    with pytest.raises(AssertionError, match="gradient of a"):
        check_gradients(f, {"a": a}, {"a": wrong}, max_checks=300)


def test_requires_float64():
    with pytest.raises(ValueError, match="float64"):
        check_gradients(lambda: 0.0, {"a": np.ones(3, np.float32)}, {"a": np.ones(3)})
