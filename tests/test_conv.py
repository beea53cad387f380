"""nn/conv.py against a loop-per-output convolution, hand-worked values and float64
finite differences."""
import numpy as np
import pytest

from nn.conv import conv_backward, conv_forward
from tests.gradcheck import check_layer


def naive_conv(x, w, b, stride, pad, group):
    """Direct definition: one dot product per output position (float64)."""
    n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    y = np.zeros((n, k, ho, wo))
    for o in range(k):
        g = o // (k // group)
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + kh,
                           j * stride:j * stride + kw]
                y[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return y


CONFIGS = [  # (N, C, H, W, K, kh, kw, stride, pad, group)
    (2, 3, 7, 9, 5, 3, 3, 1, 0, 1),
    (3, 4, 9, 7, 6, 3, 5, 2, 1, 2),
    (1, 6, 11, 10, 9, 5, 3, 3, 2, 3),
    (2, 2, 5, 5, 4, 1, 1, 1, 0, 2),
    # stride 1: 3x3 through Winograd (padded, grouped); a non-square kernel and 1x1
    # with pad > k - 1 through im2col
    (2, 4, 6, 8, 6, 3, 3, 1, 1, 2),
    (2, 4, 7, 6, 10, 3, 3, 1, 1, 2),
    (1, 6, 7, 8, 6, 3, 5, 1, 2, 2),
    (1, 2, 5, 6, 2, 1, 1, 1, 1, 1),
]


def make(rng, cfg, dtype=np.float64):
    n, c, h, w, k, kh, kw, stride, pad, group = cfg
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c // group, kh, kw)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    return x, wt, b, dict(stride=stride, pad=pad, group=group)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_direct_definition(cfg, dtype):
    rng = np.random.default_rng(1)
    x, w, b, kw = make(rng, cfg, dtype)
    y, _ = conv_forward(x, w, b, **kw)
    assert y.dtype == dtype and y.flags.c_contiguous
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, naive_conv(x, w, b, **kw), rtol=tol, atol=tol)
    yr, _ = conv_forward(x, w, b, relu=True, **kw)
    np.testing.assert_array_equal(yr, np.maximum(y, 0))


def test_hand_worked_stride_pad():
    # 1 channel 3x3 input, 2x2 all-ones kernel, pad 1, stride 2: each output sums the
    # part of its window inside the image.  x = 1..9 row-major.
    x = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2))
    b = np.array([0.5])
    y, _ = conv_forward(x, w, b, stride=2, pad=1)
    # windows (rows, cols) in the image: ({0},{0}), ({0},{1,2}), ({1,2},{0}), ({1,2},{1,2})
    expected = np.array([[1, 2 + 3], [4 + 7, 5 + 6 + 8 + 9]]) + 0.5
    np.testing.assert_array_equal(y[0, 0], expected)


def test_groups_are_independent():
    # Changing group 1's input channels must not change group 0's outputs.
    rng = np.random.default_rng(2)
    x, w, b, kw = make(rng, (2, 4, 7, 7, 6, 3, 3, 1, 1, 2))
    y1, _ = conv_forward(x, w, b, **kw)
    x2 = x.copy()
    x2[:, 2:] += 1.0
    y2, _ = conv_forward(x2, w, b, **kw)
    np.testing.assert_array_equal(y1[:, :3], y2[:, :3])
    assert np.abs(y1[:, 3:] - y2[:, 3:]).min() > 0


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("relu", [False, True])
def test_gradients(cfg, relu):
    rng = np.random.default_rng(3)
    x, w, b, kw = make(rng, cfg)
    y, _ = conv_forward(x, w, b, relu=relu, **kw)
    if relu:  # keep the pre-activation away from the kink at 0
        pre, _ = conv_forward(x, w, b, **kw)
        assert np.abs(pre).min() > 1e-4
        assert (pre > 0).any() and (pre < 0).any()
    check_layer(conv_forward, conv_backward, (x, w, b), dict(relu=relu, **kw),
                names=["x", "w", "b"])


