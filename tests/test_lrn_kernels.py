"""kernels/lrn.cu against nn/lrn.py: both versions, forward and backward, on the emulator
under two thread orders (and on the GPU at CaffeNet's shapes with -m gpu)."""
import numpy as np
import pytest

from nn import reference as ref
from kernels import launch_utils, lrn
from tests.kernel_testing import assert_close


def check_lrn(runner, shape, version, params, seed=0, scale=1.0):
    """Forward (y and the stored scale) and backward of one version against the reference."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y_ref, cache_ref = ref.lrn_forward(x, **params)
    dx_ref = ref.lrn_backward(dy, cache_ref)
    y, cache = lrn.lrn_forward(runner, runner.xp.asarray(x), **params, version=version)
    dx = lrn.lrn_backward(runner, runner.xp.asarray(dy), cache, version=version)
    assert_close(y, y_ref, "y")
    assert_close(cache["scale"], cache_ref[2], "scale")
    assert_close(dx, dx_ref, "dx")


CAFFE = dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0)
# A large alpha and small k make the normalisation (and its gradient term) dominate, so a
# wrong window or a wrong backward term cannot hide behind scale ~ 1.
LARGE_ALPHA = dict(local_size=5, alpha=0.9, beta=0.75, k=0.5)


@pytest.mark.parametrize("shape,params", [
    ((3, 7, 5, 6), CAFFE),
    ((1, 9, 3, 7), LARGE_ALPHA),
    ((3, 2, 3, 5), LARGE_ALPHA),                  # C < local_size: clipped on both sides
    ((1, 11, 2, 3), dict(local_size=3, alpha=0.5, beta=0.6, k=2.0)),
    ((2, 6, 4, 3), dict(local_size=1, alpha=0.7, beta=1.5, k=1.0)),
    ((1, 13, 3, 3), dict(local_size=9, alpha=0.3, beta=0.75, k=1.0)),
    ((2, 3, 2, 3), dict(local_size=9, alpha=0.9, beta=0.75, k=0.5)),   # C < half window
])
@pytest.mark.parametrize("version", lrn.VERSIONS)
def test_lrn_matches_reference(emu, shape, params, version):
    check_lrn(emu, shape, version, params)


@pytest.mark.parametrize("version", lrn.VERSIONS)
def test_lrn_large_inputs(emu, version):
    """Inputs of size ~30 (like CaffeNet's conv1 output): alpha * sum x^2 is O(1)."""
    check_lrn(emu, (2, 8, 3, 5), version, CAFFE, seed=3, scale=30.0)


@pytest.mark.parametrize("version", lrn.VERSIONS)
def test_lrn_grid_stride_loop(emu, version, monkeypatch):
    monkeypatch.setattr(launch_utils, "MAX_BLOCKS", 1)
    check_lrn(emu, (2, 7, 15, 19), version, LARGE_ALPHA, seed=4)


def test_lrn_bad_inputs(emu):
    x = np.ones((1, 3, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"norm: x must be .*\(N, C, H, W\)"):
        lrn.lrn_forward(emu, np.ones((3, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="norm2: local_size must be odd"):
        lrn.lrn_forward(emu, x, local_size=4, layer="norm2")
    with pytest.raises(ValueError, match="norm: k must be > 0"):
        lrn.lrn_forward(emu, x, k=0.0)
    _, cache = lrn.lrn_forward(emu, x)
    with pytest.raises(ValueError, match=r"lrn_backward: dy .*\(1, 3, 2, 2\)"):
        lrn.lrn_backward(emu, np.ones((1, 3, 2, 3), dtype=np.float32), cache)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("version", lrn.VERSIONS)
def test_lrn_gpu_caffenet_shapes(cuda, batch, version):
    """norm1 on conv1's output (96, 55, 55) and norm2 on conv2's (256, 27, 27), with
    activations of conv-output magnitude."""
    for shape in [(96, 55, 55), (256, 27, 27)]:
        check_lrn(cuda, (batch,) + shape, version, CAFFE, scale=30.0)
        check_lrn(cuda, (batch,) + shape, version, LARGE_ALPHA)
