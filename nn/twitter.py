"""The Twitter image sentiment dataset (You et al., AAAI 2015) and its cross-validation folds.

1269 images, labelled by five AMT workers; the label files keep the images on which at
least five, four or three workers agree. Lines are ``<image file> <label>`` with label
1 = positive, 0 = negative. The paper (Campos et al. 2017) uses 5-fold cross-validation;
its published folds are ``<subset>/test<k>/{train,test}.txt`` with the same line format
(five-agree: 704 train / 176 test per fold).

Layout of ``data/`` (what ``python -m tools.fetch`` produces and `load_fold` reads)::

    data/twitter/                      <- data_dir
        images/<image file>            the images (or directly in data_dir)
        twitter_five_agrees.txt        label files
        twitter_four_agrees.txt
        twitter_three_agrees.txt
        splits/<subset>/test<k>/train.txt   published folds, subset = five_agrees,
        splits/<subset>/test<k>/test.txt    four_agrees or three_agrees, k = 1..5

When the split files are absent, `load_fold` generates deterministic stratified 5-fold
splits from the label file (and warns that it did). `make_synthetic_dataset` writes a
small generated dataset in exactly this layout, for offline runs and tests.
"""
import os
import warnings

import numpy as np
from PIL import Image

from nn.atomic import atomic_write

AGREES = ("five", "four", "three")
NUM_FOLDS = 5
CLASS_NAMES = ("negative", "positive")   # index = label
DEFAULT_DATA_DIR = os.path.join("data", "twitter")


class DatasetError(ValueError):
    """A list file or dataset folder is missing or malformed (the message names the file)."""


def subset_name(agree):
    """'five' / 5 / 'five_agrees' -> 'five_agrees' (the folder name of the published folds)."""
    words = {5: "five", 4: "four", 3: "three"}
    key = str(words.get(agree, agree))
    key = key[:-len("_agrees")] if key.endswith("_agrees") else key
    if key not in AGREES:
        raise ValueError(f"agree must be one of {AGREES} (or 5/4/3), got {agree!r}")
    return f"{key}_agrees"


def label_file(data_dir, agree):
    """Path of the label file of an agreement subset: data_dir/twitter_<agree>_agrees.txt."""
    return os.path.join(data_dir, f"twitter_{subset_name(agree)}.txt")


def default_splits_dir(data_dir):
    """Where `load_fold` looks for the published folds: data_dir/splits."""
    return os.path.join(data_dir, "splits")


def split_files(splits_dir, agree, fold, n_folds=NUM_FOLDS):
    """(train.txt, test.txt) paths of one fold (1-based): splits_dir/<subset>/test<fold>/."""
    _check_fold(fold, n_folds)
    folder = os.path.join(splits_dir, subset_name(agree), f"test{fold}")
    return os.path.join(folder, "train.txt"), os.path.join(folder, "test.txt")


def _check_fold(fold, n_folds=NUM_FOLDS):
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) \
            or not 1 <= fold <= n_folds:
        raise ValueError(f"fold must be an integer in 1..{n_folds}, got {fold!r}")


def read_list(path):
    """Read a ``<image file> <label>`` list. Returns [(name, label int 0/1), ...] in file order.

    Blank lines are ignored. Raises DatasetError with file:line for a line that does not
    have exactly two fields or whose label is not 0 or 1, and for a repeated image.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: list file not found") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text list file ({e})") from None
    items, seen = [], {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise DatasetError(f"{where}: expected '<image file> <label>', got {line!r}")
        name, label = fields
        if label not in ("0", "1"):
            raise DatasetError(f"{where}: label must be 0 (negative) or 1 (positive), "
                               f"got {label!r}")
        if name in seen:
            raise DatasetError(f"{where}: image {name!r} already listed on line {seen[name]}")
        seen[name] = number
        items.append((name, int(label)))
    return items


def write_list(path, items):
    """Write [(name, label), ...] as ``<name> <label>`` lines, atomically."""
    text = "".join(f"{name} {int(label)}\n" for name, label in items)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def stratified_folds(items, n_folds=NUM_FOLDS, seed=0):
    """Deterministic stratified partition of `items` into `n_folds` test sets.

    items: [(name, label), ...]. Each class is sorted by name, shuffled with a numpy
    Generator seeded by `seed`, and dealt round-robin to the folds, so every fold's count
    of each class differs by at most one from the others and the result does not depend
    on the order of `items`. Returns a list of n_folds lists, each sorted by name.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    folds = [[] for _ in range(n_folds)]
    rng = np.random.default_rng(seed)
    start = 0
    for label in sorted({label for _, label in items}):
        members = sorted(item for item in items if item[1] == label)
        order = rng.permutation(len(members))
        for rank, index in enumerate(order):
            # continue dealing where the previous class stopped, so fold sizes stay even
            folds[(start + rank) % n_folds].append(members[index])
        start += len(members)
    return [sorted(fold) for fold in folds]