@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[4]])   # im2col, Winograd
def test_float32_backward_matches_float64(cfg):
    rng = np.random.default_rng(4)
    x, w, b, kw = make(rng, cfg)
    dy = rng.standard_normal(conv_forward(x, w, b, **kw)[0].shape)
    g64 = conv_backward(dy, conv_forward(x, w, b, relu=True, **kw)[1])
    g32 = conv_backward(dy.astype(np.float32), conv_forward(
        x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), relu=True, **kw)[1])
    for a, e in zip(g32, g64):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args, match", [
    (dict(x=(2, 5, 7, 7)), r"conv1: x must have shape \(N, 6, H, W\)"),
    (dict(x=(6, 7, 7)), r"conv1: x must be .*\(N, C, H, W\)"),
    (dict(b=(5,)), r"conv1: b must have shape \(6,\)"),
    (dict(w=(6, 3, 9, 9)), r"conv1: kernel 9x9 does not fit"),
    (dict(w=(5, 3, 3, 3)), r"conv1: .*K = 5.*divisible by group = 2"),
    (dict(dtype=np.int32), r"conv1: x must be a float32 or float64 array"),
])
def test_bad_input_names_layer_and_shape(args, match):
    x = np.ones(args.get("x", (2, 6, 7, 7)), dtype=args.get("dtype", np.float32))
    w = np.ones(args.get("w", (6, 3, 3, 3)), dtype=np.float32)
    b = np.ones(args.get("b", (w.shape[0],)), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        conv_forward(x, w, b, pad=0, group=2, layer="conv1")


def test_mixed_dtypes_and_bad_dy_rejected():
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((2, 2, 3, 3), np.float64)
    with pytest.raises(ValueError, match="conv: w has dtype float64 but x has float32"):
        conv_forward(x, w, np.ones(2, np.float32))
    _, cache = conv_forward(x, w.astype(np.float32), np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 2, 3, 3\)"):
        conv_backward(np.ones((1, 2, 3, 4), np.float32), cache)
    with pytest.raises(ValueError, match="conv_backward: dy has dtype float64 but the forward "
                                         "ran in float32"):
        conv_backward(np.ones((1, 2, 3, 3)), cache)


@pytest.mark.parametrize("cfg", [CONFIGS[2], CONFIGS[4]])   # im2col, Winograd
def test_need_dx_or_dw_false_skips_only_that(cfg):
    rng = np.random.default_rng(5)
    x, w, b, kw = make(rng, cfg, np.float32)
    y, cache = conv_forward(x, w, b, relu=True, **kw)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = conv_backward(dy, cache)
    none, dw2, db2 = conv_backward(dy, cache, need_dx=False)
    assert dx is not None and none is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)
    dx3, none_w, none_b = conv_backward(dy, cache, need_dw=False)
    assert none_w is None and none_b is None
    np.testing.assert_array_equal(dx3, dx)
    with pytest.raises(ValueError, match="conv_backward: need_dx and need_dw are both False"):
        conv_backward(dy, cache, need_dx=False, need_dw=False)


WINOGRAD_CONFIGS = [  # 3x3 at stride 1: odd and even sizes, pads 0-2, groups, one image
    (2, 4, 6, 8, 6, 3, 3, 1, 1, 2),
    (1, 3, 7, 5, 4, 3, 3, 1, 0, 1),
    (3, 6, 5, 9, 9, 3, 3, 1, 2, 3),
    (2, 2, 3, 3, 3, 3, 3, 1, 1, 1),
    (1, 2, 4, 5, 2, 3, 3, 1, 3, 1),    # pad 3: outputs larger than the input
]


