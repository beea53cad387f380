"""kernels/softmax.cu against nn/softmax.py: softmax (both versions, (N, C) and
(N, C, H, W)), SoftmaxWithLoss forward/backward and accuracy, on the emulator under two
thread orders (and on the GPU at CaffeNet's shapes with -m gpu)."""
import numpy as np
import pytest

from nn import reference as ref
from kernels import launch_utils, softmax as sm
from tests.kernel_testing import EMU_ORDERS_WITH_RANDOM, assert_close

# These kernels synchronise through shared memory: the emu fixture (tests/conftest.py)
# also runs them in a random thread order to catch a missing __syncthreads.
EMU_ORDERS = EMU_ORDERS_WITH_RANDOM


def check_softmax(runner, shape, version, spread=3.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (spread * rng.standard_normal(shape)).astype(np.float32)
    p = sm.softmax(runner, runner.xp.asarray(x), version=version)
    assert_close(p, ref.softmax(x), f"softmax {shape}")


def check_loss(runner, n, c, version, loss_weight=1.0, spread=3.0, seed=0):
    """Loss (a Python float), gradient and accuracy against the reference."""
    rng = np.random.default_rng(seed)
    x = (spread * rng.standard_normal((n, c))).astype(np.float32)
    labels = rng.integers(0, c, n).astype(np.int32)
    loss_ref, cache_ref = ref.softmax_loss_forward(x, labels)
    d_ref = ref.softmax_loss_backward(cache_ref, loss_weight)
    xd, ld = runner.xp.asarray(x), runner.xp.asarray(labels)
    loss, cache = sm.softmax_loss_forward(runner, xd, ld, version=version)
    assert isinstance(loss, float)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert_close(sm.softmax_loss_backward(runner, cache, loss_weight), d_ref, "dscores")
    assert sm.accuracy(runner, xd, ld) == ref.accuracy(x, labels)


@pytest.mark.parametrize("shape", [(3, 7), (1, 1000), (5, 2), (2, 3, 5, 7), (1, 2, 9, 4),
                                   (2, 300)])
@pytest.mark.parametrize("version", sm.VERSIONS)
def test_softmax_matches_reference(emu, shape, version):
    check_softmax(emu, shape, version)


@pytest.mark.parametrize("version", sm.VERSIONS)
def test_softmax_is_stable_for_large_scores(emu, version):
    """Scores of +-300 overflow exp without the max subtraction."""
    check_softmax(emu, (3, 11), version, spread=300.0, seed=1)


@pytest.mark.parametrize("shape,kernel", [((1, 1000), "softmax_v2"), ((2, 63), "softmax_v1"),
                                          ((1, 2, 9, 4), "softmax_v1")])
def test_softmax_default_version(emu, monkeypatch, shape, kernel):
    """v2 (a block per row) for long rows of a classifier, v1 (a thread per row) for short
    rows and for maps: only speed depends on it, so only this test sees a wrong choice."""
    launched = []
    real = emu.kernel
    monkeypatch.setattr(emu, "kernel", lambda f, name: launched.append(name) or real(f, name))
    sm.softmax(emu, np.zeros(shape, np.float32))
    assert launched == [kernel]


@pytest.mark.parametrize("version", sm.VERSIONS)
def test_softmax_of_very_negative_scores(emu, version):
    """Every score near -1000: exp underflows to 0 unless the row's maximum (not 0, not
    the scores' sum) is subtracted first."""
    x = (-1000 + np.random.default_rng(5).standard_normal((3, 11))).astype(np.float32)
    assert_close(sm.softmax(emu, x, version=version), ref.softmax(x.astype(np.float64)))


@pytest.mark.parametrize("version", sm.VERSIONS)
def test_softmax_grid_loops(emu, version, monkeypatch):
    monkeypatch.setattr(launch_utils, "MAX_BLOCKS", 1)
    check_softmax(emu, (3, 4, 11, 13), version, seed=2)


@pytest.mark.parametrize("n,c", [(3, 7), (1, 2), (64, 2), (5, 1000), (300, 3)])
@pytest.mark.parametrize("version", sm.VERSIONS)
def test_softmax_loss_matches_reference(emu, n, c, version):
    check_loss(emu, n, c, version, loss_weight=0.7, seed=n)


def test_softmax_loss_clamps_at_flt_min(emu):
    """p_label underflows to 0 (score gap 200): the loss is -log(FLT_MIN) = 87.336..., not
    inf, and the mean over the batch includes the finite second row."""
    x = np.array([[200.0, 0.0], [1.0, 2.0]], dtype=np.float32)
    labels = np.array([1, 1], dtype=np.int32)
    loss, _ = sm.softmax_loss_forward(emu, x, labels)
    row2 = -np.log(np.exp(2.0) / (np.exp(1.0) + np.exp(2.0)))
    want = (-np.log(np.float64(np.finfo(np.float32).tiny)) + row2) / 2
    assert loss == pytest.approx(want, rel=1e-6)
    assert loss == pytest.approx(ref.softmax_loss_forward(x, labels)[0], rel=1e-6)


def test_accuracy_ties_go_to_lowest_index(emu):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (301, 4)).astype(np.float32)       # many tied maxima
    labels = rng.integers(0, 4, 301).astype(np.int32)
    assert sm.accuracy(emu, x, labels) == ref.accuracy(x, labels)
    x = np.array([[1, 1], [2, 2], [0, 3]], dtype=np.float32)
    assert sm.accuracy(emu, x, np.array([0, 1, 1], np.int32)) == pytest.approx(2 / 3)


def test_softmax_bad_inputs(emu):
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"softmax: scores must have shape \(N, C\) or"):
        sm.softmax(emu, np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"loss: labels must be a C-contiguous int32 .*\(2,\)"):
        sm.softmax_loss_forward(emu, x, np.array([0, 1]).astype(np.int64), layer="loss")
    with pytest.raises(ValueError, match=r"softmax_loss: labels must lie in \[0, 3\)"):
        sm.softmax_loss_forward(emu, x, np.array([0, 3], np.int32))
    with pytest.raises(ValueError, match=r"accuracy: labels must lie in \[0, 3\)"):
        sm.accuracy(emu, x, np.array([-1, 0], np.int32))
    with pytest.raises(ValueError, match=r"softmax_loss: scores must be .*\(N, C\)"):
        sm.softmax_loss_forward(emu, np.ones((2, 3, 1, 1), np.float32),
                                np.array([0, 1], np.int32))


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("version", sm.VERSIONS)
def test_softmax_gpu_caffenet_shapes(cuda, batch, version):
    """The 2-class Twitter head, the 1000-class ImageNet head, and the fully convolutional
    net's 2-class score map (8 x 8 for a 454 x 454 input)."""
    for c in (2, 1000):
        check_softmax(cuda, (batch, c), version)
        check_loss(cuda, batch, c, version, loss_weight=1.0, seed=batch)
    check_softmax(cuda, (batch, 2, 8, 8), version)
