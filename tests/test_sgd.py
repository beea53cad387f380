"""nn/sgd.py: Caffe's momentum SGD with weight decay on hand-computed values."""
import numpy as np
import pytest

from nn.sgd import sgd_update


def test_hand_computed_step():
    param = np.array([1.0, -2.0])
    grad = np.array([0.5, 0.25])
    history = np.array([0.1, -0.1])
    p_id, h_id = id(param), id(history)
    sgd_update(param, grad, history, lr=0.1, momentum=0.9, weight_decay=0.01, grad_scale=0.5)
    # element 0: 0.9*0.1 + 0.1*(0.5*0.5 + 0.01*1)    = 0.116,   param 1 - 0.116   = 0.884
    # element 1: 0.9*-0.1 + 0.1*(0.25*0.5 - 0.01*2)  = -0.0795, param -2 + 0.0795 = -1.9205
    np.testing.assert_allclose(history, [0.116, -0.0795], rtol=1e-14)
    np.testing.assert_allclose(param, [0.884, -1.9205], rtol=1e-14)
    np.testing.assert_array_equal(grad, [0.5, 0.25])        # grad untouched
    assert id(param) == p_id and id(history) == h_id


def test_two_steps_float32_against_float64_formula():
    rng = np.random.default_rng(19)
    p64 = rng.standard_normal((5, 3, 3))
    h64 = rng.standard_normal(p64.shape) * 0.1
    p32, h32 = p64.astype(np.float32), h64.astype(np.float32)
    for _ in range(2):
        g = rng.standard_normal(p64.shape)
        h64 = 0.9 * h64 + 0.01 * (g * 0.25 + 0.0005 * p64)
        p64 = p64 - h64
        sgd_update(p32, g.astype(np.float32), h32, 0.01, 0.9, 0.0005, grad_scale=0.25)
    assert p32.dtype == np.float32 and h32.dtype == np.float32
    np.testing.assert_allclose(h32, h64, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p32, p64, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("grad_scale, weight_decay", [(1.0, 0.0), (1.0, 0.01), (0.5, 0.0),
                                                      (0.25, 0.003)])
def test_every_shortcut_matches_the_formula_exactly(grad_scale, weight_decay):
    """grad_scale 1 and weight_decay 0 skip their multiplications; the numbers must not
    change. Over several blocks (a size that is no multiple of BLOCK, split over threads)."""
    from nn.sgd import BLOCK
    rng = np.random.default_rng(23)
    p, g, h = (rng.standard_normal(2 * BLOCK + 4097) for _ in range(3))
    expected_h = 0.9 * h + 0.02 * (g * grad_scale + weight_decay * p)
    expected_p = p - expected_h
    sgd_update(p, g, h, 0.02, 0.9, weight_decay, grad_scale=grad_scale)
    np.testing.assert_array_equal(h, expected_h)
    np.testing.assert_array_equal(p, expected_p)


def test_bad_input():
    p = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"sgd_update: grad must have shape \(3, 2\)"):
        sgd_update(p, np.ones((2, 3), np.float32), np.zeros_like(p), 0.1, 0.9, 0.0)
    with pytest.raises(ValueError, match="sgd_update: history has dtype float64"):
        sgd_update(p, np.ones_like(p), np.zeros((3, 2)), 0.1, 0.9, 0.0)
    with pytest.raises(ValueError, match="sgd_update: lr must be a number"):
        sgd_update(p, np.ones_like(p), np.zeros_like(p), "0.1", 0.9, 0.0)
