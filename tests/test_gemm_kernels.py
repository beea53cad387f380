"""kernels/gemm.cu against NumPy: the bare product in every layout, split-K, the float4 and
scalar load paths, and the fully connected layer against nn/inner_product.py; every
version on the emulator under three thread orders (forward, reverse, random), and at
CaffeNet's fc shapes on the GPU with -m gpu.

References are computed in float64 from the same float32 inputs, so they are independent
of any float32 summation order; the tolerance scales with the result's magnitude.
"""
import numpy as np
import pytest

from kernels import gemm, launch_utils
from nn import reference as ref
from tests.kernel_testing import (EMU_ORDERS_WITH_RANDOM, assert_close, tf32_round, uniform,
                                  zero_dy_near_relu_kink)

# These kernels stage tiles through shared memory between barriers: a missing barrier
# shows under some thread order, so the random one runs too.
EMU_ORDERS = EMU_ORDERS_WITH_RANDOM

VERSIONS = gemm.VERSIONS


def op(a, trans):
    return a.T if trans else a


def operand(a, version):
    """A product's input as the kernel multiplies it, in float64: rounded to TF32 for the
    tensor-core version (gemm_v4 rounds on the way into shared memory), so that its results
    must match to float32 rounding like the other versions'."""
    return (tf32_round(a) if version == gemm.TF32_VERSION else a).astype(np.float64)


_matmul_want = {}


def check_matmul(runner, m, n, k, trans_a, trans_b, version, seed=0, split_k=None,
                 misalign=False):
    rng = np.random.default_rng(seed)
    a_shape = (k, m) if trans_a else (m, k)
    b_shape = (n, k) if trans_b else (k, n)
    if misalign:
        # C-contiguous views that start 4 bytes past a 16-byte boundary: the kernel must
        # take its scalar path even though the sizes would allow float4.
        a = uniform(rng, (np.prod(a_shape) + 1,))[1:].reshape(a_shape)
        b = uniform(rng, (np.prod(b_shape) + 1,))[1:].reshape(b_shape)
    else:
        a, b = uniform(rng, a_shape), uniform(rng, b_shape)
    key = (m, n, k, trans_a, trans_b, seed, misalign, version == gemm.TF32_VERSION)
    if key not in _matmul_want:  # memoised: the GPU test reuses fc6-sized products
        _matmul_want[key] = op(operand(a, version), trans_a) @ op(operand(b, version), trans_b)
    want = _matmul_want[key]
    got = gemm.matmul(runner, runner.xp.asarray(a), runner.xp.asarray(b), trans_a=trans_a,
                      trans_b=trans_b, version=version, split_k=split_k)
    assert got.shape == (m, n) and got.dtype == np.float32
    assert_close(got, want, f"v{version} {m}x{n}x{k} ta={trans_a} tb={trans_b}")


LAYOUTS = [(False, False), (False, True), (True, False), (True, True)]


# (m, n, k): odd sizes inside one tile; sizes crossing v3's 128 tile with K not a multiple
# of 4 (scalar edges); multiples of 4 (float4 loads) with ragged tile edges; and K a
# multiple of 4 with N not (A's rows may take float4 loads, B's may not).
@pytest.mark.parametrize("layout", LAYOUTS, ids=["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("mnk", [(5, 7, 3), (37, 19, 29), (131, 133, 21), (132, 136, 20),
                                 (13, 13, 16)])
def test_matmul_matches_numpy(emu, mnk, version, layout):
    check_matmul(emu, *mnk, *layout, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_matmul_split_k(emu, version):
    """Three K slices (16 + 16 + 5) summed by gemm_splitk_reduce."""
    check_matmul(emu, 9, 11, 37, False, True, version, seed=1, split_k=3)


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["NN", "NT", "TN", "TT"])
def test_matmul_v3_misaligned(emu, layout, version):
    check_matmul(emu, 12, 16, 24, *layout, version, seed=2, misalign=True)


def test_split_k_rule():
    """Few output tiles: split into >= 512-deep slices up to about 256 blocks; many tiles
    or a short K: no split. fc6's forward (64 tiles, K = 9216) gets 4 slices."""
    assert gemm._split_k(9216, 64, None) == (2304, 4)
    assert gemm._split_k(9216, 144, None) == (9216, 1)
    assert gemm._split_k(300, 1, None) == (304, 1)
    assert gemm._split_k(4096, 1, None) == (512, 8)
    chunk, slices = gemm._split_k(37, 4, 3)
    assert chunk % 16 == 0 and (slices - 1) * chunk < 37 <= slices * chunk


