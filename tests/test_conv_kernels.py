"""kernels/conv.cu against nn/conv.py: forward and all three gradients, every version, on
the emulator under three thread orders (forward, reverse, random), and at CaffeNet's
layer shapes on the GPU with -m gpu.

The reference runs in float64 on the same float32 inputs, so it does not share the
kernels' summation order; the tolerance scales with each result's magnitude. Shapes are
small and deliberately ragged: odd sizes, batch 1 and 3, groups, padding, stride > 1,
non-square kernels, and sizes that cross version 2's 128-wide tiles.
"""
import numpy as np
import pytest

from kernels import conv
from nn import reference as ref
from tests.kernel_testing import (EMU_ORDERS_WITH_RANDOM, assert_close, tf32_round, uniform,
                                  zero_dy_near_relu_kink)

# These kernels stage tiles through shared memory between barriers: a missing barrier
# shows under some thread order, so the random one runs too.
EMU_ORDERS = EMU_ORDERS_WITH_RANDOM

# Every kernel: version 1, and versions 2 and 3 (tensor cores) in both tile heights (the
# launcher picks one per pass by the product's row count, conv.auto_tile_rows; the tests
# force each on every case).
KERNELS = [(1, None)] + [(v, rows) for v in conv.TILED_VERSIONS for rows in conv.TILE_HEIGHTS]
KERNEL_IDS = ["v1"] + [f"v{v}-{rows}rows" for v in conv.TILED_VERSIONS
                       for rows in conv.TILE_HEIGHTS]


