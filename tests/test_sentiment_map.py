"""Sentiment-map rendering (nn/sentiment_map.py) against hand-worked cases and independent code.

The independent computations: a per-pixel Python loop for the paper style, Pillow's own
bilinear resize for the smooth style, and Caffe's layer arithmetic for the grid size.
"""
import math
import os

import numpy as np
import pytest
from PIL import Image

from nn import sentiment_map as sm


def _random_case(seed, height, width, h, w):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    p_pos = rng.uniform(0.02, 0.98, size=(h, w))
    probs = np.stack([1 - p_pos, p_pos]).astype(np.float32)       # class 0 negative, 1 positive
    return image, probs


# ---------------------------------------------------------------- grid size


def _caffe_grid(size):
    """Cells per side from CaffeNet's layers: conv1 11/4, three 3/2 pools (ceil), fc6 as 6x6."""
    side = (size - 11) // 4 + 1
    for _ in range(3):                       # pool1, pool2, pool5 (convs 2-5 keep the size)
        side = math.ceil((side - 3) / 2) + 1
    return side - 6 + 1


def test_map_grid_size_matches_caffe_layer_arithmetic():
    assert sm.map_grid_size(451) == 8 and sm.map_grid_size(227) == 1
    for size in range(227, 1200):
        assert sm.map_grid_size(size) == _caffe_grid(size), size


def test_map_grid_size_rejects_small():
    with pytest.raises(ValueError, match="at least 227"):
        sm.map_grid_size(226)


# ---------------------------------------------------------------- helpers


def test_class_indices():
    assert sm.class_indices(['negative', 'positive']) == (0, 1)
    assert sm.class_indices(['Positive', 'Negative']) == (1, 0)
    assert sm.class_indices(['a', 'b']) == (0, 1)
    assert sm.class_indices(['x', 'positive', 'y', 'negative']) == (3, 1)
    with pytest.raises(ValueError, match="two-class"):
        sm.class_indices(['a', 'b', 'c'])


def test_nearest_index_hand_worked():
    assert sm.nearest_index(5, 2).tolist() == [0, 0, 0, 1, 1]
    assert sm.nearest_index(7, 7).tolist() == list(range(7))
    assert sm.nearest_index(3, 8).tolist() == [0, 2, 5]          # fewer pixels than cells
    counts = np.bincount(sm.nearest_index(451, 8))
    assert counts.sum() == 451 and counts.max() - counts.min() <= 1


def test_bilinear_weights_match_pillow_resize():
    rng = np.random.default_rng(1)
    for h, w, height, width in [(3, 5, 37, 53), (8, 8, 451, 301), (1, 2, 9, 11), (2, 3, 2, 3)]:
        grid = rng.random((h, w)).astype(np.float32)
        ref = np.asarray(Image.fromarray(grid, mode='F').resize((width, height),
                                                                Image.BILINEAR))
        left, right, frac = sm.bilinear_weights(width, w)
        top, bottom, down = sm.bilinear_weights(height, h)
        rows = grid[:, left] * (1 - frac) + grid[:, right] * frac
        mine = rows[top] * (1 - down[:, None]) + rows[bottom] * down[:, None]
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-6)


def test_paper_colours_hand_worked():
    got = sm.paper_colours(np.array([0.25, 1.0]), np.array([0.75, 0.0]))
    assert got.tolist() == [[64, 191, 0], [255, 0, 0]]


def test_diverging_colours_anchors_and_midpoints():
    got = sm.diverging_colours(np.array([0.0, 0.5, 1.0, 0.05, -3.0, 7.0]))
    assert got.tolist() == [[165, 0, 38], [255, 255, 191], [0, 104, 55],
                            [190, 24, 38], [165, 0, 38], [0, 104, 55]]


def test_blend_half_rounds_halves_up():
    a = np.array([0, 1, 255, 100], dtype=np.uint8)
    b = np.array([0, 0, 255, 51], dtype=np.uint8)
    assert sm.blend_half(a, b).tolist() == [0, 1, 255, 76]


# ---------------------------------------------------------------- overlays


def _paper_by_loop(image, probs, neg, pos):
    """The paper overlay pixel by pixel, in float64, written independently of the module."""
    height, width = image.shape[:2]
    _, h, w = probs.shape
    out = np.zeros_like(image)
    for r in range(height):
        for c in range(width):
            i, j = r * h // height, c * w // width
            colour = (round(255 * float(probs[neg, i, j])), round(255 * float(probs[pos, i, j])), 0)
            for k in range(3):
                out[r, c, k] = math.floor((int(image[r, c, k]) + colour[k]) / 2 + 0.5)
    return out


