"""kernels/pool.cu against nn/pool.py: Caffe's MAX pooling, every forward version, on the
emulator under three thread orders (forward, reverse, random), and on the GPU at
CaffeNet's shapes with -m gpu.

The argmax must equal the reference's exactly, including ties (integer-valued inputs force
many), ceil-mode clipped windows and padding."""
import numpy as np
import pytest

from nn import reference as ref
from kernels import launch_utils, pool
from tests.kernel_testing import EMU_ORDERS_WITH_RANDOM, to_host

# These kernels synchronise through shared memory: the emu fixture (tests/conftest.py)
# also runs them in a random thread order to catch a missing __syncthreads.
EMU_ORDERS = EMU_ORDERS_WITH_RANDOM


def check_pool(runner, shape, kernel, stride, pad, version, ties=False, seed=0):
    """Forward (values and argmax, exact) and backward against the reference."""
    rng = np.random.default_rng(seed)
    if ties:
        x = rng.integers(-2, 3, shape).astype(np.float32)   # 5 values: ties everywhere
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    y_ref, cache_ref = ref.max_pool_forward(x, kernel, stride, pad)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref = ref.max_pool_backward(dy, cache_ref)
    y, cache = pool.max_pool_forward(runner, runner.xp.asarray(x), kernel, stride, pad,
                                     version=version)
    dx = pool.max_pool_backward(runner, runner.xp.asarray(dy), cache)
    y_only, no_cache = pool.max_pool_forward(runner, runner.xp.asarray(x), kernel, stride,
                                             pad, version=version, need_argmax=False)
    assert no_cache is None
    np.testing.assert_array_equal(to_host(y_only), y_ref)
    np.testing.assert_array_equal(to_host(y), y_ref)          # a max is exact
    np.testing.assert_array_equal(to_host(cache["argmax"]), cache_ref["argmax"])
    np.testing.assert_allclose(to_host(dx), dx_ref, rtol=1e-6, atol=1e-6)


CASES = [
    # shape, kernel, stride, pad
    ((3, 5, 13, 13), 3, 2, 0),    # CaffeNet's pool5 geometry: 13 -> 6, windows overlap
    ((1, 3, 6, 7), 3, 2, 0),      # ceil mode: 6 -> 3 with the last window clipped
    ((3, 2, 7, 9), 3, 2, 1),      # padding: first and last windows clipped
    ((1, 4, 5, 8), 2, 2, 1),      # pad correction: (Ho - 1) * stride >= H + pad drops a row
    ((2, 3, 10, 11), 2, 3, 0),    # stride > kernel: inputs that belong to no window
    ((1, 2, 19, 69), 3, 2, 0),    # Ho = 9 > 8 and Wo = 34 > 32: several v2 tiles
    ((1, 2, 8, 10), 4, 1, 3),     # large pad, stride 1
    ((2, 1, 3, 4), 5, 2, 2),      # kernel larger than the image
]


@pytest.mark.parametrize("shape,kernel,stride,pad", CASES)
@pytest.mark.parametrize("version", [1, 2])
def test_pool_matches_reference(emu, shape, kernel, stride, pad, version):
    check_pool(emu, shape, kernel, stride, pad, version)


@pytest.mark.parametrize("shape,kernel,stride,pad", CASES[:4])
@pytest.mark.parametrize("version", [1, 2])
def test_pool_ties_go_to_first_maximum(emu, shape, kernel, stride, pad, version):
    check_pool(emu, shape, kernel, stride, pad, version, ties=True, seed=5)


@pytest.mark.parametrize("shape,kernel,stride", [((2, 3, 6, 9), 2, 3), ((1, 2, 7, 8), 2, 4)])
@pytest.mark.parametrize("version", [1, 2])
def test_pool_windows_outside_image_match_reference(emu, shape, kernel, stride, version):
    """stride > kernel, pad 0: the last window row and column lie wholly outside the image;
    kernel and reference must both give -FLT_MAX, argmax -1 and no gradient there."""
    _, cache_ref = ref.max_pool_forward(np.ones(shape, np.float32), kernel, stride)
    assert (cache_ref["argmax"] == -1).any()   # the case really occurs
    check_pool(emu, shape, kernel, stride, 0, version, ties=True, seed=7)


@pytest.mark.parametrize("version", [1, 2])
def test_pool_grid_loops(emu, version, monkeypatch):
    """Grid capped at one block (v1, backward) and at 2 planes in z (v2): the kernels must
    loop over the remaining elements / planes."""
    monkeypatch.setattr(launch_utils, "MAX_BLOCKS", 1)
    monkeypatch.setattr(pool, "MAX_GRID_Z", 2)
    check_pool(emu, (3, 3, 11, 12), 3, 2, 1, version, ties=True, seed=6)


