"""Image loading and Caffe-style preprocessing, as in the authors' Caffe set-up.

Pipeline for one image (every array is float32, channels first, BGR, mean subtracted)::

    file --load_image--> RGB uint8 (H, W, 3)
         --resize_image--> (3, S, S) float32: whole image resized to S x S (OpenCV's
                           INTER_LINEAR, aspect ratio ignored), RGB -> BGR, values
                           0..255 minus MEAN_BGR
         --random_crop / center_crop / ten_crops--> (3, 227, 227) or (10, 3, 227, 227)

`load_resized(path)` does the first two steps with S = 256 (training and testing);
`resize_image(rgb, size)` with any S serves the fully convolutional sentiment map
(predict.py, which keeps the decoded RGB for the overlay), resizing the image to 451 x 451
(--map-size) directly, with no crop.

Colour modes (Pillow names) are turned into 8-bit RGB like this:

====================  ===================================================================
mode                  conversion
====================  ===================================================================
RGB                   as is
L, 1, P, CMYK, YCbCr  Pillow's ``convert('RGB')`` (grey replicated, palette expanded)
RGBA, LA, PA, P+tRNS  alpha is dropped, not composited: the colour under a transparent
                      pixel is kept. This matches Caffe, whose ImageData layer reads with
                      OpenCV's ``imread(IMREAD_COLOR)``, which ignores alpha.
I;16*, I              16-bit grey: value >> 8 (what OpenCV does to 16-bit files), then
                      grey -> RGB. Mode ``I`` (how Pillow may open a 16-bit PNG) is read
                      as 16-bit too, clipped to 0..65535.
F                     float grey: clipped to 0..255, rounded
====================  ===================================================================

EXIF orientation is applied first (a photo taken sideways is turned upright). An EXIF
block that cannot be parsed counts as no orientation: the pixels are still good.
Any file Pillow cannot read completely raises `ImageError` naming the file.

The resize is OpenCV's ``cv::resize(..., INTER_LINEAR)`` on the 8-bit image, reproduced bit
for bit in NumPy by `nn.resize.resize_linear` (OpenCV's sample geometry, edge rules and
11-bit fixed-point arithmetic; checked equal to the OpenCV 3.4.18, 4.10 and 5.0 wheels).
That is what Caffe's ImageData layer does (new_height/new_width), so from the same decoded
pixels the resize gives the same bytes as the authors' pipeline. Like OpenCV (and unlike
Pillow), it samples only the 2 x 2 nearest pixels, also when shrinking: no anti-aliasing.
OpenCV itself is not needed.

Decoding is Pillow's. For JPEG files it gave the same pixels as ``cv2.imread`` (OpenCV 5.0
wheel, 4:4:4 and 4:2:0 test files); other libjpeg builds may round slightly differently.
"""
import numpy as np
from PIL import Image

from nn.resize import resize_linear
from nn.weights import INPUT_SIZE, MEAN_BGR

RESIZE = 256   # side the whole image is resized to before cropping (Caffe new_height/width)
CROP = INPUT_SIZE     # CaffeNet's input side

_MEAN = np.asarray(MEAN_BGR, dtype=np.float32).reshape(3, 1, 1)


# EXIF orientation tag (0x0112) value -> the transpose that turns the decoded pixels
# upright (the EXIF/TIFF specification; 1 = already upright).
_EXIF_ORIENTATION = 0x0112
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


class ImageError(ValueError):
    """An image file cannot be read (missing, not an image, truncated, corrupt).

    `path` holds the file name; the message names it too.
    """

    def __init__(self, path, reason):
        super().__init__(f"{path}: cannot read image: {reason}")
        self.path = path