@pytest.mark.parametrize("height,width,h,w", [(37, 53, 3, 5), (20, 9, 8, 8), (1, 1, 2, 2)])
def test_paper_overlay_matches_loop(height, width, h, w):
    image, probs = _random_case(2, height, width, h, w)
    got = sm.render_overlay(image, probs, 0, 1, style='paper')
    assert got.shape == image.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, _paper_by_loop(image, probs, 0, 1))


def test_paper_overlay_hand_worked():
    image = np.full((2, 4, 3), 100, dtype=np.uint8)
    probs = np.array([[[0.0, 1.0]], [[1.0, 0.0]]])                  # left cell positive
    got = sm.render_overlay(image, probs, neg_index=0, pos_index=1)
    assert got[:, :2].tolist() == [[[50, 178, 50]] * 2] * 2           # (100+0)/2, (100+255)/2
    assert got[:, 2:].tolist() == [[[178, 50, 50]] * 2] * 2


def test_paper_overlay_respects_class_order():
    image, probs = _random_case(3, 11, 13, 2, 2)
    swapped = probs[::-1].copy()
    np.testing.assert_array_equal(sm.render_overlay(image, probs, 0, 1),
                                  sm.render_overlay(image, swapped, 1, 0))


def test_banding_does_not_change_the_result(monkeypatch):
    image, probs = _random_case(4, 61, 29, 8, 8)
    whole = {s: sm.render_overlay(image, probs, style=s) for s in sm.STYLES}
    monkeypatch.setattr(sm, '_BAND_ROWS', 7)
    for style in sm.STYLES:
        np.testing.assert_array_equal(sm.render_overlay(image, probs, style=style), whole[style])


def test_smooth_overlay_matches_pillow_bilinear():
    height, width = 97, 131
    image, probs = _random_case(5, height, width, 8, 8)
    got = sm.render_overlay(image, probs, 0, 1, style='smooth')
    p_up = np.asarray(Image.fromarray(probs[1], mode='F').resize((width, height),
                                                                 Image.BILINEAR))
    expected = sm.blend_half(image, sm.diverging_colours(p_up))
    body = height - sm.legend_height(height) - 1             # rows above the legend
    # Pillow works in float32 and the module in float64: a colour may round the other way.
    diff = np.abs(got[:body].astype(int) - expected[:body])
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_smooth_overlay_legend_strip():
    height, width = 200, 90                                  # too narrow for the labels
    image, probs = _random_case(6, height, width, 2, 2)
    got = sm.render_overlay(image, probs, style='smooth')
    strip = sm.legend_height(height)
    scale = sm.diverging_colours(np.linspace(0, 1, width))
    np.testing.assert_array_equal(got[height - strip:], np.broadcast_to(scale, (strip, width, 3)))
    assert (got[height - strip - 1] == 0).all()
    # With room for them, the labels change the strip but keep red at the left, green right.
    wide = sm.render_overlay(*_random_case(6, 400, 300, 2, 2), style='smooth')
    assert wide.shape == (400, 300, 3)
    assert tuple(wide[-1, 0]) == (165, 0, 38) and tuple(wide[-1, -1]) == (0, 104, 55)


def test_bad_arguments_are_named():
    image, probs = _random_case(7, 10, 10, 2, 2)
    with pytest.raises(ValueError, match=r"image must be an \(H, W, 3\) uint8"):
        sm.render_overlay(image[..., :2], probs)
    with pytest.raises(ValueError, match="uint8"):
        sm.render_overlay(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match=r"probs must be a \(C, h, w\)"):
        sm.render_overlay(image, probs[0])
    with pytest.raises(ValueError, match="style"):
        sm.render_overlay(image, probs, style='fancy')
    with pytest.raises(ValueError, match="pos_index=2"):
        sm.render_overlay(image, probs, 0, 2)


# ---------------------------------------------------------------- files