def test_pool_v2_tile_comes_from_the_launcher(emu, monkeypatch):
    """pool.py's TILE_W / TILE_H are the only statement of v2's tile (the kernel reads it
    from blockDim): another tile must give the same results."""
    monkeypatch.setattr(pool, "TILE_W", 8)
    monkeypatch.setattr(pool, "TILE_H", 4)
    check_pool(emu, (2, 3, 19, 21), 3, 2, 1, 2, ties=True, seed=8)


def test_pool_default_falls_back_to_v1_for_windows_too_big_for_shared_memory(emu):
    """A 40x40 window at stride 40: v2's patch would need 1.3 MB of shared memory, so the
    default (version=None) must pick v1, and still compute it right."""
    assert pool._v2_shared_bytes(40, 40) > pool.SHARED_LIMIT
    check_pool(emu, (1, 1, 200, 203), 40, 40, 0, None, seed=9)


def test_pool_hand_worked(emu):
    """H = W = 4, kernel 3, stride 2, no pad: Ho = ceil(1/2) + 1 = 2; the second window in
    each direction is clipped to 2 rows/columns. Ties (the 5s) go to the first in
    row-major order."""
    x = np.array([[1, 5, 2, 0],
                  [5, 3, 5, 4],
                  [0, 1, 2, 9],
                  [7, 1, 8, 3]], dtype=np.float32).reshape(1, 1, 4, 4)
    y, cache = pool.max_pool_forward(emu, x, 3, 2)
    np.testing.assert_array_equal(y[0, 0], [[5, 9], [8, 9]])
    np.testing.assert_array_equal(cache["argmax"][0, 0], [[1, 11], [14, 11]])
    dx = pool.max_pool_backward(emu, np.array([[[[1, 2], [3, 4]]]], np.float32), cache)
    want = np.zeros((4, 4), np.float32)
    want[0, 1], want[2, 3], want[3, 2] = 1, 2 + 4, 3
    np.testing.assert_array_equal(dx[0, 0], want)


def test_pool_window_outside_image_is_caffes(emu):
    """H = W = 3, kernel 2, stride 3: Ho = ceil(1/3) + 1 = 2 and the second window starts at
    row/column 3, wholly outside the image. Caffe's kernel then writes -FLT_MAX and argmax
    -1 (its running maximum's initial values), and no gradient flows there."""
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    for version in (1, 2):
        y, cache = pool.max_pool_forward(emu, x, 2, 3, version=version)
        lowest = -np.finfo(np.float32).max
        np.testing.assert_array_equal(y[0, 0], [[5, lowest], [lowest, lowest]])
        np.testing.assert_array_equal(cache["argmax"][0, 0], [[4, -1], [-1, -1]])
        dx = pool.max_pool_backward(emu, np.array([[[[1, 2], [3, 4]]]], np.float32), cache)
        want = np.zeros((3, 3), np.float32)
        want[1, 1] = 1
        np.testing.assert_array_equal(dx[0, 0], want)


def test_pool_bad_inputs(emu):
    x = np.ones((1, 2, 5, 5), dtype=np.float32)
    with pytest.raises(ValueError, match=r"pool1: x must be .*\(N, C, H, W\)"):
        pool.max_pool_forward(emu, np.ones((2, 5, 5), np.float32), 3, 2, layer="pool1")
    with pytest.raises(ValueError, match="pool: pad = 3 must be smaller than kernel = 3"):
        pool.max_pool_forward(emu, x, 3, 2, pad=3)
    with pytest.raises(ValueError, match="pool: kernel 7 does not fit"):
        pool.max_pool_forward(emu, x, 7, 1)
    with pytest.raises(ValueError, match="pool: x must be a C-contiguous float32"):
        pool.max_pool_forward(emu, x.astype(np.float64), 3, 2)
    with pytest.raises(ValueError, match="pool: version=2 would need"):
        pool.max_pool_forward(emu, np.ones((1, 1, 200, 200), np.float32), 40, 40, version=2)
    _, cache = pool.max_pool_forward(emu, x, 3, 2)
    with pytest.raises(ValueError, match=r"max_pool_backward: dy .*\(1, 2, 2, 2\)"):
        pool.max_pool_backward(emu, np.ones((1, 2, 3, 3), np.float32), cache)
    with pytest.raises(ValueError, match="max_pool_backward: the forward ran with need_argmax"):
        pool.max_pool_backward(emu, np.ones((1, 2, 2, 2), np.float32), None)


# CaffeNet's pooling layers: pool1 on (96, 55, 55), pool2 on (256, 27, 27), pool5 on
# (256, 13, 13), all kernel 3 stride 2.
CAFFENET_POOL_SHAPES = [(96, 55, 55), (256, 27, 27), (256, 13, 13)]


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("version", [1, 2])
def test_pool_gpu_caffenet_shapes(cuda, batch, version):
    for shape in CAFFENET_POOL_SHAPES:
        check_pool(cuda, (batch,) + shape, 3, 2, 0, version)
        check_pool(cuda, (batch,) + shape, 3, 2, 0, version, ties=True)
