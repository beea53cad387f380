"""kernels/sgd.cu against nn/sgd.py: the momentum update with weight decay, in place."""
import numpy as np
import pytest

from nn import reference as ref
from kernels import launch_utils, sgd
from tests.kernel_testing import assert_close, to_host

# The update is a few float32 operations per element: it agrees far more closely than the
# kernels with long sums.
RTOL = 1e-5


def check_sgd(runner, shape, version, hyper, steps=3, seed=0):
    """`steps` updates with fresh gradients (so the history carries over) on the device
    and on the reference; param and history must agree after every step, grad unchanged."""
    rng = np.random.default_rng(seed)
    p_ref = rng.standard_normal(shape).astype(np.float32)
    h_ref = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    # xp.array copies (xp.asarray would alias the reference's arrays on the emulator).
    p, h = runner.xp.array(p_ref), runner.xp.array(h_ref)
    for _ in range(steps):
        g_host = rng.standard_normal(shape).astype(np.float32)
        g = runner.xp.array(g_host)
        ref.sgd_update(p_ref, g_host.copy(), h_ref, **hyper)
        assert sgd.sgd_update(runner, p, g, h, **hyper, version=version) is None
        assert_close(h, h_ref, "history", rtol=RTOL)
        assert_close(p, p_ref, "param", rtol=RTOL)
        np.testing.assert_array_equal(to_host(g), g_host)


HYPER = [
    # conv weights: lr_mult 1, decay_mult 1, iter_size 2
    dict(lr=0.001, momentum=0.9, weight_decay=0.0005, grad_scale=0.5),
    # a bias: lr_mult 2, decay_mult 0
    dict(lr=0.002, momentum=0.9, weight_decay=0.0, grad_scale=1.0),
    # large lr and decay so that every term moves the result visibly
    dict(lr=0.1, momentum=0.5, weight_decay=0.3, grad_scale=1.0 / 3),
]


@pytest.mark.parametrize("shape", [(7, 3, 5, 5), (13,), (2,)])
@pytest.mark.parametrize("version", sgd.VERSIONS)
@pytest.mark.parametrize("hyper", HYPER)
def test_sgd_matches_reference(emu, shape, version, hyper):
    check_sgd(emu, shape, version, hyper)


@pytest.mark.parametrize("version", sgd.VERSIONS)
def test_sgd_grid_stride_loop(emu, version, monkeypatch):
    monkeypatch.setattr(launch_utils, "MAX_BLOCKS", 1)
    check_sgd(emu, (5, 431), version, HYPER[2], steps=2)


def test_sgd_bad_inputs(emu):
    p = np.ones((3, 4), dtype=np.float32)
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"sgd_update: grad .*\(3, 4\)"):
        sgd.sgd_update(emu, p, np.ones((4, 3), np.float32), p.copy(), **hyper)
    with pytest.raises(ValueError, match=r"sgd_update: history must be .*float32"):
        sgd.sgd_update(emu, p, p.copy(), np.ones((3, 4)), **hyper)
    # grad's own dtype and layout (its shape is checked elsewhere too): on a GPU a float64
    # or transposed grad would be read as the wrong numbers
    with pytest.raises(ValueError, match=r"sgd_update: grad must be .*float32"):
        sgd.sgd_update(emu, p, np.ones((3, 4)), p.copy(), **hyper)
    with pytest.raises(ValueError, match=r"sgd_update: grad must be C-contiguous"):
        sgd.sgd_update(emu, p, np.ones((4, 3), np.float32).T, p.copy(), **hyper)
    with pytest.raises(ValueError, match="sgd_update: lr"):
        sgd.sgd_update(emu, p, p.copy(), p.copy(), lr=float("nan"), momentum=0.9,
                       weight_decay=0.0)
    frozen = p.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        sgd.sgd_update(emu, frozen, p.copy(), p.copy(), **hyper)


# CaffeNet's parameter blobs (weights and a bias); fc6 is the largest (37.7 M floats).
CAFFENET_PARAM_SHAPES = [(96, 3, 11, 11), (256, 48, 5, 5), (384, 256, 3, 3), (4096, 9216),
                         (4096, 4096), (2, 4096), (4096,)]


@pytest.mark.gpu
@pytest.mark.parametrize("version", sgd.VERSIONS)
def test_sgd_gpu_caffenet_shapes(cuda, version):
    for shape in CAFFENET_PARAM_SHAPES:
        check_sgd(cuda, shape, version, HYPER[0], steps=2)