def generate_fold(items, fold, n_folds=NUM_FOLDS, seed=0):
    """(train, test) lists of fold `fold` (1-based) of the stratified partition of `items`.

    train keeps the order of `items`; test is sorted by name.
    """
    _check_fold(fold, n_folds)
    return _train_and_test(items, stratified_folds(items, n_folds, seed)[fold - 1])


def _train_and_test(items, test):
    """(the items not in `test`, in their order; test)."""
    held_out = {name for name, _ in test}
    return [item for item in items if item[0] not in held_out], test


def write_splits(splits_dir, agree, items, n_folds=NUM_FOLDS, seed=0):
    """Write generated folds as splits_dir/<subset>/test<k>/{train,test}.txt, k = 1..n_folds."""
    for fold, fold_test in enumerate(stratified_folds(items, n_folds, seed), start=1):
        train, test = _train_and_test(items, fold_test)
        train_path, test_path = split_files(splits_dir, agree, fold, n_folds)
        write_list(train_path, train)
        write_list(test_path, test)


def find_image_dir(data_dir, names):
    """The folder holding the images: data_dir/images when it has the first listed image,
    else data_dir itself. `names` are the image file names of a list."""
    candidates = [os.path.join(data_dir, "images"), data_dir]
    for folder in candidates:
        if names and os.path.exists(os.path.join(folder, names[0])):
            return folder
    return candidates[0] if os.path.isdir(candidates[0]) else data_dir


def load_fold(data_dir=DEFAULT_DATA_DIR, agree="five", fold=2, splits_dir=None,
              image_dir=None, seed=0):
    """Train and test lists of one cross-validation fold.

    Returns (train, test), each [(image path, label int), ...], paths joined with the image
    folder (`image_dir`, default data_dir/images or data_dir, see `find_image_dir`).

    Uses the published split files under `splits_dir` (default data_dir/splits) when they
    exist; otherwise generates deterministic stratified folds from the label file
    data_dir/twitter_<agree>_agrees.txt with `seed`, and warns (UserWarning) that it did.
    Raises DatasetError when neither is there, or when a train and test list share an image.
    """
    _check_fold(fold)
    data_dir = os.fspath(data_dir)
    splits_dir = default_splits_dir(data_dir) if splits_dir is None else splits_dir
    train_path, test_path = split_files(splits_dir, agree, fold)
    if os.path.isfile(train_path) and os.path.isfile(test_path):
        train, test = read_list(train_path), read_list(test_path)
        shared = {name for name, _ in train} & {name for name, _ in test}
        if shared:
            raise DatasetError(f"{train_path} and {test_path} share {len(shared)} images, "
                               f"e.g. {sorted(shared)[0]!r}")
    else:
        labels = label_file(data_dir, agree)
        if not os.path.isfile(labels):
            raise DatasetError(
                f"no split files ({train_path}) and no label file ({labels}): fetch the "
                "dataset with `python -m tools.fetch dataset --dataset-archive FILE` (the "
                "archive from the dataset's project page, see README) and `python -m "
                "tools.fetch splits`, or make a synthetic one with `python train.py --data "
                "synthetic`")
        warnings.warn(f"split files {os.path.dirname(train_path)} not found: using "
                      f"generated stratified {NUM_FOLDS}-fold splits of {labels} "
                      f"(seed {seed}), not the paper's folds", UserWarning, stacklevel=2)
        train, test = generate_fold(read_list(labels), fold, NUM_FOLDS, seed)
    if image_dir is None:
        image_dir = find_image_dir(data_dir, [name for name, _ in train + test])
    return ([(os.path.join(image_dir, n), l) for n, l in train],
            [(os.path.join(image_dir, n), l) for n, l in test])