def run_algorithms(cfg, relu, algorithms, seed):
    """{algorithm: (y, dx, dw, db)} of one float64 case, the same x, w, b and dy for each."""
    x, w, b, kw = make(np.random.default_rng(seed), cfg)
    results = {}
    for algorithm in algorithms:
        y, cache = conv_forward(x, w, b, relu=relu, algorithm=algorithm, **kw)
        assert cache['algorithm'] == algorithm
        dy = np.random.default_rng(seed + 1).standard_normal(y.shape)
        results[algorithm] = (y,) + conv_backward(dy, cache)
    return results


@pytest.mark.parametrize("cfg", WINOGRAD_CONFIGS)
@pytest.mark.parametrize("relu", [False, True])
def test_winograd_and_im2col_agree(cfg, relu):
    """Both algorithms give the same y, dx, dw and db (float64: to rounding)."""
    from nn.conv import conv_algorithm
    assert conv_algorithm(cfg[5:7], cfg[7]) == 'winograd'
    results = run_algorithms(cfg, relu, ('im2col', 'winograd'), seed=11)
    for a, e in zip(results['winograd'], results['im2col']):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


def test_winograd_takes_fortran_ordered_arrays():
    """x, w and dy in Fortran order (not C-contiguous) give the C-ordered arrays' results."""
    rng = np.random.default_rng(13)
    x, w, b, kw = make(rng, WINOGRAD_CONFIGS[0])
    y, cache = conv_forward(x, w, b, **kw)
    dy = rng.standard_normal(y.shape)
    want = (y,) + conv_backward(dy, cache)

    def view(a):   # same values, reversed axis order in memory
        return np.asfortranarray(a)
    assert not view(x).flags.c_contiguous
    yv, cache_v = conv_forward(view(x), view(w), b, **kw)
    got = (yv,) + conv_backward(view(dy), cache_v)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


DFT_CONFIGS = [  # stride 1: odd and even sizes, square or not, pads 0-3, groups, one image
    (2, 4, 9, 9, 6, 5, 5, 1, 2, 2),     # conv2-like
    (1, 3, 7, 10, 4, 4, 3, 1, 0, 1),
    (3, 6, 6, 5, 9, 3, 3, 1, 3, 3),     # pad 3: outputs larger than the input
    (2, 2, 8, 7, 3, 6, 2, 1, 1, 1),
    (1, 2, 5, 6, 2, 1, 1, 1, 1, 2),
]


@pytest.mark.parametrize("cfg", DFT_CONFIGS)
@pytest.mark.parametrize("relu", [False, True])
def test_dft_and_im2col_agree(cfg, relu):
    """The DFT path gives im2col's y (float64: to rounding) and, its backward being
    im2col's from the kept input, the same dx, dw and db."""
    results = run_algorithms(cfg, relu, ('im2col', 'dft'), seed=14)
    np.testing.assert_allclose(results['dft'][0], results['im2col'][0], rtol=1e-12,
                               atol=1e-12 * np.abs(results['im2col'][0]).max())
    for a, e in zip(results['dft'][1:], results['im2col'][1:]):
        np.testing.assert_array_equal(a, e)


def test_dft_backward_rebuilds_the_column_matrix_only_for_dw(monkeypatch):
    """dx alone (need_dw=False, bench.py's backward_data) needs no column matrix: the DFT
    path does not rebuild it from x then, and dx is still im2col's."""
    import nn.conv
    x, w, b, kw = make(np.random.default_rng(17), DFT_CONFIGS[0])
    y, cache = conv_forward(x, w, b, algorithm='dft', **kw)
    dy = np.random.default_rng(18).standard_normal(y.shape)
    dx_all, _, _ = conv_backward(dy, cache)

    def no_im2col(*args, **kwargs):
        raise AssertionError("im2col ran for dx alone")
    monkeypatch.setattr(nn.conv, "im2col", no_im2col)
    dx, dw, db = conv_backward(dy, cache, need_dw=False)
    assert dw is None and db is None
    np.testing.assert_array_equal(dx, dx_all)


