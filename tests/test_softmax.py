"""nn/softmax.py: softmax, SoftmaxWithLoss (hand-worked, FLT_MIN clamp, gradient), accuracy."""
import math

import numpy as np
import pytest

from nn.softmax import accuracy, softmax, softmax_loss_backward, softmax_loss_forward
from tests.gradcheck import check_gradients


@pytest.mark.parametrize("shape", [(3, 5), (2, 7, 3, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_matches_definition(shape, dtype):
    rng = np.random.default_rng(17)
    s = (rng.standard_normal(shape) * 3).astype(dtype)
    e = np.exp(s.astype(np.float64))
    expected = e / e.sum(axis=1, keepdims=True)
    p = softmax(s)
    assert p.dtype == dtype and p.shape == shape
    np.testing.assert_allclose(p, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    # huge scores: exp(1000) overflows even in float64 unless the maximum is subtracted
    big = s + dtype(1000)
    e = np.exp(big.astype(np.float64) - 1000.0)
    np.testing.assert_allclose(softmax(big), e / e.sum(axis=1, keepdims=True),
                               rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_loss_hand_worked():
    scores = np.array([[0.0, math.log(3.0)], [math.log(4.0), 0.0]])
    loss, cache = softmax_loss_forward(scores, np.array([1, 1]))
    # p = (1/4, 3/4) and (4/5, 1/5)
    assert isinstance(loss, float)
    assert loss == pytest.approx(-(math.log(0.75) + math.log(0.2)) / 2, rel=1e-14)
    d = softmax_loss_backward(cache, loss_weight=2.0)
    np.testing.assert_allclose(d, np.array([[0.25, -0.25], [0.8, -0.8]]) * 2.0 / 2, rtol=1e-14)


def test_loss_clamps_at_flt_min():
    scores = np.array([[0.0, -1000.0]], dtype=np.float32)   # p_label underflows to 0
    loss, _ = softmax_loss_forward(scores, np.array([1]))
    assert loss == pytest.approx(-math.log(np.finfo(np.float32).tiny), rel=1e-6)  # 87.3365


@pytest.mark.parametrize("loss_weight", [1.0, 0.3])
def test_loss_gradient(loss_weight):
    rng = np.random.default_rng(18)
    scores = rng.standard_normal((5, 7)) * 2
    labels = rng.integers(0, 7, size=5)
    _, cache = softmax_loss_forward(scores, labels)
    check_gradients(lambda: loss_weight * softmax_loss_forward(scores, labels)[0],
                    {"scores": scores}, {"scores": softmax_loss_backward(cache, loss_weight)})


def test_accuracy_ties_to_lowest_index():
    scores = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [0.0, 1.0, 5.0], [4.0, 1.0, 0.0]])
    assert accuracy(scores, np.array([1, 0, 2, 1])) == 0.75
    assert accuracy(scores, np.array([2, 1, 2, 0])) == 0.5


@pytest.mark.parametrize("scores, labels, match", [
    (np.zeros((3, 4)), np.array([0, 4, 1]), r"softmax_loss: labels must lie in \[0, 4\)"),
    (np.zeros((3, 4)), np.array([0, -1, 1]), r"softmax_loss: labels must lie in \[0, 4\)"),
    (np.zeros((3, 4)), np.array([0.0, 1.0, 1.0]), r"labels must be an integer array of "
                                                  r"shape \(3,\)"),
    (np.zeros((3, 4)), np.array([0, 1]), r"labels must have shape \(3,\)"),
    (np.zeros((3, 4, 1, 1)), np.array([0, 1, 1]), r"scores must be .*\(N, C\)"),
])
def test_bad_input(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        softmax_loss_forward(scores, labels)
    with pytest.raises(ValueError, match=r"softmax: scores must have shape \(N, C\) or"):
        softmax(np.zeros((2, 3, 4)))


def _softmax_definition(s):
    """float64 softmax over axis 1, each position shifted by its own maximum."""
    s = s.astype(np.float64)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_softmax_subtracts_each_rows_maximum():
    # rows far apart: subtracting one global maximum would underflow the low row to 0/0
    rng = np.random.default_rng(19)
    s = np.array([[0, 1, 2], [1000, 1001, 1002]], dtype=np.float32)
    s += rng.standard_normal(s.shape).astype(np.float32) * 0.1
    p = softmax(s)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p, _softmax_definition(s), rtol=1e-5)
    # 4-D: the maximum over C differs by spatial position (and by sample)
    s4 = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    s4 += np.array([[0.0, 900.0], [-900.0, 400.0]], dtype=np.float32)
    s4[1] += np.float32(-500.0)
    p4 = softmax(s4)
    assert np.isfinite(p4).all()
    np.testing.assert_allclose(p4.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p4, _softmax_definition(s4), rtol=1e-5)
    # the loss on such rows is finite and matches -mean(log p_label)
    labels = np.array([0, 2])
    loss, _ = softmax_loss_forward(s, labels)
    expected = -np.mean(np.log(_softmax_definition(s)[np.arange(2), labels]))
    assert math.isfinite(loss)
    assert loss == pytest.approx(expected, rel=1e-5)