def test_save_png_and_npy_round_trip_atomically(tmp_path):
    image, probs = _random_case(8, 13, 17, 2, 2)
    png, npy = tmp_path / 'a_map.png', tmp_path / 'a_map.npy'
    sm.save_png(str(png), image)
    sm.save_npy(str(npy), probs)
    with Image.open(png) as im:
        assert im.format == 'PNG' and im.mode == 'RGB'
        np.testing.assert_array_equal(np.asarray(im), image)
    np.testing.assert_array_equal(np.load(npy, allow_pickle=False), probs)
    assert sorted(os.listdir(tmp_path)) == ['a_map.npy', 'a_map.png']   # no temp files left


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / 'x.npy'

    def explode(f):
        f.write(b'partial')
        raise RuntimeError('disk full')

    with pytest.raises(RuntimeError):
        sm._atomic_write(str(target), explode)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- review additions (round 4)


def test_overlays_of_a_network_with_more_classes_use_the_named_ones():
    """With a third class p(negative) + p(positive) < 1: red must be p(negative) itself and
    the smooth scale p(positive) itself, not one minus the other."""
    rng = np.random.default_rng()
    height, width, h, w = 23, 31, 3, 4
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=(h, w)).transpose(2, 0, 1)   # (3, h, w)
    neg, pos = 2, 0                                   # e.g. ['positive', 'neutral', 'negative']
    np.testing.assert_array_equal(sm.render_overlay(image, probs, neg, pos, style='paper'),
                                  _paper_by_loop(image, probs, neg, pos))
    smooth = sm.render_overlay(image, probs, neg, pos, style='smooth')
    p_up = np.asarray(Image.fromarray(probs[pos].astype(np.float32), mode='F').resize(
        (width, height), Image.BILINEAR))
    expected = sm.blend_half(image, sm.diverging_colours(p_up))
    body = height - sm.legend_height(height) - 1
    diff = np.abs(smooth[:body].astype(int) - expected[:body])
    assert diff.max() <= 1 and (diff == 0).mean() > 0.95


def _text_mask(text, size):
    """Pixels Pillow's default font covers when it writes `text`, cropped to their box."""
    from PIL import ImageDraw
    canvas = Image.new('L', size, 0)
    ImageDraw.Draw(canvas).text((0, 0), text, fill=255)
    mask = np.asarray(canvas) > 0
    rows, cols = np.nonzero(mask)
    return mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _similarity(a, b):
    """Overlap / union of two boolean masks aligned at their top-left corners."""
    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    pa, pb = np.zeros((h, w), bool), np.zeros((h, w), bool)
    pa[:a.shape[0], :a.shape[1]], pb[:b.shape[0], :b.shape[1]] = a, b
    return (pa & pb).sum() / (pa | pb).sum()


def test_legend_labels_negative_at_the_red_end_and_positive_at_the_green_end():
    height, width = 400, 320
    image, probs = _random_case(9, height, width, 2, 2)
    got = sm.render_overlay(image, probs, style='smooth')
    strip = sm.legend_height(height)
    scale = np.broadcast_to(sm.diverging_colours(np.linspace(0, 1, width)), (strip, width, 3))
    drawn = (got[height - strip:] != scale).any(axis=2)       # where the labels are
    words = {w: _text_mask(w, (200, strip)) for w in ('negative', 'positive')}
    for side, word, other in ((slice(0, width // 2), 'negative', 'positive'),
                              (slice(width // 2, width), 'positive', 'negative')):
        part = drawn[:, side]
        rows, cols = np.nonzero(part)
        label = part[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert _similarity(label, words[word]) > _similarity(label, words[other]) + 0.1, word


@pytest.mark.parametrize('save, data', [(sm.save_png, np.zeros((4, 5, 3), np.uint8)),
                                        (sm.save_npy, np.zeros((2, 3, 3), np.float32))])
def test_a_write_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch, save, data):
    target = tmp_path / 'old_map'
    target.write_bytes(b'previous map')

    def fail_midway(*args, **kwargs):                 # PIL's Image.save / np.save
        dest = args[1] if args and isinstance(args[0], Image.Image) else args[0]
        if isinstance(dest, (str, os.PathLike)):
            with open(dest, 'wb') as f:
                f.write(b'partial')
        else:
            dest.write(b'partial')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(Image.Image, 'save', fail_midway)
    monkeypatch.setattr(np, 'save', fail_midway)
    with pytest.raises(OSError):
        save(str(target), data)
    assert target.read_bytes() == b'previous map' and os.listdir(tmp_path) == ['old_map']
