"""nn/preprocess.py: colour modes, EXIF, errors, OpenCV linear resize, BGR/mean/CHW, crops."""
import struct

import numpy as np
import pytest
from PIL import Image

from nn import preprocess as pp
from nn.resize import resize_linear

MEAN = np.array([104.0070, 116.6688, 122.6789])


def _rng(seed=0):
    return np.random.default_rng(seed)


def _save(tmp_path, img, name, **kw):
    path = str(tmp_path / name)
    img.save(path, **kw)
    return path


# --- colour modes ---------------------------------------------------------------------

def test_rgb_png_is_read_exactly(tmp_path):
    rgb = _rng(1).integers(1, 256, size=(23, 37, 3), dtype=np.uint8)
    out = pp.load_image(_save(tmp_path, Image.fromarray(rgb), "a.png"))
    assert out.dtype == np.uint8 and out.shape == (23, 37, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grey_and_bilevel_are_replicated(tmp_path):
    grey = _rng(2).integers(1, 256, size=(19, 13), dtype=np.uint8)
    out = pp.load_image(_save(tmp_path, Image.fromarray(grey, "L"), "g.png"))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    bits = grey > 128
    out = pp.load_image(_save(tmp_path, Image.fromarray(bits), "b.png"))
    np.testing.assert_array_equal(out, np.repeat(np.where(bits, 255, 0)[..., None], 3, 2))


def test_palette_is_expanded(tmp_path):
    rng = _rng(3)
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, size=(11, 17), dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette.ravel().tolist())
    out = pp.load_image(_save(tmp_path, img, "p.png"))
    np.testing.assert_array_equal(out, palette[index])


