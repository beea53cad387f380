"""kernels/relu.cu against nn/relu.py: every version, on the emulator under two thread
orders (and on the GPU at CaffeNet's shapes with -m gpu)."""
import numpy as np
import pytest

from nn import reference as ref
from kernels import launch_utils, relu
from tests.kernel_testing import to_host


def nonzero_normal(rng, shape):
    """Standard normal float32 values with no exact zeros (ReLU's kink)."""
    a = rng.standard_normal(shape).astype(np.float32)
    a[a == 0] = 0.5
    return a


def check_relu(runner, shape, version, seed=0):
    """Forward and backward of one version against the reference (ReLU is exact, so the
    results must be identical)."""
    rng = np.random.default_rng(seed)
    x = nonzero_normal(rng, shape)
    dy = nonzero_normal(rng, shape)
    y_ref, cache_ref = ref.relu_forward(x)
    dx_ref = ref.relu_backward(dy, cache_ref)
    y, cache = relu.relu_forward(runner, runner.xp.asarray(x), version=version)
    dx = relu.relu_backward(runner, runner.xp.asarray(dy), cache, version=version)
    np.testing.assert_array_equal(to_host(y), y_ref)
    np.testing.assert_array_equal(to_host(dx), dx_ref)


# 945 = 4 * 236 + 1 and 7 elements leave float4 tails; (1, 1) is smaller than one float4.
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (1, 7), (1, 1), (2, 4097)])
@pytest.mark.parametrize("version", relu.VERSIONS)
def test_relu_matches_reference(emu, shape, version):
    check_relu(emu, shape, version)


@pytest.mark.parametrize("version", relu.VERSIONS)
def test_relu_grid_stride_loop(emu, version, monkeypatch):
    """With the grid capped at one block, each thread must walk several elements."""
    monkeypatch.setattr(launch_utils, "MAX_BLOCKS", 1)
    check_relu(emu, (3, 17, 23), version, seed=1)


def test_relu_misaligned_falls_back_to_v1(emu):
    rng = np.random.default_rng(2)
    buf = nonzero_normal(rng, (4 * 50 + 1,))
    x = buf[1:]                    # C-contiguous, but 4 bytes past a 16-byte boundary
    assert not launch_utils.aligned16(x)
    y, _ = relu.relu_forward(emu, x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    with pytest.raises(ValueError, match="relu.*16-byte aligned"):
        relu.relu_forward(emu, x, version=2)


def test_relu_bad_inputs(emu):
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"relu: x must be a C-contiguous float32"):
        relu.relu_forward(emu, x.astype(np.float64))
    with pytest.raises(ValueError, match=r"relu: x must be C-contiguous"):
        relu.relu_forward(emu, np.ones((3, 4), dtype=np.float32).T)
    with pytest.raises(ValueError, match="relu: version"):
        relu.relu_forward(emu, x, version=3)
    _, cache = relu.relu_forward(emu, x)
    with pytest.raises(ValueError, match=r"relu_backward: dy .*\(2, 3\)"):
        relu.relu_backward(emu, np.ones((3, 2), dtype=np.float32), cache)


# CaffeNet's ReLU inputs: conv1..conv5 outputs and fc6/fc7.
CAFFENET_RELU_SHAPES = [(96, 55, 55), (256, 27, 27), (384, 13, 13), (256, 13, 13), (4096,)]


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("version", relu.VERSIONS)
def test_relu_gpu_caffenet_shapes(cuda, batch, version):
    for shape in CAFFENET_RELU_SHAPES:
        check_relu(cuda, (batch,) + shape, version)
