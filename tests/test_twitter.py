"""nn/twitter.py: list files, published and generated folds, the synthetic dataset."""
import os
from collections import Counter

import numpy as np
import pytest

from nn import twitter
from nn.preprocess import load_image

SPLITS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "..", "shared", "data", "twitter_splits")
needs_splits = pytest.mark.skipif(not os.path.isdir(SPLITS),
                                  reason=f"published split files not found at {SPLITS}")


def _items(n_pos, n_neg, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"img_{v:06d}.jpg" for v in rng.choice(10**6, n_pos + n_neg, replace=False)]
    return [(name, 1 if i < n_pos else 0) for i, name in enumerate(names)]


# --- list files ---------------------------------------------------------------------------

def test_read_list_parses_lines_and_skips_blank_ones(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("a_1.jpg 1\n\n  b_2.jpg\t0  \nc.jpg 1")
    assert twitter.read_list(path) == [("a_1.jpg", 1), ("b_2.jpg", 0), ("c.jpg", 1)]


@pytest.mark.parametrize("bad_line,message", [
    ("c.jpg", "expected '<image file> <label>'"),
    ("c.jpg 1 extra", "expected '<image file> <label>'"),
    ("c.jpg 2", "label must be 0"),
    ("c.jpg -1", "label must be 0"),
    ("c.jpg pos", "label must be 0"),
    ("a.jpg 0", "image 'a.jpg' already listed on line 1"),
])
def test_read_list_errors_name_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "l.txt"
    path.write_text(f"a.jpg 1\nb.jpg 0\n{bad_line}\n")
    with pytest.raises(twitter.DatasetError, match=f"l.txt:3: {message}"):
        twitter.read_list(path)


def test_read_list_missing_file(tmp_path):
    with pytest.raises(twitter.DatasetError, match="nope.txt: list file not found"):
        twitter.read_list(tmp_path / "nope.txt")


def test_write_list_round_trip(tmp_path):
    items = _items(7, 4)
    path = tmp_path / "sub" / "x.txt"
    twitter.write_list(path, items)
    assert twitter.read_list(path) == items
    assert os.listdir(tmp_path / "sub") == ["x.txt"]   # no temporary file left behind


def test_subset_names():
    assert twitter.subset_name("five") == twitter.subset_name(5) == "five_agrees"
    assert twitter.subset_name("three_agrees") == "three_agrees"
    with pytest.raises(ValueError, match="agree must be one of"):
        twitter.subset_name("two")


# --- generated folds ----------------------------------------------------------------------

def test_stratified_folds_partition_and_balance():
    items = _items(58, 31)
    folds = twitter.stratified_folds(items, 5, seed=3)
    names = [name for fold in folds for name, _ in fold]
    assert sorted(names) == sorted(name for name, _ in items)     # a partition
    for label, total in ((1, 58), (0, 31)):
        counts = [sum(1 for _, l in fold if l == label) for fold in folds]
        assert sum(counts) == total and max(counts) - min(counts) <= 1
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    # deterministic, independent of the input order, and the seed matters
    assert twitter.stratified_folds(items[::-1], 5, seed=3) == folds
    assert twitter.stratified_folds(items, 5, seed=4) != folds


def test_generate_fold_train_is_the_complement():
    items = _items(23, 12)
    tests = []
    for fold in range(1, 6):
        train, test = twitter.generate_fold(items, fold, seed=1)
        assert sorted(train + test) == sorted(items)
        assert not {n for n, _ in train} & {n for n, _ in test}
        tests += test
    assert sorted(tests) == sorted(items)   # every item is tested exactly once
    with pytest.raises(ValueError, match="fold must be an integer in 1..5"):
        twitter.generate_fold(items, 0)


def test_load_fold_generates_splits_with_a_warning(tmp_path):
    items = _items(30, 17)
    twitter.write_list(twitter.label_file(tmp_path, "four"), items)
    with pytest.warns(UserWarning, match="generated stratified 5-fold splits"):
        train, test = twitter.load_fold(tmp_path, "four", 3, seed=2)
    expected_train, expected_test = twitter.generate_fold(items, 3, seed=2)
    # images are looked up in data_dir/images when it exists, else in data_dir itself
    assert train == [(os.path.join(str(tmp_path), n), l) for n, l in expected_train]
    assert test == [(os.path.join(str(tmp_path), n), l) for n, l in expected_test]


def test_class_names_follow_the_dataset_labels():
    # the dataset's lists say 1 = positive, 0 = negative, and CLASS_NAMES is indexed by label
    assert twitter.CLASS_NAMES == ("negative", "positive")


def test_image_dir_falls_back_to_images_when_the_first_image_is_missing(tmp_path):
    # one image missing (e.g. a failed download) must not send the lookup to data_dir
    items = _items(6, 4, seed=3)
    train, test = items[:7], items[7:]
    train_path, test_path = twitter.split_files(tmp_path / "splits", "five", 1)
    twitter.write_list(train_path, train)
    twitter.write_list(test_path, test)
    names = [n for n, _ in train + test]
    (tmp_path / "images").mkdir()
    for name in names[1:]:
        (tmp_path / "images" / name).write_bytes(b"")
    image_dir = os.path.join(str(tmp_path), "images")
    assert twitter.find_image_dir(str(tmp_path), names) == image_dir
    got_train, got_test = twitter.load_fold(tmp_path, "five", 1)
    assert got_train == [(os.path.join(image_dir, n), l) for n, l in train]
    assert got_test == [(os.path.join(image_dir, n), l) for n, l in test]
    # images kept directly in data_dir (no images/ folder): data_dir, first one missing or not
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in names[1:]:
        (flat / name).write_bytes(b"")
    assert twitter.find_image_dir(str(flat), names) == str(flat)
    assert twitter.find_image_dir(str(flat), names[1:]) == str(flat)


def test_load_fold_without_labels_or_splits_explains(tmp_path):
    # `tools.fetch dataset` alone cannot download it (no stable address): name the option
    with pytest.raises(twitter.DatasetError,
                       match="tools.fetch dataset --dataset-archive FILE.*tools.fetch splits"):
        twitter.load_fold(tmp_path, "five", 1)


def test_load_fold_rejects_overlapping_split_files(tmp_path):
    train_path, test_path = twitter.split_files(tmp_path / "splits", "five", 2)
    twitter.write_list(train_path, [("a.jpg", 1), ("b.jpg", 0)])
    twitter.write_list(test_path, [("b.jpg", 0)])
    with pytest.raises(twitter.DatasetError, match="share 1 images, e.g. 'b.jpg'"):
        twitter.load_fold(tmp_path, "five", 2)


@needs_splits
@pytest.mark.parametrize("agree,n_train,n_test,n_total", [
    ("five", 704, 176, 880), ("four", 892, 223, 1115), ("three", 1012, 253, 1265)])
def test_published_folds(agree, n_train, n_test, n_total):
    tested = []
    for fold in range(1, 6):
        train, test = twitter.load_fold("/data/twitter", agree, fold, splits_dir=SPLITS,
                                        image_dir="/images")
        assert (len(train), len(test)) == (n_train, n_test)
        assert all(path.startswith("/images/") and label in (0, 1)
                   for path, label in train + test)
        assert not {p for p, _ in train} & {p for p, _ in test}
        assert len({p for p, _ in train + test}) == n_total
        tested += [p for p, _ in test]
    assert len(tested) == len(set(tested)) == n_total   # the test sets partition the subset


@needs_splits
def test_published_subsets_agree_on_shared_images():
    # (the published subsets are not exactly nested: a few images are missing from the
    # larger ones, so only label agreement is a property of the data)
    labels = {agree: dict(item for part in twitter.load_fold("/d", agree, 1, splits_dir=SPLITS)
                          for item in part) for agree in twitter.AGREES}
    for small, large in (("five", "four"), ("four", "three")):
        shared = labels[small].keys() & labels[large].keys()
        assert len(shared) > 0.95 * len(labels[small])
        assert all(labels[small][p] == labels[large][p] for p in shared)


# --- synthetic dataset --------------------------------------------------------------------

def test_synthetic_dataset_layout_and_determinism(tmp_path):
    counts = twitter.make_synthetic_dataset(tmp_path / "a", n_images=53, seed=5,
                                            size=(41, 29))
    assert counts["three_agrees"] == 53
    assert counts["five_agrees"] < counts["four_agrees"] < counts["three_agrees"]
    subsets = {}
    for agree in twitter.AGREES:
        items = twitter.read_list(twitter.label_file(tmp_path / "a", agree))
        assert len(items) == counts[twitter.subset_name(agree)]
        labels = Counter(label for _, label in items)
        assert labels[0] >= 5 and labels[1] >= 5
        subsets[agree] = set(items)
        # published-style split files, consistent with the label file
        tested = []
        for fold in range(1, 6):
            with_splits = twitter.load_fold(tmp_path / "a", agree, fold)
            train, test = twitter.generate_fold(items, fold, seed=5)   # the dataset's seed
            image_dir = os.path.join(str(tmp_path / "a"), "images")
            assert with_splits == ([(os.path.join(image_dir, n), l) for n, l in train],
                                   [(os.path.join(image_dir, n), l) for n, l in test])
            tested += test
        assert sorted(tested) == sorted(items)
    assert subsets["five"] <= subsets["four"] <= subsets["three"]
    names = sorted(os.listdir(tmp_path / "a" / "images"))
    assert names == sorted(name for name, _ in subsets["three"])
    # every image is a readable JPEG of about the requested size
    first = load_image(str(tmp_path / "a" / "images" / names[0]))
    assert 0.7 * 29 <= first.shape[0] <= 1.3 * 29 and 0.7 * 41 <= first.shape[1] <= 1.3 * 41
    # same seed, same dataset
    twitter.make_synthetic_dataset(tmp_path / "b", n_images=53, seed=5, size=(41, 29))
    for agree in twitter.AGREES:
        assert (twitter.read_list(twitter.label_file(tmp_path / "b", agree))
                == twitter.read_list(twitter.label_file(tmp_path / "a", agree)))
    np.testing.assert_array_equal(load_image(str(tmp_path / "b" / "images" / names[7])),
                                  load_image(str(tmp_path / "a" / "images" / names[7])))


def test_synthetic_classes_differ_by_colour(tmp_path):
    twitter.make_synthetic_dataset(tmp_path, n_images=40, seed=1)
    warm = {0: [], 1: []}
    for name, label in twitter.read_list(twitter.label_file(tmp_path, "five")):
        rgb = load_image(str(tmp_path / "images" / name)).astype(float)
        # the brightest-warm pixels: positives have an orange blob, negatives a dark blue one
        warmth = rgb[..., 0] - rgb[..., 2]
        warm[label].append(np.percentile(warmth, 95))
    assert min(warm[1]) > max(warm[0])


def test_synthetic_dataset_rejects_too_few_images(tmp_path):
    with pytest.raises(ValueError, match="n_images must be at least 10"):
        twitter.make_synthetic_dataset(tmp_path, n_images=9)
