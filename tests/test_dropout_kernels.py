"""kernels/dropout.cu against nn/dropout.py: masks and outputs must be BIT-identical
(same counter hash, same threshold, same float32 scale, same single multiply)."""
import numpy as np
import pytest

from nn import reference as ref
from nn.dropout import hash32, keep_threshold
from kernels import dropout, launch_utils
from tests.kernel_testing import to_host


def assert_bits_equal(got, want):
    """Identical float32 bit patterns (stricter than ==, which ignores the sign of 0)."""
    got = to_host(got)
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def check_dropout(runner, shape, ratio, seed):
    """Train-mode forward and backward against the reference, bit for bit, plus the mask
    itself (x and dy have no zeros, so y != 0 exactly where an element is kept)."""
    rng = np.random.default_rng(seed % 1000)
    x = (rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32) + np.float32(3.0)
    y_ref, cache_ref = ref.dropout_forward(x, ratio, seed)
    dx_ref = ref.dropout_backward(dy, cache_ref)
    y, cache = dropout.dropout_forward(runner, runner.xp.asarray(x), ratio, seed)
    dx = dropout.dropout_backward(runner, runner.xp.asarray(dy), cache)
    assert_bits_equal(y, y_ref)
    assert_bits_equal(dx, dx_ref)
    keep = hash32(seed, np.arange(x.size, dtype=np.uint32)).reshape(shape) > \
        keep_threshold(ratio)
    np.testing.assert_array_equal(to_host(y) != 0, keep)
    return keep


@pytest.mark.parametrize("shape,ratio,seed", [
    ((3, 37), 0.5, 1),
    ((1, 4097), 0.5, 2 ** 32 - 1),        # largest seed: seed * constant wraps
    ((5, 3, 7), 0.1, 12345),
    ((2, 201), 0.9, 7),
    ((1, 1), 0.0, 3),
])
def test_dropout_matches_reference_bitwise(emu, shape, ratio, seed):
    keep = check_dropout(emu, shape, ratio, seed)
    if keep.size > 1000:
        assert abs(keep.mean() - (1 - ratio)) < 0.05


def test_dropout_hash_equal_to_the_threshold_is_dropped(emu):
    # the kernel's keep rule is a strict >, like the reference's: the element whose hash
    # is exactly the threshold is dropped
    from tests.test_dropout import ratio_at_a_hash
    rng = np.random.default_rng()
    seed = int(rng.integers(2 ** 32))
    index, ratio = ratio_at_a_hash(seed, 3 * 37, rng)
    y, _ = dropout.dropout_forward(emu, np.ones((3, 37), np.float32), ratio, seed)
    assert to_host(y).ravel()[index] == 0, f"seed {seed}, index {index}, ratio {ratio!r}"
    check_dropout(emu, (3, 37), ratio, seed)


def test_dropout_grid_stride_loop(emu, monkeypatch):
    monkeypatch.setattr(launch_utils, "MAX_BLOCKS", 1)
    check_dropout(emu, (3, 301), 0.5, 99)


def test_dropout_seed_changes_mask(emu):
    x = np.ones((1, 513), dtype=np.float32)
    y1, _ = dropout.dropout_forward(emu, x, 0.5, 1)
    y2, _ = dropout.dropout_forward(emu, x, 0.5, 2)
    assert (to_host(y1) != to_host(y2)).sum() > 100


def test_dropout_test_mode_is_identity(emu):
    x = np.arange(1, 8, dtype=np.float32)
    y, cache = dropout.dropout_forward(emu, x, 0.5, 1, train=False)
    assert y is x and cache is None
    dy = np.arange(2, 9, dtype=np.float32)
    assert dropout.dropout_backward(emu, dy, cache) is dy


def test_dropout_bad_inputs(emu):
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"dropout: x must be a C-contiguous float32"):
        dropout.dropout_forward(emu, x.astype(np.float64), 0.5, 1)
    with pytest.raises(ValueError, match="dropout: ratio"):
        dropout.dropout_forward(emu, x, 1.0, 1)
    with pytest.raises(ValueError, match="dropout: seed"):
        dropout.dropout_forward(emu, x, 0.5, 2 ** 32)
    _, cache = dropout.dropout_forward(emu, x, 0.5, 1)
    with pytest.raises(ValueError, match=r"dropout_backward: dy .*\(2, 3\)"):
        dropout.dropout_backward(emu, np.ones((3, 2), dtype=np.float32), cache)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])
def test_dropout_gpu_caffenet_shapes(cuda, batch):
    """fc6 and fc7 outputs (N, 4096), CaffeNet's dropout ratio 0.5."""
    for seed in (0, 2 ** 31 + 5):
        check_dropout(cuda, (batch, 4096), 0.5, seed)
