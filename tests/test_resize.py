"""nn/resize.py: OpenCV's INTER_LINEAR on uint8, checked by hand, against float64 and cv2.

The hand-worked cases below follow the rules in nn/resize.py's docstring step by step; the
float64 reference uses the same geometry with exact arithmetic; the cv2 test (skipped when
OpenCV is not installed, as in CI) compares bit for bit with the real thing.
"""
import numpy as np
import pytest

from nn.resize import column_taps, resize_linear, row_taps, source_positions


def _rng(seed=0):
    return np.random.default_rng(seed)


def _interp_matrix(src_size, dst_size):
    """float64 (dst_size, src_size) matrix of OpenCV's linear geometry, exact weights:
    p = (d + 0.5) * src / dst - 0.5, edge pixels replicated outside the image."""
    m = np.zeros((dst_size, src_size))
    for d in range(dst_size):
        p = (d + 0.5) * src_size / dst_size - 0.5
        i = int(np.floor(p))
        f = p - i
        m[d, min(max(i, 0), src_size - 1)] += 1 - f
        m[d, min(max(i + 1, 0), src_size - 1)] += f
    return m


def _float_reference(img, height, width):
    """uint8 (H, W, C) -> float64 (height, width, C) bilinear with exact arithmetic."""
    rows = _interp_matrix(img.shape[0], height)
    cols = _interp_matrix(img.shape[1], width)
    return np.einsum("ai,ijc,bj->abc", rows, img.astype(np.float64), cols, optimize=True)


# --- hand-worked cases --------------------------------------------------------------------

def test_two_by_two_to_four_by_four_by_hand():
    # Positions (d + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 on both axes.
    # Columns: d=0 and d=3 are outside [0, 1): the edge pixel alone; d=1, 2 weigh
    # (0.75, 0.25) and (0.25, 0.75) = (1536, 512) and (512, 1536) / 2048. So the horizontal
    # pass gives, in 1/2048 levels, row0 [20480, 40960, 81920, 102400] (= 10, 20, 40, 50)
    # and row1 [184320, 240640, 353280, 409600] (= 90, 117.5, 172.5, 200).
    # Rows keep their weights at the edges: b = (512, 1536) of rows (0, 0), (1536, 512) of
    # (0, 1), (512, 1536) of (0, 1), (1536, 512) of (1, 1). The vertical step
    # ((b0 * (t0 >> 4)) >> 16) + ((b1 * (t1 >> 4)) >> 16), then (+2) >> 2, gives e.g. for
    # the last row, second column: (1536 * 15040 >> 16) + (512 * 15040 >> 16)
    # = 352 + 117 = 469 -> (469 + 2) >> 2 = 117 (exact rounding of 117.5 would give 118).
    src = np.array([[10, 50], [90, 200]], np.uint8)
    expected = np.array([[10, 20, 40, 50],
                         [30, 44, 73, 88],
                         [70, 93, 139, 163],
                         [90, 117, 172, 200]], np.uint8)
    out = resize_linear(src, 4, 4)
    assert out.dtype == np.uint8 and out.shape == (4, 4)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(resize_linear(src[:, :, None], 4, 4), expected[:, :, None])


def test_halving_is_the_rounded_mean_of_each_two_by_two_block():
    # 4x4 -> 2x2: positions 0.5 and 2.5, weights 1024/1024 on both axes. Horizontal:
    # t = 1024 (a + b); t >> 4 = 64 (a + b); (1024 * 64 (a + b)) >> 16 = a + b, so the
    # output is (a + b + c + d + 2) >> 2: the block mean rounded half up.
    src = _rng(1).integers(1, 256, size=(4, 6, 3), dtype=np.uint8)
    src[0:2, 0:2, 0] = [[1, 2], [3, 4]]          # a mean of exactly 2.5 -> 3
    blocks = src.reshape(2, 2, 3, 2, 3).astype(np.int64).sum(axis=(1, 3))
    out = resize_linear(src, 2, 3)
    np.testing.assert_array_equal(out, (blocks + 2) >> 2)
    assert out[0, 0, 0] == 3