def make_problem(x_shape, k, kh, kw, group, seed):
    rng = np.random.default_rng(seed)
    x = uniform(rng, x_shape)
    w = uniform(rng, (k, x_shape[1] // group, kh, kw))
    b = uniform(rng, (k,))
    return x, w, b


def reference(x, w, b, dy_seed, stride, pad, group, relu, tf32=False, dx_tf32=None):
    """(y, dy, dx, dw, db) from nn/conv.py in float64; dy is float32 random.

    tf32: the inputs of the products (x, w and the masked dy) rounded to TF32 first, as
    version 3 rounds them on their way into shared memory; its results must then match to
    float32 rounding, like the other versions'. db, a plain sum of dy, takes dy unrounded,
    and so does dx where version 3 computes it by version 1's gather (stride > 1, see
    conv_backward): dx_tf32 (default: tf32 at stride 1) says whether dx's are rounded."""
    dx_tf32 = tf32 and stride == 1 if dx_tf32 is None else dx_tf32
    f64 = lambda a, rounded: (tf32_round(a) if rounded else a).astype(np.float64)  # noqa: E731

    def linear(xr, wr):   # the convolution without its ReLU: (y, cache)
        return ref.conv_forward(xr, wr, b.astype(np.float64), stride=stride, pad=pad,
                                group=group)

    y, cache = linear(f64(x, tf32), f64(w, tf32))
    dy = uniform(np.random.default_rng(dy_seed), y.shape)
    if relu:
        zero_dy_near_relu_kink(dy, y)
        y = np.maximum(y, 0)
    dy_eff = dy * (y > 0) if relu else dy   # what the kernels' bias pass hands on
    dx, dw, _ = ref.conv_backward(f64(dy_eff, tf32), cache)
    db = dy_eff.sum(axis=(0, 2, 3), dtype=np.float64)
    if dx_tf32 != tf32:   # dx from other inputs than dw (one more pass, only then)
        _, dx_cache = linear(f64(x, False), f64(w, dx_tf32))
        dx = ref.conv_backward(f64(dy_eff, dx_tf32), dx_cache)[0]
    return y, dy, dx, dw, db


def check_conv(runner, x_shape, k, kh, kw, stride, pad, group, relu, version, seed=0,
               want=None, tile_rows=None):
    x, w, b = make_problem(x_shape, k, kh, kw, group, seed)
    if want is None:
        want = reference(x, w, b, seed + 1, stride, pad, group, relu,
                         tf32=version == conv.TF32_VERSION)
    y_ref, dy, dx_ref, dw_ref, db_ref = want
    xp = runner.xp
    y, cache = conv.conv_forward(runner, xp.asarray(x), xp.asarray(w), xp.asarray(b),
                                 stride=stride, pad=pad, group=group, relu=relu,
                                 version=version, tile_rows=tile_rows)
    dx, dw, db = conv.conv_backward(runner, xp.asarray(dy), cache)
    assert y.shape == y_ref.shape and dx.shape == x.shape and dw.shape == w.shape
    for name, got, ref_value in (("y", y, y_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref),
                                 ("db", db, db_ref)):
        assert_close(got, ref_value, f"{name} v{version} {x_shape} k={k} {kh}x{kw} "
                                     f"s={stride} p={pad} g={group} relu={relu}")
    if relu:  # the mask must really have removed something, or the test proves nothing
        assert 0 < (y_ref > 0).mean() < 1


# (x_shape, K, kh, kw, stride, pad, group)
CASES = [
    ((1, 3, 9, 11), 5, 3, 3, 1, 0, 1),       # plain, batch 1
    ((3, 4, 10, 9), 6, 3, 5, 2, 1, 2),       # non-square kernel, stride 2, groups
    ((3, 6, 13, 12), 9, 5, 5, 3, 2, 3),      # stride 3 with padding, 3 groups
    ((1, 3, 23, 21), 7, 11, 11, 4, 0, 1),    # conv1-like: 11x11 stride 4
    ((3, 4, 12, 13), 6, 3, 3, 1, 1, 2),      # N*Ho*Wo = 468 and N*H*W: several col tiles
    ((1, 2, 7, 6), 131, 3, 3, 1, 1, 1),      # 131 filters: two row tiles (forward, dw)
    ((1, 129, 5, 4), 3, 1, 1, 1, 0, 1),      # 129 channels: two row tiles (dx), 1x1
]
IDS = ["plain", "stride2-group2", "stride3-pad2-group3", "conv1-like", "col-tiles",
       "131-filters", "129-channels"]


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv_matches_reference(emu, case, relu, kernel):
    version, rows = kernel
    check_conv(emu, *case, relu=relu, version=version, tile_rows=rows)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
def test_conv_backward_passes_apart(emu, relu, version):
    """need_dw=False gives the full backward's dx alone (and runs no bias pass without a
    ReLU), need_dx=False its dw and db alone: bench.py times the passes this way."""
    x, w, b = make_problem((2, 4, 9, 8), 6, 3, 3, group=2, seed=9)
    dy = uniform(np.random.default_rng(10), (2, 6, 9, 8))
    _, cache = conv.conv_forward(emu, x, w, b, pad=1, group=2, relu=relu, version=version)
    dx, dw, db = conv.conv_backward(emu, dy, cache)
    dx_only = conv.conv_backward(emu, dy, cache, need_dw=False)
    dw_only = conv.conv_backward(emu, dy, cache, need_dx=False)
    assert dx_only[1:] == (None, None) and dw_only[0] is None
    np.testing.assert_array_equal(dx_only[0], dx)
    np.testing.assert_array_equal(dw_only[1], dw)
    np.testing.assert_array_equal(dw_only[2], db)
    with pytest.raises(ValueError, match="need_dx and need_dw are both False"):
        conv.conv_backward(emu, dy, cache, need_dx=False, need_dw=False)


@pytest.mark.parametrize("version", conv.TILED_VERSIONS)
@pytest.mark.parametrize("rows", conv.TILE_HEIGHTS)
@pytest.mark.parametrize("splits", [1, 3, 7])
def test_conv_weight_grad_split_reduction(emu, splits, rows, version):
    """The implicit GEMM's weight gradient with its reduction over N*Ho*Wo = 3*7*6 = 126
    cut into chunks (multiples of 8, the last one short) summed by gemm_splitk_reduce."""
    x_shape, k, kh, kw, stride, pad, group = (3, 4, 9, 8), 6, 3, 3, 1, 0, 2
    x, w, b = make_problem(x_shape, k, kh, kw, group, seed=5)
    tf32 = version == conv.TF32_VERSION
    _, dy, _, dw_ref, _ = reference(x, w, b, 6, stride, pad, group, relu=False, tf32=tf32)
    _, cache = conv.conv_forward(emu, x, w, b, stride=stride, pad=pad, group=group)
    dw = np.empty_like(w)
    conv._backward_weights_v2(emu, dy, x, dw, cache["geom"], splits=splits, tile_rows=rows,
                              tf32=tf32)
    assert_close(dw, dw_ref, f"splits={splits}")


@pytest.mark.parametrize("version", conv.TILED_VERSIONS)
@pytest.mark.parametrize("rows", conv.TILE_HEIGHTS)
@pytest.mark.parametrize("case", [c for c in CASES if c[4] > 1],
                         ids=[i for c, i in zip(CASES, IDS) if c[4] > 1])
def test_conv_backward_data_v2_strided(emu, case, rows, version):
    """conv_backward dispatches stride > 1 to the v1 gather; the implicit GEMM must still
    be right there (its B operand is zero between strides)."""
    x_shape, k, kh, kw, stride, pad, group = case
    x, w, b = make_problem(x_shape, k, kh, kw, group, seed=9)
    tf32 = version == conv.TF32_VERSION   # this path of version 3 does run on tensor cores
    _, dy, dx_ref, _, _ = reference(x, w, b, 10, stride, pad, group, relu=False, tf32=tf32,
                                    dx_tf32=tf32)
    _, cache = conv.conv_forward(emu, x, w, b, stride=stride, pad=pad, group=group)
    dx = conv._backward_data(emu, dy, w, np.empty_like(x), cache["geom"], version=version,
                             tile_rows=rows)
    assert_close(dx, dx_ref, f"{case}")


def test_auto_tile_rows_leaves_fewest_rows_idle():
    """64-row tiles where they compute fewer padding rows, 128 otherwise and on ties:
    CaffeNet's M = 48 (conv2's dx) and 192 (conv4, conv5's dx) get 64, 96 (conv1) 128."""
    assert [conv.auto_tile_rows(m) for m in (5, 48, 64, 65, 96, 128, 131, 192, 256, 384)] == \
        [64, 64, 64, 128, 128, 128, 64, 64, 128, 128]


def test_weight_grad_split_rule():
    """Few tiles: chunks of >= 512 up to about 256 blocks; many tiles: one chunk.
    conv1 at batch 64 (3 tiles, N*Ho*Wo = 193600) gets 86 chunks of 2256."""
    assert conv._weight_grad_split(193600, 3) == (2256, 86)
    assert conv._weight_grad_split(193600, 200) == (193600, 1)
    assert conv._weight_grad_split(300, 1) == (304, 1)
    chunk, count = conv._weight_grad_split(126, 4, 3)
    assert chunk % 8 == 0 and (count - 1) * chunk < 126 <= count * chunk


def test_tf32_version_is_refused_on_gpus_before_sm_80():
    """A GPU of compute capability 7.5 has no TF32 tensor cores: version 3 is refused by
    name there (checked with a stand-in runner: the check runs before any launch)."""
    from types import SimpleNamespace
    x, w, b = make_problem((1, 2, 5, 5), 3, 3, 3, 1, seed=7)
    old_gpu = SimpleNamespace(compute_capability=75)
    with pytest.raises(ValueError, match=r"conv4: version 3 \(TF32 tensor cores\) needs a GPU "
                                         r"of compute capability 8.0 or newer; this one is 7.5"):
        conv.conv_forward(old_gpu, x, w, b, version=3, layer="conv4")


def test_version_2_refuses_tensors_past_int32_offsets():
    """Version 2 computes offsets in 32 bits; a tensor of 2^31 elements is refused by
    name (checked on the sizes: such arrays do not fit in a test)."""
    conv._check_int32_offsets("conv1", x=2 ** 31 - 1, w=10, y=5)
    with pytest.raises(ValueError, match=r"conv1: versions 2 and 3 need y under 2\^31 elements, "
                                         r"got 2147483648"):
        conv._check_int32_offsets("conv1", x=3, w=10, y=2 ** 31)


@pytest.mark.parametrize("version", [2, 3])
def test_launcher_checks_int32_offsets(emu, monkeypatch, version):
    """...and the launcher really asks, with the sizes of x, w and y."""
    calls = []
    monkeypatch.setattr(conv, "_check_int32_offsets", lambda layer, **sizes: calls.append(sizes))
    x, w, b = make_problem((1, 2, 5, 5), 3, 3, 3, 1, seed=7)
    conv.conv_forward(emu, x, w, b, version=version)
    assert calls == [dict(x=50, w=54, y=27)]


def test_conv_default_version_is_2(emu):
    x, w, b = make_problem((1, 2, 5, 5), 3, 3, 3, 1, seed=7)
    _, cache = conv.conv_forward(emu, x, w, b)
    assert cache["version"] == 2


def test_conv_bad_inputs(emu):
    x, w, b = make_problem((2, 4, 6, 6), 6, 3, 3, 2, seed=8)
    with pytest.raises(ValueError, match=r"conv2: x must have shape \(N, 4, H, W\)"):
        conv.conv_forward(emu, x[:, :3].copy(), w, b, group=2, layer="conv2")
    with pytest.raises(ValueError, match=r"conv: the number of filters K = 6 .* group = 4"):
        conv.conv_forward(emu, np.ones((2, 8, 6, 6), np.float32), w, b, group=4)
    with pytest.raises(ValueError, match=r"conv: b .*\(6,\)"):
        conv.conv_forward(emu, x, w, b[:5].copy(), group=2)
    with pytest.raises(ValueError, match=r"conv: x must be a C-contiguous float32"):
        conv.conv_forward(emu, x.astype(np.float64), w, b, group=2)
    with pytest.raises(ValueError, match=r"conv: w must be C-contiguous"):
        conv.conv_forward(emu, x, np.asfortranarray(w), b, group=2)
    with pytest.raises(ValueError, match=r"conv: stride must be an integer >= 1"):
        conv.conv_forward(emu, x, w, b, stride=0, group=2)
    with pytest.raises(ValueError, match=r"conv: kernel 3x3 does not fit"):
        conv.conv_forward(emu, x[:, :, :2, :2].copy(), w, b, group=2)
    with pytest.raises(ValueError, match="conv: version"):
        conv.conv_forward(emu, x, w, b, group=2, version=4)
    with pytest.raises(ValueError, match=r"conv: tile_rows must be None or one of \(128, "
                                         r"64\) with version 2 or 3, got 96 with version 2"):
        conv.conv_forward(emu, x, w, b, group=2, tile_rows=96)
    with pytest.raises(ValueError, match=r"got 64 with version 1"):
        conv.conv_forward(emu, x, w, b, group=2, version=1, tile_rows=64)
    with pytest.raises(ValueError, match=r"got 64.0 with version 2"):
        conv.conv_forward(emu, x, w, b, group=2, tile_rows=64.0)
    _, cache = conv.conv_forward(emu, x, w, b, group=2, layer="conv5")
    with pytest.raises(ValueError, match=r"conv5 \(backward\): dy .*\(2, 6, 4, 4\)"):
        conv.conv_backward(emu, np.ones((2, 6, 4, 5), np.float32), cache)


# ---- GPU: CaffeNet's convolution layers (skipped without a GPU) ------------------------

# name: (input (C, H, W), K, kernel, stride, pad, group), as in Caffe's CaffeNet.
CAFFENET_CONVS = {
    "conv1": ((3, 227, 227), 96, 11, 4, 0, 1),
    "conv2": ((96, 27, 27), 256, 5, 1, 2, 2),
    "conv3": ((256, 13, 13), 384, 3, 1, 1, 1),
    "conv4": ((384, 13, 13), 384, 3, 1, 1, 2),
    "conv5": ((384, 13, 13), 256, 3, 1, 1, 2),
}
_gpu_reference = {}   # (layer, batch, tf32) -> reference results, shared by the kernels


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS + [(2, None)], ids=KERNEL_IDS + ["v2-auto"])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name", list(CAFFENET_CONVS))
def test_conv_gpu_caffenet_shapes(cuda, name, batch, kernel):
    (c, h, w), k, ks, stride, pad, group = CAFFENET_CONVS[name]
    args = ((batch, c, h, w), k, ks, ks, stride, pad, group)
    version, rows = kernel
    key = (name, batch, version == conv.TF32_VERSION)
    if key not in _gpu_reference:
        x, wt, b = make_problem(args[0], k, ks, ks, group, seed=11)
        _gpu_reference[key] = reference(x, wt, b, 12, stride, pad, group, relu=True,
                                        tf32=key[2])
    check_conv(cuda, *args, relu=True, version=version, seed=11, want=_gpu_reference[key],
               tile_rows=rows)