def _to_rgb(img):
    """Any Pillow image -> 8-bit RGB Pillow image (see the table in the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(img).astype(np.int64)
        grey = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("RGBA", "RGBa", "RGBX"):
        return img.convert("RGB")  # drops the 4th channel, colour values untouched
    if mode in ("LA", "La", "PA"):
        return img.convert("RGBA").convert("RGB")
    # L, 1, P (with or without transparency), CMYK, YCbCr, LAB, HSV
    return img.convert("RGB")


def _upright(img):
    """Apply the image's EXIF orientation (a Pillow image in, a Pillow image out).

    Only the orientation tag is read; Pillow's ImageOps.exif_transpose would also rewrite
    the whole EXIF block, which raises on malformed tags (struct.error) in photos whose
    pixels are fine. Metadata that cannot be parsed means "no orientation".
    """
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:   # any parse failure of a metadata block: keep the pixels as decoded
        return img
    method = _UPRIGHT.get(orientation)
    return img if method is None else img.transpose(method)


def load_image(path):
    """Read an image file as 8-bit RGB with EXIF orientation applied.

    Returns a uint8 array (H, W, 3). Raises ImageError naming `path` if the file is
    missing, is not an image, or is truncated/corrupt.
    """
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so truncation is detected here
            img = _upright(img)
            rgb = _to_rgb(img)
            return np.array(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        # OSError covers missing files, UnidentifiedImageError and "image file is truncated"
        raise ImageError(path, f"{type(e).__name__}: {e}") from e


def resize_image(rgb, size=RESIZE):
    """RGB uint8 (H, W, 3) -> float32 (3, size, size), BGR, 0..255 minus MEAN_BGR.

    The whole image is resized to size x size (aspect ratio ignored) with OpenCV's
    INTER_LINEAR arithmetic on the 8-bit values (`nn.resize.resize_linear`), as Caffe does.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"resize_image: expected an RGB uint8 array (H, W, 3), got "
                         f"{rgb.dtype} {rgb.shape}")
    if int(size) < 1:
        raise ValueError(f"resize_image: size must be a positive integer, got {size!r}")
    size = int(size)
    # channels are resized independently, so resizing RGB then flipping equals OpenCV on BGR
    hwc = resize_linear(rgb, size, size)
    # HWC RGB -> CHW BGR; the copy makes the result C-contiguous
    chw = np.ascontiguousarray(hwc[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)
    chw -= _MEAN
    return chw


def load_resized(path, size=RESIZE):
    """Image file -> float32 (3, size, size), BGR, mean subtracted (no crop).

    Raises ImageError naming `path` when the file cannot be read.
    """
    return resize_image(load_image(path), size)


def _check_image(img, crop, name):
    """Validate a preprocessed (3, H, W) image against the crop side."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[0] != 3:
        shape = getattr(img, "shape", None)
        raise ValueError(f"{name}: expected a preprocessed image (3, H, W), got shape {shape}")
    if img.shape[1] < crop or img.shape[2] < crop:
        raise ValueError(f"{name}: image {img.shape[1]}x{img.shape[2]} is smaller than the "
                         f"crop {crop}x{crop}")


def crop_image(img, top, left, crop=CROP, mirror=False):
    """(3, H, W) -> C-contiguous (3, crop, crop) window at (top, left), mirrored if asked.

    Mirroring flips left-right (the last axis), as Caffe's DataTransformer does.
    """
    _check_image(img, crop, "crop_image")
    if not (0 <= top <= img.shape[1] - crop and 0 <= left <= img.shape[2] - crop):
        raise ValueError(f"crop_image: window at ({top}, {left}) of side {crop} does not fit "
                         f"in an image of {img.shape[1]}x{img.shape[2]}")
    window = img[:, top:top + crop, left:left + crop]
    if mirror:
        window = window[:, :, ::-1]
    return np.ascontiguousarray(window)


def random_crop(img, rng, crop=CROP, mirror=True):
    """Training crop: (3, H, W) -> (3, crop, crop) at a random offset, randomly mirrored.

    Caffe's TRAIN rule: top uniform in [0, H - crop], left uniform in [0, W - crop], and a
    mirror with probability 1/2 when `mirror`. `rng` is a numpy Generator; the draws are
    always top, left, then the mirror coin (drawn even when mirror=False, so switching
    mirroring off does not change the crops).
    """
    _check_image(img, crop, "random_crop")
    top = int(rng.integers(0, img.shape[1] - crop + 1))
    left = int(rng.integers(0, img.shape[2] - crop + 1))
    flip = bool(rng.integers(0, 2)) and mirror
    return crop_image(img, top, left, crop, flip)


def center_crop(img, crop=CROP):
    """Test crop: (3, H, W) -> (3, crop, crop) at ((H - crop) // 2, (W - crop) // 2)."""
    _check_image(img, crop, "center_crop")
    return crop_image(img, (img.shape[1] - crop) // 2, (img.shape[2] - crop) // 2, crop)


# Index of the centre crop among ten_crops' ten: the same window as center_crop.
CENTER_OF_TEN = 4


def ten_crops(img, crop=CROP):
    """Oversampling: (3, H, W) -> (10, 3, crop, crop), in the order of Caffe's oversample.

    0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right, 4 centre (CENTER_OF_TEN), then
    5..9 the same five windows mirrored left-right.
    """
    _check_image(img, crop, "ten_crops")
    h, w = img.shape[1], img.shape[2]
    tops_lefts = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop),
                  ((h - crop) // 2, (w - crop) // 2)]
    crops = [crop_image(img, t, l, crop) for t, l in tops_lefts]
    crops += [c[:, :, ::-1] for c in crops]
    return np.ascontiguousarray(np.stack(crops))


def average_over_crops(predict, crops):
    """Class probabilities averaged over each image's crops (Caffe's oversample), with one
    forward pass over all the crops of a batch.

    crops: (B, k, 3, S, S) float32, k crops per image (1: the centre crop; 10: ten_crops).
    predict: (B * k, 3, S, S) -> (B * k, C) probabilities, or (B * k, C, 1, 1) as a fully
    convolutional net gives at S = 227. Returns (B, C).
    """
    b, k = crops.shape[:2]
    probs = predict(crops.reshape((b * k,) + crops.shape[2:]))
    return probs.reshape(b, k, -1).mean(axis=1)