def test_alpha_is_dropped_not_composited(tmp_path):
    rng = _rng(4)
    rgba = rng.integers(1, 256, size=(15, 9, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(0, 256, size=(15, 9))   # includes fully transparent pixels
    out = pp.load_image(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    np.testing.assert_array_equal(out, rgba[..., :3])
    la = rgba[..., [0, 3]]
    out = pp.load_image(_save(tmp_path, Image.fromarray(la, "LA"), "la.png"))
    np.testing.assert_array_equal(out, np.repeat(la[..., :1], 3, axis=2))


def test_cmyk_with_no_black_inverts(tmp_path):
    cmyk = _rng(5).integers(0, 256, size=(7, 12, 4), dtype=np.uint8)
    cmyk[..., 3] = 0   # no black ink: R = 255 - C, G = 255 - M, B = 255 - Y by hand
    out = pp.load_image(_save(tmp_path, Image.fromarray(cmyk, "CMYK"), "c.tif"))
    np.testing.assert_array_equal(out, 255 - cmyk[..., :3])


def test_sixteen_bit_keeps_the_high_byte(tmp_path):
    grey16 = _rng(6).integers(0, 65536, size=(9, 14), dtype=np.uint16)
    path = _save(tmp_path, Image.fromarray(grey16), "g16.png")
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")      # Pillow opens 16-bit PNGs in one of these
    expected = np.repeat((grey16 >> 8).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(pp.load_image(path), expected)
    # mode I (32-bit) holding 16-bit values, and out-of-range values clipped
    as_i = grey16.astype(np.int32)
    as_i[0, 0], as_i[0, 1] = -5, 70000
    out = pp.load_image(_save(tmp_path, Image.fromarray(as_i, "I"), "i.tif"))
    expected = (np.clip(as_i, 0, 65535) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 1], expected)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255


def test_exif_orientation_is_applied(tmp_path):
    rgb = _rng(7).integers(1, 256, size=(5, 8, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6          # "rotate 90 degrees clockwise to display"
    out = pp.load_image(_save(tmp_path, img, "e.png", exif=exif))
    assert out.shape == (8, 5, 3)
    # clockwise by hand: displayed[i, j] = stored[H - 1 - j, i]
    expected = np.empty((8, 5, 3), np.uint8)
    for i in range(8):
        for j in range(5):
            expected[i, j] = rgb[5 - 1 - j, i]
    np.testing.assert_array_equal(out, expected)


# Every EXIF orientation, by hand: displayed[i, j] in terms of the stored (H, W) pixels.
_DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                       # mirrored left-right
    3: lambda a: a[::-1, ::-1],                    # turned 180 degrees
    4: lambda a: a[::-1, :],                       # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),             # mirrored along the main diagonal
    6: lambda a: a[::-1, :].transpose(1, 0, 2),    # turned 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
    8: lambda a: a[:, ::-1].transpose(1, 0, 2),    # turned 90 degrees counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(_DISPLAYED))
def test_every_exif_orientation(tmp_path, orientation):
    rgb = _rng(orientation).integers(1, 256, size=(5, 8, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = orientation
    out = pp.load_image(_save(tmp_path, img, "e.png", exif=exif))
    np.testing.assert_array_equal(out, _DISPLAYED[orientation](rgb))


def _tiff_exif(entries, tail):
    """Raw big-endian EXIF (the "Exif" marker, then TIFF): one IFD of (tag, type, count,
    4 value bytes) entries, followed by `tail` (data the entries point to, from offset
    8 + 2 + 12 * len(entries) + 4)."""
    ifd = struct.pack(">H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack(">HHI", tag, kind, count) + value
    return b"Exif\0\0" + b"MM\0\x2a" + struct.pack(">I", 8) + ifd + b"\0\0\0\0" + tail


def test_malformed_exif_keeps_the_orientation_it_can_read(tmp_path):
    # Tag 0x010a (FillOrder, a SHORT in the TIFF spec) holding ASCII text: Pillow's
    # ImageOps.exif_transpose fails re-writing such a block (struct.error); the pixels and
    # the orientation tag are fine.
    rgb = _rng(9).integers(1, 256, size=(5, 8, 3), dtype=np.uint8)
    tail_offset = 8 + 2 + 12 * 2 + 4
    exif = _tiff_exif([(0x010a, 2, 6, tail_offset.to_bytes(4, "big")),
                       (0x0112, 3, 1, b"\0\x06\0\0")], b"Canon\0")
    path = _save(tmp_path, Image.fromarray(rgb), "bad_exif.png", exif=exif)
    np.testing.assert_array_equal(pp.load_image(path), _DISPLAYED[6](rgb))


@pytest.mark.parametrize("content", [None, b"", b"this is not an image at all", "truncated"])
def test_unreadable_files_raise_image_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        rgb = _rng(8).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(pp.ImageError, match="bad.jpg") as info:
        pp.load_image(str(path))
    assert info.value.path == str(path)


# --- resize, channel order, mean --------------------------------------------------------

def _to_bgr_minus_mean(hwc_rgb):
    """uint8 (H, W, 3) RGB -> float32 (3, H, W) BGR minus the mean, written out by hand."""
    bgr = hwc_rgb[:, :, ::-1].astype(np.float32)
    return (bgr - MEAN.astype(np.float32)).transpose(2, 0, 1)


@pytest.mark.parametrize("shape,size", [((41, 29), 17), ((13, 21), 31), ((375, 500), 256)])
def test_resize_is_opencv_linear_then_bgr_minus_mean(shape, size):
    rgb = _rng(9).integers(0, 256, size=shape + (3,), dtype=np.uint8)
    out = pp.resize_image(rgb, size)
    assert out.shape == (3, size, size) and out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, _to_bgr_minus_mean(resize_linear(rgb, size, size)))
    # no longer Pillow's bilinear, whose shrinking filter averages a wider footprint
    pillow = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    if size < min(shape):
        assert np.abs(_to_bgr_minus_mean(pillow) - out).max() > 5


def test_resize_two_by_two_by_hand():
    # the red channel is tests/test_resize.py's hand-worked 2x2 -> 4x4 case; green and blue
    # are constant and stay so; BGR order puts red last
    rgb = np.empty((2, 2, 3), np.uint8)
    rgb[:, :, 0] = [[10, 50], [90, 200]]
    rgb[:, :, 1], rgb[:, :, 2] = 77, 3
    red = np.array([[10, 20, 40, 50], [30, 44, 73, 88], [70, 93, 139, 163],
                    [90, 117, 172, 200]], np.float32)
    mean = MEAN.astype(np.float32)
    out = pp.resize_image(rgb, 4)
    np.testing.assert_array_equal(out[2], red - mean[2])
    np.testing.assert_array_equal(out[1], np.float32(77) - mean[1])
    np.testing.assert_array_equal(out[0], np.float32(3) - mean[0])


def test_resize_matches_caffe_opencv_pipeline():
    # Caffe: cv::imread gives BGR, cv::resize(INTER_LINEAR), then subtract the mean
    cv2 = pytest.importorskip("cv2")
    rgb = _rng(12).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (256, 256),
                     interpolation=cv2.INTER_LINEAR)
    expected = (bgr.astype(np.float32) - MEAN.astype(np.float32)).transpose(2, 0, 1)
    np.testing.assert_array_equal(pp.resize_image(rgb), expected)


def test_constant_colour_gives_bgr_minus_mean():
    rgb = np.empty((31, 45, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    out = pp.resize_image(rgb, 19)
    expected = np.array([50 - 104.0070, 100 - 116.6688, 200 - 122.6789], np.float32)
    # float32 arithmetic: within one float32 ulp of the exact value
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape),
                               rtol=0, atol=8e-6)
    assert pp.MEAN_BGR == (104.0070, 116.6688, 122.6789)


def test_load_resized_any_size(tmp_path):
    rgb = _rng(10).integers(0, 256, size=(27, 35, 3), dtype=np.uint8)
    path = _save(tmp_path, Image.fromarray(rgb), "x.png")
    np.testing.assert_array_equal(pp.load_resized(path, 33), pp.resize_image(rgb, 33))
    m = pp.load_resized(path, 45)   # the sentiment map's whole-image resize
    assert m.shape == (3, 45, 45)
    np.testing.assert_array_equal(m, pp.resize_image(rgb, 45))
    assert pp.load_resized(path).shape == (3, 256, 256)


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError, match="resize_image.*H, W, 3"):
        pp.resize_image(np.zeros((4, 4), np.uint8), 8)
    with pytest.raises(ValueError, match="resize_image"):
        pp.resize_image(np.zeros((4, 4, 3), np.float32), 8)


# --- crops -------------------------------------------------------------------------------

def _coded(h, w):
    """(3, h, w) image whose values encode (channel, row, column)."""
    c, y, x = np.mgrid[0:3, 0:h, 0:w]
    return (c * 10000 + y * 100 + x).astype(np.float32)


def test_center_crop_offsets():
    img = _coded(9, 12)
    out = pp.center_crop(img, 5)
    # (9 - 5) // 2 = 2, (12 - 5) // 2 = 3
    np.testing.assert_array_equal(out, img[:, 2:7, 3:8])
    assert pp.center_crop(np.zeros((3, 256, 256), np.float32)).shape == (3, 227, 227)


def test_ten_crops_follow_caffe_oversample_order():
    img = _coded(7, 9)
    out = pp.ten_crops(img, 4)
    assert out.shape == (10, 3, 4, 4) and out.flags.c_contiguous
    windows = [img[:, 0:4, 0:4], img[:, 0:4, 5:9], img[:, 3:7, 0:4], img[:, 3:7, 5:9],
               img[:, 1:5, 2:6]]
    for k, window in enumerate(windows):
        np.testing.assert_array_equal(out[k], window)
        np.testing.assert_array_equal(out[k + 5], window[:, :, ::-1])
    # Caffe computes the centre as int(H / 2 - crop / 2): same as (H - crop) // 2
    for h in range(227, 300):
        assert int(h / 2.0 - 227 / 2.0) == (h - 227) // 2


def test_random_crop_covers_every_offset_and_mirrors_half_the_time():
    img = _coded(9, 11)
    rng = np.random.default_rng(11)
    seen, flips, n = set(), 0, 600
    for _ in range(n):
        out = pp.random_crop(img, rng, 5)
        flipped = out[0, 0, 0] > out[0, 0, -1]
        window = out[:, :, ::-1] if flipped else out
        top, left = int(window[0, 0, 0]) // 100, int(window[0, 0, 0]) % 100
        np.testing.assert_array_equal(window, img[:, top:top + 5, left:left + 5])
        seen.add((top, left))
        flips += flipped
    assert seen == {(t, l) for t in range(5) for l in range(7)}
    assert 0.4 < flips / n < 0.6
    no_mirror = [pp.random_crop(img, np.random.default_rng(s), 5, mirror=False)
                 for s in range(50)]
    assert all(o[0, 0, 0] < o[0, 0, -1] for o in no_mirror)


def test_random_crop_without_mirror_keeps_the_same_windows():
    # the mirror coin is drawn even when mirror=False: the same generator then gives the
    # same sequence of windows with mirroring on or off (only the flips differ)
    img = _coded(9, 11)
    seed = int(np.random.default_rng().integers(2**32))
    on, off = np.random.default_rng(seed), np.random.default_rng(seed)
    for _ in range(5):
        a = pp.random_crop(img, on, 5, mirror=True)
        b = pp.random_crop(img, off, 5, mirror=False)
        assert b[0, 0, 0] < b[0, 0, -1]                  # never mirrored
        window = a[:, :, ::-1] if a[0, 0, 0] > a[0, 0, -1] else a
        np.testing.assert_array_equal(window, b, err_msg=f"seed {seed}")


def test_crops_reject_small_or_malformed_images():
    with pytest.raises(ValueError, match="center_crop.*smaller than the crop 227"):
        pp.center_crop(np.zeros((3, 200, 256), np.float32))
    with pytest.raises(ValueError, match="ten_crops: expected a preprocessed image"):
        pp.ten_crops(np.zeros((256, 256, 3), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        pp.crop_image(_coded(9, 9), 5, 0, 5)


def test_average_over_crops_is_one_forward_then_the_mean_per_image():
    rng = np.random.default_rng(3)
    crops = rng.standard_normal((2, 10, 3, 4, 4)).astype(np.float32)
    calls = []

    def predict(x):                       # (N, 3, 4, 4) -> (N, 2, 1, 1), like a fully conv net
        calls.append(x.shape)
        return np.stack([x.mean(axis=(1, 2, 3)), x.max(axis=(1, 2, 3))], 1)[:, :, None, None]

    out = pp.average_over_crops(predict, crops)
    assert calls == [(20, 3, 4, 4)] and out.shape == (2, 2)
    for i in range(2):
        np.testing.assert_array_equal(out[i], predict(crops[i])[:, :, 0, 0].mean(axis=0))
    # The centre crop is the ten crops' CENTER_OF_TEN.
    img = _coded(7, 9)
    np.testing.assert_array_equal(pp.ten_crops(img, 4)[pp.CENTER_OF_TEN], pp.center_crop(img, 4))


def test_crop_image_refuses_every_window_that_does_not_fit():
    img = _coded(9, 11)
    for top, left in ((0, 7), (0, -1), (5, 0), (-1, 0), (5, 7)):    # a 5-crop fits up to (4, 6)
        with pytest.raises(ValueError, match="does not fit"):
            pp.crop_image(img, top, left, 5)
    np.testing.assert_array_equal(pp.crop_image(img, 4, 6, 5), img[:, 4:9, 6:11])
