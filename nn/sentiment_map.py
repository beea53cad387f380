"""Sentiment maps: draw the fully convolutional network's per-cell probabilities over an image.

The fully convolutional CaffeNet turns a (size x size) input into a (C, h, w) grid of class
probabilities, one cell per 32-pixel step of a 227-pixel window. This module stretches that
grid back over the original picture and blends it in:

* ``style='paper'`` (the look of Campos et al. 2017): every cell is one flat colour,
  red = p(negative) and green = p(positive), nearest-neighbour upsampled to the image
  size and blended 50/50 with the image.
* ``style='smooth'``: p(positive) is bilinearly interpolated between cell centres and
  coloured with a red-yellow-green diverging scale, blended 50/50, with a legend strip
  along the bottom edge (red = negative ... green = positive).

Images are RGB ``uint8`` arrays of shape (H, W, 3); the output has the same shape, so the
overlay always has the input image's own size. Work is done in bands of rows so that a
tens-of-megapixels photo does not need several float copies of itself in memory.
"""
import numpy as np

from nn.atomic import atomic_write

STYLES = ('paper', 'smooth')

# ColorBrewer's 11-class RdYlGn scale, from p(positive) = 0 (dark red) to 1 (dark green).
_RDYLGN = np.array([
    (165, 0, 38), (215, 48, 39), (244, 109, 67), (253, 174, 97), (254, 224, 139),
    (255, 255, 191), (217, 239, 139), (166, 217, 106), (102, 189, 99), (26, 152, 80),
    (0, 104, 55)], dtype=np.float64)

# Rows per band: bounds the temporary memory to a few MB per band for any image width.
_BAND_ROWS = 256


