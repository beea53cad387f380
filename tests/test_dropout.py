"""nn/dropout.py: the hash against plain Python integers, keep fraction, scaling, test
mode, gradient."""
import numpy as np
import pytest

from nn.dropout import dropout_backward, dropout_forward, hash32, keep_threshold
from tests.gradcheck import check_layer

M = 0xFFFFFFFF


def python_hash(seed, i):
    """docs/design.md's formula on unbounded Python ints, masked to 32 bits at each step."""
    h = (i * 0x9E3779B1 + seed * 0x85EBCA77) & M
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M
    h ^= h >> 16
    return h


@pytest.mark.parametrize("seed", [0, 1, 12345, 2 ** 31 + 7, 2 ** 32 - 1])
def test_hash_matches_python_integers(seed):
    idx = np.array([0, 1, 2, 3, 1000, 65535, 2 ** 24 + 5, 2 ** 31, 2 ** 32 - 1],
                   dtype=np.uint32)
    h = hash32(seed, idx)
    assert h.dtype == np.uint32
    assert [int(v) for v in h] == [python_hash(seed, int(i)) for i in idx]


def test_threshold():
    assert keep_threshold(0.5) == 2147483647
    assert keep_threshold(0.0) == 0
    assert keep_threshold(0.25) == int(np.floor(0.25 * 4294967295.0))


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.9])
def test_keep_fraction_and_scaling(ratio):
    rng = np.random.default_rng(14)
    x = rng.uniform(0.5, 1.5, size=(7, 3001)).astype(np.float32)  # no zeros
    y, _ = dropout_forward(x, ratio, seed=42)
    kept = y != 0
    p = 1 - ratio
    # binomial standard deviation of the kept fraction, 5 sigma
    assert abs(kept.mean() - p) < 5 * np.sqrt(p * (1 - p) / x.size)
    np.testing.assert_array_equal(y[kept], x[kept] * np.float32(1 / (1 - ratio)))
    # exactly the hash's choice, element by element (flat C-order index)
    expected = hash32(42, np.arange(x.size, dtype=np.uint32)) > keep_threshold(ratio)
    np.testing.assert_array_equal(kept.ravel(), expected)


def ratio_at_a_hash(seed, n, rng):
    """(index, ratio): an element index i < n and a ratio whose keep threshold is exactly
    hash32(seed, i), with the ratio kept in [0.2, 0.8] so both outcomes are common."""
    hashes = hash32(seed, np.arange(n, dtype=np.uint32))
    candidates = np.flatnonzero((hashes > 0.2 * M) & (hashes < 0.8 * M))
    index = int(rng.choice(candidates))
    h = int(hashes[index])
    ratio = (h + 0.5) / 4294967295.0     # floor(ratio * 4294967295.0) == h
    assert int(keep_threshold(ratio)) == h
    return index, ratio


def test_hash_equal_to_the_threshold_is_dropped():
    # Caffe keeps an element when its random uint32 is strictly greater than the threshold
    rng = np.random.default_rng()
    seed = int(rng.integers(2 ** 32))
    x = rng.uniform(0.5, 1.5, size=(3, 41)).astype(np.float32)   # no zeros
    index, ratio = ratio_at_a_hash(seed, x.size, rng)
    y, _ = dropout_forward(x, ratio, seed)
    assert y.ravel()[index] == 0, f"seed {seed}, index {index}, ratio {ratio!r}"
    expected = hash32(seed, np.arange(x.size, dtype=np.uint32)) > keep_threshold(ratio)
    np.testing.assert_array_equal(y.ravel() != 0, expected)


def test_seed_determinism_and_test_mode():
    x = np.random.default_rng(15).uniform(1, 2, size=(4, 5, 3, 3))
    a, _ = dropout_forward(x, 0.5, seed=3)
    b, _ = dropout_forward(x, 0.5, seed=3)
    c, _ = dropout_forward(x, 0.5, seed=4)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    y, cache = dropout_forward(x, 0.5, seed=3, train=False)
    np.testing.assert_array_equal(y, x)
    dy = np.ones_like(x)
    np.testing.assert_array_equal(dropout_backward(dy, cache), dy)


def test_backward_uses_the_same_mask():
    rng = np.random.default_rng(16)
    x = rng.uniform(1, 2, size=(3, 17))
    y, cache = dropout_forward(x, 0.4, seed=9)
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(dropout_backward(dy, cache), dy * y / x, rtol=1e-15)
    check_layer(dropout_forward, dropout_backward, (x,), dict(ratio=0.4, seed=9))


@pytest.mark.parametrize("kw, match", [
    (dict(ratio=1.0, seed=0), r"drop6: ratio must be a finite number in \[0.0, 1.0\)"),
    (dict(ratio=-0.1, seed=0), r"drop6: ratio must be"),
    (dict(ratio=0.5, seed=-1), r"drop6: seed must be an integer >= 0"),
    (dict(ratio=0.5, seed=2 ** 32), r"drop6: seed must be < 2\*\*32"),
])
def test_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        dropout_forward(np.ones((2, 3), np.float32), layer="drop6", **kw)
    with pytest.raises(ValueError, match="drop6: x must be a float32 or float64"):
        dropout_forward(np.ones((2, 3), np.int32), 0.5, 0, layer="drop6")
