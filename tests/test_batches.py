"""nn/batches.py: epoch order, crops, reproducibility, resume, bad files, eval batches.

Small images (resized to 21, cropped to 15) keep the tests fast; the loaders do the same
work for 256 / 227.
"""
import os
import time
import numpy as np
import pytest
from PIL import Image

from nn import batches
from nn.preprocess import center_crop, load_resized, ten_crops

RESIZE, CROP = 21, 15


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """23 small PNG images of various sizes, labels mixed."""
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for i in range(23):
        h, w = rng.integers(17, 40, size=2)
        path = os.path.join(str(folder), f"im{i:02d}.png")
        Image.fromarray(rng.integers(1, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        out.append((path, int(rng.integers(0, 2))))
    return out


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "broken_image.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    return str(path)


def _train(items, batch_size, **kw):
    kw.setdefault("resize", RESIZE)
    kw.setdefault("crop", CROP)
    kw.setdefault("workers", 2)
    return batches.TrainLoader(items, batch_size, **kw)


def _take(loader, n):
    out = []
    for _ in range(n):
        x, y = next(loader)
        out.append((x, y, list(loader.batch_paths), dict(loader.state)))
    return out


def test_epoch_order_is_a_fresh_permutation_each_epoch():
    orders = [batches.epoch_order(23, 5, e) for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(23))
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(batches.epoch_order(23, 5, 1), orders[1])
    assert not np.array_equal(batches.epoch_order(23, 6, 1), orders[1])


def test_train_batches_visit_each_item_once_per_epoch(items):
    labels = dict(items)
    with _train(items, 5, seed=1) as loader:
        got = _take(loader, 10)         # 50 samples: epochs 0, 1 and 4 samples of epoch 2
    for x, y, paths, _ in got:
        assert x.shape == (5, 3, CROP, CROP) and x.dtype == np.float32
        assert x.flags.c_contiguous
        assert y.dtype == np.int32 and y.tolist() == [labels[p] for p in paths]
    stream = [p for _, _, paths, _ in got for p in paths]
    names = sorted(p for p, _ in items)
    assert sorted(stream[:23]) == names and sorted(stream[23:46]) == names
    assert stream[:23] != stream[23:46]
    assert got[-1][3] == {"epoch": 2, "position": 4}
    assert got[4][3] == {"epoch": 1, "position": 2}   # batch 5 straddled the epoch end


def test_train_samples_are_random_crops_of_the_resized_image(items):
    with _train(items, 7, seed=2) as loader:
        got = _take(loader, 6)
    flips = 0
    offsets = set()
    for x, _, paths, _ in got:
        for sample, path in zip(x, paths):
            full = load_resized(path, RESIZE)
            found = [(t, l, m) for t in range(RESIZE - CROP + 1)
                     for l in range(RESIZE - CROP + 1) for m in (False, True)
                     if np.array_equal(sample, full[:, t:t + CROP, l:l + CROP][:, :, ::-1]
                                       if m else full[:, t:t + CROP, l:l + CROP])]
            assert found, f"sample of {path} is not a crop of the resized image"
            flips += found[0][2]
            offsets.add(found[0][:2])
    assert 8 < flips < 34 and len(offsets) > 15       # 42 samples: both kinds, many offsets


def test_sample_crop_depends_only_on_seed_epoch_position(items):
    path = items[3][0]
    a = batches.load_train_sample(path, 9, 2, 5, RESIZE, CROP)
    np.testing.assert_array_equal(a, batches.load_train_sample(path, 9, 2, 5, RESIZE, CROP))
    others = [batches.load_train_sample(path, 9, 2, p, RESIZE, CROP) for p in range(6, 12)]
    assert any(not np.array_equal(a, o) for o in others)


def test_sample_crop_depends_on_the_epoch(items):
    # the same position in another epoch must get a fresh crop/mirror, or every epoch
    # would show an item (wherever the shuffle puts it) the same few windows
    path = items[3][0]
    a = batches.load_train_sample(path, 9, 0, 5, RESIZE, CROP)
    others = [batches.load_train_sample(path, 9, e, 5, RESIZE, CROP) for e in range(1, 7)]
    assert any(not np.array_equal(a, o) for o in others)


def test_train_is_reproducible_and_resumable(items):
    with _train(items, 6, seed=4) as a:
        first = _take(a, 7)
    with _train(items, 6, seed=4, workers=1, prefetch=1) as b:
        again = _take(b, 7)
    for (x1, y1, p1, s1), (x2, y2, p2, s2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        assert p1 == p2 and s1 == s2
    state = first[3][3]
    with _train(items, 6, seed=4, **state) as resumed:
        rest = _take(resumed, 3)
    for (x1, _, p1, s1), (x2, _, p2, s2) in zip(first[4:], rest):
        np.testing.assert_array_equal(x1, x2)
        assert p1 == p2 and s1 == s2
    with _train(items, 6, seed=5) as other:
        x, _ = next(other)
    assert not np.array_equal(x, first[0][0])


def _samples(got):
    """The stream of (path, image) pairs of a list of taken batches."""
    return [(p, s) for x, _, paths, _ in got for p, s in zip(paths, x)]


def _assert_same_stream(a, b):
    assert [p for p, _ in a] == [p for p, _ in b]
    for (_, x1), (_, x2) in zip(a, b):
        np.testing.assert_array_equal(x1, x2)


def test_batch_ending_on_the_epoch_boundary_resumes(items):
    # a batch that uses the last sample of an epoch leaves the state at the next epoch's
    # start, a state the constructor accepts and which continues the stream exactly
    few = items[:7]
    with _train(few, len(few), seed=3) as loader:
        got = _take(loader, 3)
    assert [s for _, _, _, s in got] == [{"epoch": e, "position": 0} for e in (1, 2, 3)]
    with _train(few, len(few), seed=3, **got[0][3]) as resumed:
        rest = _take(resumed, 2)
    _assert_same_stream(_samples(rest), _samples(got[1:]))
    assert [s for _, _, _, s in rest] == [s for _, _, _, s in got[1:]]


def test_resume_near_the_epoch_end_reads_the_whole_next_epoch(items):
    # 23 items: resume 3 samples before the end of epoch 0; epoch 1 must then start at its
    # position 0 (not at the resumed position 20) and match the uninterrupted stream
    with _train(items, 4, seed=6) as loader:
        whole = _samples(_take(loader, 8))                  # samples 0..31
    with _train(items, 4, seed=6, epoch=0, position=20) as resumed:
        got = _take(resumed, 3)                             # samples 20..31
    _assert_same_stream(_samples(got), whole[20:32])
    assert got[-1][3] == {"epoch": 1, "position": 9}


def test_train_skips_bad_images_with_a_warning_and_keeps_batches_full(items, bad_file):
    listed = items[:6] + [(bad_file, 1)] + items[6:9]
    with _train(listed, 4, seed=0) as loader:
        with pytest.warns(RuntimeWarning, match="broken_image.jpg"):
            got = _take(loader, 5)     # 20 samples from a stream of 10 per epoch
        assert loader.skipped and set(loader.skipped) == {bad_file}
    for x, y, paths, _ in got:
        assert x.shape[0] == 4 and bad_file not in paths
    stream = [p for _, _, paths, _ in got for p in paths]
    assert sorted(stream[:9]) == sorted(p for p, _ in listed if p != bad_file)


def test_train_with_a_bad_file_runs_past_as_many_epochs_as_items(items, bad_file):
    # NoImagesError counts failures *in a row*: a good image in between resets the count,
    # so one bad file among 3 must not stop training after its 3rd epoch
    listed = [items[0], (bad_file, 1), items[1]]
    with _train(listed, 2, seed=7) as loader:
        with pytest.warns(RuntimeWarning, match="broken_image.jpg"):
            got = _take(loader, 6)          # 12 good samples: 6 epochs
        skipped = list(loader.skipped)
    for x, _, paths, _ in got:
        assert x.shape[0] == 2 and bad_file not in paths
    end = got[-1][3]
    assert end["epoch"] >= 5
    # the bad file (item 1) was skipped once in every epoch the stream has passed it in
    passed = sum((e, list(batches.epoch_order(3, 7, e)).index(1)) <
                 (end["epoch"], end["position"]) for e in range(end["epoch"] + 1))
    assert skipped == [bad_file] * passed and passed >= 5


def test_train_raises_when_no_image_loads(bad_file):
    with pytest.raises(batches.NoImagesError, match="none of the 2 images could be loaded"):
        with _train([(bad_file, 0), (bad_file + "x", 1)], 2) as loader:
            next(loader)


@pytest.mark.parametrize("crops", ["center", "ten"])
def test_eval_batches_in_order_with_a_partial_last_batch(items, crops):
    with batches.EvalLoader(items, 5, crops=crops, resize=RESIZE, crop=CROP,
                            workers=2) as loader:
        got = [(x, y, list(loader.batch_paths)) for x, y in loader]
    assert [len(y) for _, y, _ in got] == [5, 5, 5, 5, 3]
    assert [p for _, _, paths in got for p in paths] == [p for p, _ in items]
    assert np.concatenate([y for _, y, _ in got]).tolist() == [l for _, l in items]
    shape = (3, CROP, CROP) if crops == "center" else (10, 3, CROP, CROP)
    for x, y, paths in got:
        assert x.shape == (len(y),) + shape and x.dtype == np.float32
        for sample, path in zip(x, paths):
            full = load_resized(path, RESIZE)
            expected = center_crop(full, CROP) if crops == "center" else ten_crops(full, CROP)
            np.testing.assert_array_equal(sample, expected)


def test_eval_skips_bad_images(items, bad_file):
    listed = items[:3] + [(bad_file, 0)] + items[3:4]
    with batches.EvalLoader(listed, 2, resize=RESIZE, crop=CROP) as loader:
        with pytest.warns(RuntimeWarning, match="broken_image.jpg"):
            got = list(loader)
    assert [len(y) for _, y in got] == [2, 2]
    assert loader.skipped == [bad_file]


def test_eval_warns_for_a_bad_file_that_ends_the_list(items, bad_file):
    # the last "batch" holds only the bad file: no images, but it must still be reported
    listed = items[:4] + [(bad_file, 0)]
    with batches.EvalLoader(listed, 2, resize=RESIZE, crop=CROP) as loader:
        with pytest.warns(RuntimeWarning, match="broken_image.jpg"):
            got = list(loader)
    assert [len(y) for _, y in got] == [2, 2]
    assert loader.skipped == [bad_file]


def test_close_stops_the_background_thread(items):
    loader = _train(items, 3, seed=0, prefetch=1)
    next(loader)
    for _ in range(200):                # let the producer fill the queue and block on it
        if loader._queue.full():
            break
        time.sleep(0.01)
    loader.close()
    loader._thread.join(timeout=5)
    assert not loader._thread.is_alive()
    with pytest.raises(StopIteration):
        next(loader)


def test_bad_arguments_are_named(items):
    with pytest.raises(ValueError, match="TrainLoader: batch_size must be an integer >= 1, got 0"):
        batches.TrainLoader(items, 0)
    with pytest.raises(ValueError, match="TrainLoader: start epoch must be >= 0 and position"):
        batches.TrainLoader(items, 2, position=len(items))
    with pytest.raises(ValueError, match="TrainLoader: the item list is empty"):
        batches.TrainLoader([], 2)
    with pytest.raises(ValueError, match="EvalLoader: crops must be 'center' or 'ten'"):
        batches.EvalLoader(items, 2, crops="five")
    with pytest.raises(ValueError, match="EvalLoader: crop 227 is larger than the resized"):
        batches.EvalLoader(items, 2, resize=200)