def test_three_to_five_columns_by_hand():
    # Positions (d + 0.5) * 0.6 - 0.5 = -0.2, 0.4, 1.0, 1.6, 2.2. d=0 and d=4 are edges;
    # d=2 hits pixel 1 exactly; d=1 weighs (0.6, 0.4) -> float32 * 2048 rounded = (1229, 819),
    # d=3 (0.4, 0.6) -> (819, 1229). One row: out = round(t / 2048):
    # 20 * 1229 + 100 * 819 = 106480 -> 51.99 -> 52; 100 * 819 + 180 * 1229 = 303120 -> 148.
    x0, x1, a0, a1 = column_taps(3, 5)
    np.testing.assert_array_equal(x0, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(a0, [2048, 1229, 2048, 819, 2048])
    np.testing.assert_array_equal(a1, [0, 819, 0, 1229, 0])
    out = resize_linear(np.array([[20, 100, 180]], np.uint8), 1, 5)
    np.testing.assert_array_equal(out, [[20, 52, 100, 148, 180]])     # still a ramp
    # the same along the other axis: rows keep (1229, 819)-style weights too
    y0, y1, b0, b1 = row_taps(3, 5)
    np.testing.assert_array_equal(y0, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(y1, [0, 1, 2, 2, 2])
    np.testing.assert_array_equal(b1, [1638, 819, 0, 1229, 410])      # 0.8, 0.4, 0, 0.6, 0.2
    out = resize_linear(np.array([[20], [100], [180]], np.uint8), 5, 1)
    np.testing.assert_array_equal(out[:, 0], [20, 52, 100, 148, 180])


def test_enlarging_by_four_uses_the_documented_weights():
    # scale 1/4: p = d / 4 - 0.375, fractions cycle 0.625, 0.875, 0.125, 0.375 (all exact in
    # binary) -> weights of the right pixel 1280, 1792, 256, 768; the first two and the last
    # two outputs lie outside [0, 4) and copy the edge pixel.
    left, frac = source_positions(5, 20)
    np.testing.assert_array_equal(left, [-1, -1] + [i for i in range(4) for _ in range(4)]
                                  + [4, 4])
    x0, x1, a0, a1 = column_taps(5, 20)
    np.testing.assert_array_equal(a1, [0, 0] + [256, 768, 1280, 1792] * 4 + [0, 0])
    np.testing.assert_array_equal(a0 + a1, 2048)
    src = _rng(2).integers(1, 256, size=(1, 5, 3), dtype=np.uint8)
    s = src[0].astype(np.int64)
    out = resize_linear(src, 1, 20)[0].astype(np.int64)
    # one row (scale 1 vertically): out = (t + 1024) >> 11, t = s[i] * (2048 - w) + s[i+1] * w
    for d in range(2, 18):
        i, w = (d - 2) // 4, [256, 768, 1280, 1792][(d - 2) % 4]
        np.testing.assert_array_equal(out[d], (s[i] * (2048 - w) + s[i + 1] * w + 1024) >> 11)
    np.testing.assert_array_equal(out[:2], s[[0, 0]])
    np.testing.assert_array_equal(out[18:], s[[4, 4]])


def test_positions_are_rounded_to_float32_like_opencv():
    # 74 -> 75 columns, output 68: p = 68.5 * 74 / 75 - 0.5 = 67.08666... In float32 (step
    # 2**-17 between 64 and 128) that is 67 + 11360 / 2**17 = 67.086669921875, whose
    # fraction is exactly 177.5 / 2048, and 1 - it is 1870.5 / 2048: both round to even,
    # giving (1870, 178). In float64 the weights would be (1871, 177).
    x0, x1, a0, a1 = column_taps(74, 75)
    assert (x0[68], x1[68], a0[68], a1[68]) == (67, 68, 1870, 178)
    # with pixels 0 and 52 there: (52 * 178 + 1024) >> 11 = 5, where (1871, 177) gives 4
    row = np.zeros((1, 74), np.uint8)
    row[0, 68] = 52
    assert resize_linear(row, 1, 75)[0, 68] == 5


def test_constant_image_stays_constant():
    # weights add up to 2048, and the vertical truncations lose less than one 1/4 level
    for seed, (h, w, oh, ow) in enumerate([(7, 13, 29, 5), (31, 3, 2, 17), (1, 1, 9, 4)]):
        value = _rng(seed).integers(1, 256)
        img = np.full((h, w, 3), value, np.uint8)
        np.testing.assert_array_equal(resize_linear(img, oh, ow), value)


def test_horizontal_ramp_stays_a_ramp():
    # v(x) = 3 x + 7 is linear, so inside the image the output is the ramp at the sample
    # position, v(p) = 3 p + 7, rounded (the fixed-point error is far below half a level
    # here, as the weights' 1/2048 steps times a slope of 3 are about 0.001 of a level).
    src = np.repeat((3 * np.arange(61) + 7).astype(np.uint8)[None, :, None], 4, axis=0)
    out = resize_linear(src, 4, 100)[0, :, 0].astype(np.float64)
    p = (np.arange(100) + 0.5) * 61 / 100 - 0.5
    ramp = 3 * np.clip(p, 0, 60) + 7
    assert np.abs(out - ramp).max() <= 0.5 + 1e-3
    assert np.all(np.diff(out) >= 0)


def test_same_size_is_a_copy():
    img = _rng(3).integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    out = resize_linear(img, 9, 11)
    np.testing.assert_array_equal(out, img)
    assert not np.shares_memory(out, img)


def test_channels_are_independent_and_grey_is_accepted():
    img = _rng(4).integers(0, 256, size=(23, 17, 4), dtype=np.uint8)
    out = resize_linear(img, 31, 12)
    assert out.shape == (31, 12, 4)
    for c in range(4):
        np.testing.assert_array_equal(out[:, :, c], resize_linear(img[:, :, c], 31, 12))


# --- against float64 arithmetic ---------------------------------------------------------

@pytest.mark.parametrize("shape,size", [((41, 29), (17, 23)), ((13, 21), (31, 30)),
                                        ((375, 500), (256, 256)), ((1, 9), (5, 4))])
def test_close_to_exact_bilinear_with_opencv_geometry(shape, size):
    img = _rng(5).integers(0, 256, size=shape + (3,), dtype=np.uint8)
    exact = _float_reference(img, *size)
    out = resize_linear(img, *size).astype(np.float64)
    # Error budget (derived in nn/resize.py's terms): rounded weights (+-0.5/2048 plus the
    # float32 position) cost < 0.072 level per pass; the vertical truncations (t >> 4 and
    # the >> 16 of each product) lose < 2.03 quarter-levels; (acc + 2) >> 2 then rounds
    # half up. So -1.15 < out - exact <= 0.65.
    err = out - exact
    assert err.min() > -1.15 and err.max() <= 0.65
    # the comparison is sharp enough to tell the geometry: corner-aligned sampling
    # (p = d * (src - 1) / (dst - 1)) is several levels off on random pixels
    if min(shape) > 1:
        def aligned(n_in, n_out):
            p = np.arange(n_out) * (n_in - 1) / (n_out - 1)
            i = np.minimum(np.floor(p).astype(int), n_in - 2)
            m = np.zeros((n_out, n_in))
            m[np.arange(n_out), i] = 1 - (p - i)
            m[np.arange(n_out), i + 1] += p - i
            return m
        other = np.einsum("ai,ijc,bj->abc", aligned(shape[0], size[0]), img.astype(float),
                          aligned(shape[1], size[1]), optimize=True)
        assert np.abs(other - exact).max() > 2.0


# --- against OpenCV (skipped where cv2 is not installed) ---------------------------------

def test_bit_exact_against_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = _rng(6)
    cases = [((375, 500), (256, 256)), ((500, 375), (256, 256)), ((48, 64), (256, 256)),
             ((227, 227), (451, 451)), ((256, 256), (128, 128)), ((1, 1), (3, 5)),
             ((1, 7), (4, 1)), ((7, 1), (1, 4)), ((2, 2), (4, 4)), ((3, 1), (5, 1)),
             ((1000, 3), (17, 301)), ((33, 257), (255, 257))]
    cases += [(tuple(rng.integers(1, 300, 2)), tuple(rng.integers(1, 300, 2)))
              for _ in range(40)]
    for (h, w), (oh, ow) in cases:
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        expected = cv2.resize(img, (int(ow), int(oh)), interpolation=cv2.INTER_LINEAR)
        got = resize_linear(img, oh, ow)
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected, err_msg=f"{(h, w)} -> {(oh, ow)}")


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("img", [np.zeros((4, 4, 3), np.float32), np.zeros((4,), np.uint8),
                                 np.zeros((0, 4, 3), np.uint8),
                                 np.zeros((2, 4, 4, 3), np.uint8)])
def test_rejects_bad_images(img):
    with pytest.raises(ValueError, match=r"resize_linear: expected a non-empty uint8 image "
                                         r"\(H, W, C\)"):
        resize_linear(img, 3, 3)


@pytest.mark.parametrize("size", [(0, 3), (3, -1), (2.5, 3)])
def test_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="resize_linear: height and width must be positive"):
        resize_linear(np.zeros((4, 4, 3), np.uint8), *size)