@pytest.mark.parametrize("cfg", DFT_CONFIGS[:2])
def test_dft_gradients_match_finite_differences(cfg):
    rng = np.random.default_rng(16)
    x, w, b, kw = make(rng, cfg)
    check_layer(conv_forward, conv_backward, [x, w, b],
                dict(relu=True, algorithm='dft', **kw), names=["x", "w", "b"])


def test_algorithm_choice_and_errors():
    from nn.conv import conv_algorithm, conv_algorithms, dft_saving
    assert conv_algorithm((3, 3), 1) == 'winograd'
    assert conv_algorithm((3, 3), 1, batch=64, out_shape=(13, 13)) == 'winograd'
    assert conv_algorithm((3, 3), 1, 'im2col') == 'im2col'
    # conv2 (5x5 on 27x27, pad 2, 256 x 48 filters): the DFT from a batch of 8 (a saving
    # of 3.58); non-square kernels and outputs too.
    assert dft_saving((5, 5), (27, 27), 8) == pytest.approx(25 * 729 * 8 / (992 * 41))
    conv2 = dict(out_shape=(27, 27), filters=256 * 48)
    for batch in (8, 16, 256):
        assert conv_algorithm((5, 5), 1, batch=batch, **conv2) == 'dft'
    assert conv_algorithm((6, 5), 1, batch=16, out_shape=(27, 30), filters=9) == 'dft'
    for shape, stride, batch, more in (
            ((5, 5), 1, 7, conv2),                                # too small a batch
            ((5, 5), 1, None, conv2),                             # not known
            ((5, 5), 1, 64, dict(out_shape=None, filters=9)),
            ((5, 5), 1, 64, dict(out_shape=(27, 27), filters=None)),
            ((6, 6), 1, 8, dict(out_shape=(1, 1), filters=9)),    # one output
            ((6, 6), 1, 64, dict(out_shape=(8, 8), filters=4096 * 256)),   # fc6, 760 MB
            ((3, 3), 2, 64, conv2), ((3, 5), 1, 64, conv2), ((4, 4), 1, 64, conv2),
            ((11, 11), 4, 64, dict(out_shape=(55, 55), filters=96 * 3))):
        assert conv_algorithm(shape, stride, batch=batch, **more) == 'im2col'
    assert conv_algorithm((6, 6), 1, batch=64, out_shape=(8, 8), filters=9) == 'dft'
    # conv_forward passes the batch, the output size and the filters: a kernel covering
    # its whole input stays im2col.
    _, cache = conv_forward(np.ones((8, 2, 6, 6)), np.ones((3, 2, 6, 6)), np.ones(3))
    assert cache['algorithm'] == 'im2col'
    _, cache = conv_forward(np.ones((8, 2, 27, 27)), np.ones((3, 2, 5, 5)), np.ones(3),
                            pad=2)
    assert cache['algorithm'] == 'dft'
    assert conv_algorithms((3, 3), 1) == ('im2col', 'winograd', 'dft')
    assert conv_algorithms((5, 5), 1) == ('im2col', 'dft')
    assert conv_algorithms((11, 11), 4) == ('im2col',)
    x = np.ones((1, 2, 7, 7), np.float32)
    w, b = np.ones((2, 2, 5, 5), np.float32), np.ones(2, np.float32)
    with pytest.raises(ValueError, match="conv2: algorithm 'winograd' needs a 3x3 kernel at "
                                         "stride 1, got a 5x5 kernel at stride 1"):
        conv_forward(x, w, b, algorithm='winograd', layer='conv2')
    with pytest.raises(ValueError, match="conv2: algorithm 'dft' needs stride 1, got a 5x5 "
                                         "kernel at stride 2"):
        conv_forward(x, w, b, stride=2, algorithm='dft', layer='conv2')
    with pytest.raises(ValueError, match="conv2: algorithm must be None or one of 'im2col', "
                                         "'winograd', 'dft', got 'fft'"):
        conv_forward(x, w, b, algorithm='fft', layer='conv2')