def check_inner_product(runner, x_shape, o, relu, version, seed=0):
    """Forward and backward of one version against nn/inner_product.py in float64."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(x_shape[1:]))
    x = uniform(rng, x_shape)
    w = uniform(rng, (o, d))
    b = uniform(rng, (o,))
    dy = uniform(rng, (x_shape[0], o))
    y_ref, cache_ref = ref.inner_product_forward(operand(x, version), operand(w, version),
                                                 b.astype(np.float64), relu=relu)
    if relu:
        y_pre, _ = ref.inner_product_forward(operand(x, version), operand(w, version),
                                             b.astype(np.float64))
        zero_dy_near_relu_kink(dy, y_pre)
    # The products take the masked dy rounded; the bias gradient sums it unrounded.
    dy_eff = dy * (y_ref > 0) if relu else dy
    dx_ref, dw_ref, _ = ref.inner_product_backward(operand(dy_eff, version), cache_ref)
    db_ref = dy_eff.sum(axis=0, dtype=np.float64)
    xp = runner.xp
    y, cache = gemm.inner_product_forward(runner, xp.asarray(x), xp.asarray(w), xp.asarray(b),
                                          relu=relu, version=version)
    dx, dw, db = gemm.inner_product_backward(runner, xp.asarray(dy), cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    for name, got, want in (("y", y, y_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref),
                            ("db", db, db_ref)):
        assert_close(got, want, f"{name} v{version} relu={relu}")
    if relu:  # the mask must really have removed something, or the test proves nothing
        assert 0 < (y_ref > 0).mean() < 1


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("x_shape,o", [((3, 5, 3, 3), 7), ((1, 37), 133)])
def test_inner_product_matches_reference(emu, x_shape, o, relu, version):
    check_inner_product(emu, x_shape, o, relu, version)


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("x_shape,o", [((3, 5, 3, 3), 7), ((1, 37), 133)])
def test_inner_product_split_k_adds_bias_and_relu_once(emu, monkeypatch, x_shape, o, relu,
                                                       version):
    """Split into 16-deep slices (CaffeNet's small batches split fc6's K), the bias and
    ReLU go in gemm_splitk_reduce, after the slices are summed (M > 1: a row/column mix-up
    of the bias shows)."""
    monkeypatch.setattr(launch_utils, "MIN_SPLIT_CHUNK", 16)
    check_inner_product(emu, x_shape, o, relu, version)


def test_inner_product_default_is_v3(emu):
    x = np.ones((2, 3), np.float32)
    _, cache = gemm.inner_product_forward(emu, x, np.ones((4, 3), np.float32),
                                          np.ones(4, np.float32))
    assert cache["version"] == 3


def test_tf32_version_is_refused_on_gpus_before_sm_80():
    from types import SimpleNamespace
    old_gpu = SimpleNamespace(compute_capability=75)
    x, w, b = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"fc6: version 4 \(TF32 tensor cores\) needs .* 7.5"):
        gemm.inner_product_forward(old_gpu, x, w, b, layer="fc6", version=4)
    with pytest.raises(ValueError, match=r"matmul: version 4 \(TF32"):
        gemm.matmul(old_gpu, x, w, trans_b=True, version=4)


def test_inner_product_bad_inputs(emu):
    x = np.ones((2, 6), np.float32)
    w = np.ones((4, 6), np.float32)
    b = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"fc6: x must have D = 6"):
        gemm.inner_product_forward(emu, np.ones((2, 5), np.float32), w, b, layer="fc6")
    with pytest.raises(ValueError, match=r"fc: w must be a C-contiguous float32"):
        gemm.inner_product_forward(emu, x, w.astype(np.float64), b)
    with pytest.raises(ValueError, match=r"fc: b .*\(4,\)"):
        gemm.inner_product_forward(emu, x, w, np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"fc: x must be C-contiguous"):
        gemm.inner_product_forward(emu, np.ones((6, 2), np.float32).T, w, b)
    with pytest.raises(ValueError, match="fc: version"):
        gemm.inner_product_forward(emu, x, w, b, version=5)
    _, cache = gemm.inner_product_forward(emu, x, w, b, layer="fc7")
    with pytest.raises(ValueError, match=r"fc7 \(backward\): dy .*\(2, 4\)"):
        gemm.inner_product_backward(emu, np.ones((4, 2), np.float32), cache)
    with pytest.raises(ValueError, match=r"matmul: the inner sizes"):
        gemm.matmul(emu, np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))


# ---- GPU: CaffeNet's fully connected shapes (skipped without a GPU) --------------------

FC_SHAPES = [("fc6", (256, 6, 6), 4096, True), ("fc7", (4096,), 4096, True),
             ("fc8", (4096,), 1000, False), ("fc8_twitter", (4096,), 2, False)]


@pytest.mark.gpu
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name,in_shape,o,relu", FC_SHAPES, ids=[s[0] for s in FC_SHAPES])
def test_inner_product_gpu_caffenet_shapes(cuda, name, in_shape, o, relu, batch, version):
    check_inner_product(cuda, (batch,) + in_shape, o, relu, version)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS, ids=["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("version", VERSIONS)
def test_matmul_gpu(cuda, version, layout):
    # fc6's forward shape, and a ragged one with K not a multiple of 4.
    check_matmul(cuda, 256, 4096, 9216, *layout, version)
    check_matmul(cuda, 257, 1001, 4095, *layout, version, seed=3)