# ----------------------------------------------------------------------------------------
# Synthetic dataset
# ----------------------------------------------------------------------------------------

# Blob colours (RGB). Positive: bright warm orange; negative: dark blue.
_WARM = np.array([250.0, 170.0, 60.0])
_DARK_BLUE = np.array([20.0, 30.0, 110.0])


def _synthetic_image(rng, label, width, height, strength):
    """One synthetic RGB uint8 (height, width, 3) image of class `label`.

    A random mid-grey-ish background with a smooth colour gradient and noise, then an
    elliptical blob (warm for positive, dark blue for negative) at a random place and size,
    blended with weight `strength` (weaker for images only three workers agreed on), plus
    a faint global tint of the class colour.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = rng.uniform(70, 180, size=3)
    slope = rng.uniform(-40, 40, size=(2, 3))
    img = base + (xx / width)[..., None] * slope[0] + (yy / height)[..., None] * slope[1]
    colour = _WARM if label == 1 else _DARK_BLUE
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.15, 0.35) * height, rng.uniform(0.15, 0.35) * width
    inside = np.clip(1.5 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2, 0.0, 1.0)
    weight = strength * inside[..., None]
    img = img * (1 - weight) + colour * weight
    img = 0.85 * img + 0.15 * strength * colour
    img += rng.normal(0.0, 18.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_synthetic_dataset(out_dir, n_images=60, seed=0, size=(64, 48), n_folds=NUM_FOLDS):
    """Write a small synthetic dataset in the Twitter layout (see the module docstring).

    out_dir: created if needed; gets images/, the three label files and
        splits/<subset>/test<k>/{train,test}.txt for k = 1..n_folds.
    n_images: total images (all are in three_agrees; about 85% in four_agrees and 70% in
        five_agrees, nested like the real subsets). Half positive (label 1), half negative.
    size: nominal (width, height); each image's sides vary by up to +-25% so the resize
        sees different aspect ratios.
    The split files are the stratified folds of `generate_fold` with the same `seed`.
    Returns {subset name: number of images}. Deterministic for a given seed.
    """
    if n_images < 2 * n_folds:
        raise ValueError(f"make_synthetic_dataset: n_images must be at least {2 * n_folds} "
                         f"(two of each class per fold), got {n_images}")
    out_dir = os.fspath(out_dir)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.array([1] * ((n_images + 1) // 2) + [0] * (n_images // 2))
    rng.shuffle(labels)
    # agreement level per image: 5 for ~70%, 4 for ~15%, 3 for the rest (per class, so
    # every subset keeps both classes)
    agreement = np.empty(n_images, dtype=int)
    for label in (0, 1):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n5, n4 = int(round(0.7 * len(idx))), int(round(0.85 * len(idx)))
        agreement[idx[:n5]], agreement[idx[n5:n4]], agreement[idx[n4:]] = 5, 4, 3
    strength = {5: 0.9, 4: 0.7, 3: 0.5}
    width, height = size
    items = []
    for i in range(n_images):
        w = int(round(width * rng.uniform(0.75, 1.25)))
        h = int(round(height * rng.uniform(0.75, 1.25)))
        pixels = _synthetic_image(rng, int(labels[i]), w, h, strength[int(agreement[i])])
        name = f"synthetic_{i:05d}.jpg"

        def write(tmp, pixels=pixels):
            Image.fromarray(pixels, mode="RGB").save(tmp, format="JPEG", quality=92)
        atomic_write(os.path.join(image_dir, name), write)
        items.append((name, int(labels[i]), int(agreement[i])))
    counts = {}
    for level, agree in zip((5, 4, 3), AGREES):
        subset = [(name, label) for name, label, a in items if a >= level]
        write_list(label_file(out_dir, agree), subset)
        write_splits(default_splits_dir(out_dir), agree, subset, n_folds, seed)
        counts[subset_name(agree)] = len(subset)
    return counts