def map_grid_size(size):
    """Cells per side of the map the fully convolutional CaffeNet gives for a size x size input.

    Sizes 227 + 32 k give k + 1 cells, each cell seeing one whole 227-pixel window. For other
    sizes Caffe's pooling rounds up, so one more cell appears as soon as the input is 4 pixels
    past such a size (that last cell's window is clipped at the border):
    cells = ceil((size - 230) / 32) + 1. Sizes below 227 are rejected.
    """
    size = int(size)
    if size < 227:
        raise ValueError(f"map size must be at least 227 pixels (the classifier's window), "
                         f"got {size}")
    return -(-(size - 230) // 32) + 1


def class_indices(class_names):
    """(negative index, positive index) from the weights' class names.

    A two-class network whose names are not 'negative'/'positive' follows the Twitter
    convention: label 0 = negative, label 1 = positive. Raises ValueError otherwise.
    """
    names = [str(n).lower() for n in class_names]
    if 'negative' in names and 'positive' in names:
        return names.index('negative'), names.index('positive')
    if len(names) == 2:
        return 0, 1
    raise ValueError("a sentiment map needs a two-class network or classes named 'negative' and "
                     f"'positive'; this network's classes are {list(class_names)}")


def _check_inputs(image, probs):
    """Validate an (H, W, 3) uint8 image and a (C, h, w) probability map."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"sentiment_map: image must be an (H, W, 3) uint8 RGB array, got "
                         f"shape {image.shape} dtype {image.dtype}")
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[1] < 1 or probs.shape[2] < 1:
        raise ValueError(f"sentiment_map: probs must be a (C, h, w) map, got shape {probs.shape}")
    return image, probs


def nearest_index(n_out, n_cells):
    """Cell index of each of n_out output pixels when n_cells are stretched over them: (n_out,).

    Pixel r lies in cell floor(r * n_cells / n_out), so every cell gets an equal share
    (within one pixel) of the image.
    """
    return (np.arange(n_out, dtype=np.int64) * n_cells) // n_out


def bilinear_weights(n_out, n_cells):
    """Left cell index, right cell index and right weight for each of n_out pixels: 3 x (n_out,).

    Cell i's centre sits at pixel coordinate (i + 0.5) * n_out / n_cells (pixel centres at
    r + 0.5); pixels outside the first/last centre take that cell's value (clamped).
    """
    # Position of each pixel centre in cell units, shifted so cell centres are integers.
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * n_cells / n_out - 0.5
    pos = np.clip(pos, 0.0, n_cells - 1)
    left = np.floor(pos).astype(np.int64)
    right = np.minimum(left + 1, n_cells - 1)
    return left, right, pos - left


def paper_colours(p_neg, p_pos):
    """Cell colours of the paper's maps: red = p(negative), green = p(positive).

    p_neg, p_pos (...) in [0, 1]  ->  (..., 3) uint8 with R = 255 p_neg, G = 255 p_pos, B = 0.
    """
    colours = np.zeros(np.shape(p_pos) + (3,), dtype=np.uint8)
    colours[..., 0] = np.rint(np.clip(p_neg, 0, 1) * 255)
    colours[..., 1] = np.rint(np.clip(p_pos, 0, 1) * 255)
    return colours


def diverging_colours(p_pos):
    """Red-yellow-green colour of p(positive): (...) in [0, 1]  ->  (..., 3) uint8.

    Linear interpolation between the 11 anchors of ColorBrewer's RdYlGn scale
    (0 = dark red, 0.5 = pale yellow, 1 = dark green).
    """
    p = np.clip(np.asarray(p_pos, dtype=np.float64), 0.0, 1.0)
    t = p * (len(_RDYLGN) - 1)
    lo = np.minimum(np.floor(t).astype(np.int64), len(_RDYLGN) - 2)
    frac = (t - lo)[..., None]
    rgb = _RDYLGN[lo] * (1 - frac) + _RDYLGN[lo + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def blend_half(image, colours):
    """50/50 blend of two uint8 arrays of one shape, rounding halves up: same shape, uint8."""
    return ((image.astype(np.uint16) + colours + 1) >> 1).astype(np.uint8)


def render_overlay(image, probs, neg_index=0, pos_index=1, style='paper'):
    """Blend a sentiment map over an image at the image's own size.

    image (H, W, 3) uint8 RGB, probs (C, h, w) class probabilities per cell
    ->  (H, W, 3) uint8 RGB. neg_index / pos_index pick the negative / positive class.
    style: 'paper' (flat cells, red/green) or 'smooth' (bilinear, diverging scale, legend).
    """
    image, probs = _check_inputs(image, probs)
    if style not in STYLES:
        raise ValueError(f"sentiment_map: style must be one of {STYLES}, got {style!r}")
    n_classes, h, w = probs.shape
    for name, idx in (('neg_index', neg_index), ('pos_index', pos_index)):
        if not 0 <= idx < n_classes:
            raise ValueError(f"sentiment_map: {name}={idx} is out of range for a map with "
                             f"{n_classes} classes")
    height, width = image.shape[:2]
    out = np.empty_like(image)

    if style == 'paper':
        cell_rgb = paper_colours(probs[neg_index], probs[pos_index])      # (h, w, 3)
        cols = nearest_index(width, w)
        rows = nearest_index(height, h)
        for r0 in range(0, height, _BAND_ROWS):
            r1 = min(r0 + _BAND_ROWS, height)
            band = cell_rgb[rows[r0:r1]][:, cols]                           # (r1-r0, W, 3)
            out[r0:r1] = blend_half(image[r0:r1], band)
        return out

    p_pos = probs[pos_index].astype(np.float64)
    c_left, c_right, c_frac = bilinear_weights(width, w)
    # Interpolate along the width once: (h, W); then each band interpolates down the rows.
    p_rows = p_pos[:, c_left] * (1 - c_frac) + p_pos[:, c_right] * c_frac
    r_top, r_bottom, r_frac = bilinear_weights(height, h)
    for r0 in range(0, height, _BAND_ROWS):
        r1 = min(r0 + _BAND_ROWS, height)
        f = r_frac[r0:r1, None]
        band = p_rows[r_top[r0:r1]] * (1 - f) + p_rows[r_bottom[r0:r1]] * f
        out[r0:r1] = blend_half(image[r0:r1], diverging_colours(band))
    draw_legend(out)
    return out


def legend_height(height):
    """Height in pixels of the legend strip for an image `height` pixels tall."""
    return max(3, min(24, height // 16))


def draw_legend(rgb):
    """Draw the colour-scale legend in place along the bottom of an (H, W, 3) uint8 image.

    The strip runs from p(positive) = 0 at the left (red, negative) to 1 at the right (green,
    positive), with a thin dark line above it; if the strip is tall enough the ends are
    labelled 'negative' and 'positive'. Images shorter than 8 pixels get no legend.
    """
    height, width = rgb.shape[:2]
    if height < 8 or width < 2:
        return rgb
    strip = legend_height(height)
    scale = diverging_colours(np.linspace(0.0, 1.0, width))                 # (W, 3)
    rgb[height - strip:] = scale[None]
    rgb[height - strip - 1] = 0
    if strip >= 14 and width >= 160:
        from PIL import Image, ImageDraw
        band = Image.fromarray(np.ascontiguousarray(rgb[height - strip:]))
        draw = ImageDraw.Draw(band)
        y = (strip - 11) // 2
        draw.text((4, y), 'negative', fill=(255, 255, 255))
        right = draw.textlength('positive')
        draw.text((width - 4 - right, y), 'positive', fill=(255, 255, 255))
        rgb[height - strip:] = np.asarray(band)
    return rgb


def _atomic_write(path, write):
    """Call write(file_object) on a temporary binary file beside `path`, then rename it over
    `path` (nn/atomic.py). `write` gets an open file, not the temporary name, so that
    np.save and PIL write exactly there (np.save would add '.npy' to a name)."""
    def fill(tmp):
        with open(tmp, 'wb') as f:
            write(f)
    atomic_write(path, fill)


def save_png(path, rgb):
    """Write an (H, W, 3) uint8 RGB array to `path` as PNG, atomically."""
    from PIL import Image
    image = Image.fromarray(np.ascontiguousarray(rgb))
    _atomic_write(path, lambda f: image.save(f, format='PNG'))


def save_npy(path, array):
    """Write an array to `path` with np.save (no pickle), atomically."""
    array = np.ascontiguousarray(array)
    _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
