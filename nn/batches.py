"""Background batch loading: images are decoded and preprocessed in a thread pool while the
network trains on the previous batch (Pillow releases the GIL while decoding and resizing).

Two loaders, both iterators of ``(images float32, labels int32)``:

* `TrainLoader(items, batch_size, seed)`: endless, like Caffe's ImageData layer with
  shuffle. The samples form one stream, epoch after epoch; epoch e visits the items in the
  order `epoch_order(n, seed, e)`, and a batch is simply the next `batch_size` samples of
  the stream (so a batch may straddle two epochs). Sample p of epoch e gets a random
  227 crop and a random mirror from `sample_rng(seed, e, p)`. Everything depends only on
  (seed, epoch, position), so a run is reproducible, and `loader.state` ->
  ``{'epoch', 'position'}`` (the next sample to use) resumes it exactly:
  ``TrainLoader(items, batch_size, seed, epoch=s['epoch'], position=s['position'])``.
* `EvalLoader(items, batch_size, crops='center'|'ten')`: one pass in list order; images
  (B, 3, 227, 227) for the centre crop, (B, 10, 3, 227, 227) for the ten crops of Caffe's
  oversample. The last batch may be smaller. `loader.batch_paths` names the images of the
  batch just returned.

An image that fails to load is skipped with a warning naming the file (training never
stops for a bad file); it is added to `loader.skipped`. A training batch is then filled up
with the next samples of the stream, so training batches are always full. If every image
of the list fails, TrainLoader raises NoImagesError (a RuntimeError) instead of looping
forever.

Use as a context manager (or call `close()`) to stop the background thread early.
"""
import collections
import os
import queue
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nn.checks import check_int
from nn.preprocess import CROP, RESIZE, ImageError, center_crop, load_resized, random_crop, \
    ten_crops

_END = object()   # end-of-stream marker in the batch queue


class NoImagesError(RuntimeError):
    """Not one image of a TrainLoader's list can be loaded (the message gives the last error)."""


def epoch_order(n, seed, epoch):
    """The order (a permutation of range(n)) in which epoch `epoch` visits the items."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0, epoch])))
    return rng.permutation(n)


def sample_rng(seed, epoch, position):
    """The numpy Generator that draws the crop and mirror of sample `position` of `epoch`.

    The constant 1 in the seed keeps these streams apart from `epoch_order`'s.
    """
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, 1, epoch, position])))


def load_train_sample(path, seed, epoch, position, resize=RESIZE, crop=CROP, mirror=True):
    """One training sample: (3, crop, crop) float32, random crop/mirror of the resized image."""
    return random_crop(load_resized(path, resize), sample_rng(seed, epoch, position), crop,
                       mirror)


def load_eval_sample(path, crops="center", resize=RESIZE, crop=CROP):
    """One test sample: (3, crop, crop) centre crop, or (10, 3, crop, crop) ten crops."""
    img = load_resized(path, resize)
    return center_crop(img, crop) if crops == "center" else ten_crops(img, crop)


# One unit of work: load `path` with fn(*args); after it, the stream is at `state`.
_Job = collections.namedtuple("_Job", "path label fn args state")
# What the background thread hands over: a batch (images may be None when every image of
# a final stretch failed), the stream state after it, and the images skipped on the way.
_Batch = collections.namedtuple("_Batch", "images labels paths state skipped")


def _check_items(items, name):
    items = list(items)
    if not items:
        raise ValueError(f"{name}: the item list is empty (expected [(path, label), ...])")
    for i, item in enumerate(items):
        if len(item) != 2 or not isinstance(item[0], (str, os.PathLike)):
            raise ValueError(f"{name}: item {i} is {item!r}, expected (path, label)")
    return [(os.fspath(p), int(l)) for p, l in items]


class _BackgroundLoader:
    """Runs `self._jobs()` through a thread pool and assembles batches in a thread.

    Subclasses provide `_jobs()` (an iterator of _Job in stream order), `_full_batches`
    (True: skip failed images and fill the batch from later jobs; the stream must then be
    endless) and `_initial_state()`.
    """

    def __init__(self, batch_size, workers, prefetch, name):
        self.batch_size = check_int(batch_size, "batch_size", name, 1)
        workers = check_int(workers or min(4, os.cpu_count() or 1), "workers", name, 1)
        self._prefetch = check_int(prefetch, "prefetch", name, 1)
        self._window = max(2 * workers, 4)     # images being decoded at once
        self.skipped = []                      # paths that failed to load, in stream order
        self.batch_paths = []                  # paths of the batch just returned
        self.state = self._initial_state()
        self._queue = queue.Queue(maxsize=self._prefetch)
        self._stop = threading.Event()
        self._done = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._thread = threading.Thread(target=self._run, name=f"{name}-batches", daemon=True)
        self._thread.start()

    # -- background thread ----------------------------------------------------------------
    def _put(self, item):
        """Queue `item`, waiting while the queue is full; False if the loader was closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        try:
            self._produce()
        except BaseException as e:  # hand any error to the consumer instead of dying silently
            self._put(e)

    def _produce(self):
        jobs = iter(self._jobs())
        pending = collections.deque()
        images, labels, paths, skipped = [], [], [], []
        failures_in_a_row, n_items = 0, len(self.items)
        state, exhausted = self.state, False
        while not self._stop.is_set():
            while not exhausted and len(pending) < self._window:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                else:
                    pending.append((job, self._pool.submit(job.fn, *job.args)))
            if not pending:
                break
            job, future = pending.popleft()
            state = job.state
            try:
                sample = future.result()
            except ImageError as e:
                skipped.append((job.path, str(e)))
                failures_in_a_row += 1
                if self._full_batches and failures_in_a_row >= n_items:
                    raise NoImagesError(f"none of the {n_items} images could be loaded; "
                                       f"last error: {e}") from e
                continue
            failures_in_a_row = 0
            images.append(sample)
            labels.append(job.label)
            paths.append(job.path)
            if len(images) == self.batch_size:
                if not self._put(_Batch(np.stack(images), np.asarray(labels, np.int32),
                                        paths, state, skipped)):
                    return
                images, labels, paths, skipped = [], [], [], []
        if images or skipped:   # the last, partial batch of a finite stream
            batch = np.stack(images) if images else None
            self._put(_Batch(batch, np.asarray(labels, np.int32), paths, state, skipped))
        self._put(_END)

    # -- consumer side ------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self):
        """The next (images float32, labels int32 (B,)) batch; see the module docstring."""
        while True:
            if self._done:
                raise StopIteration
            item = self._queue.get()
            if item is _END:
                self.close()
                raise StopIteration
            if isinstance(item, BaseException):
                self.close()
                raise item
            for path, message in item.skipped:
                self.skipped.append(path)
                warnings.warn(f"skipping an image that cannot be loaded: {message}",
                              RuntimeWarning, stacklevel=2)
            self.state = item.state
            if item.images is not None:
                self.batch_paths = item.paths
                return item.images, item.labels

    def close(self):
        """Stop the background thread and the pool (idempotent)."""
        if self._done:
            return
        self._done = True
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class TrainLoader(_BackgroundLoader):
    """Endless shuffled training batches with random crop and mirror (module docstring).

    items: [(image path, label), ...]; batch_size: samples per batch (always full).
    seed: fixes the epoch orders and the crops; epoch, position: where to start in the
    stream (a `state` saved earlier). resize / crop: image side before / after cropping
    (256 / 227 for CaffeNet). workers: decoding threads (default min(4, CPUs)).
    prefetch: finished batches kept ready ahead of the consumer.
    Yields images float32 (batch_size, 3, crop, crop) and labels int32 (batch_size,).
    """

    _full_batches = True

    def __init__(self, items, batch_size, seed=0, epoch=0, position=0, resize=RESIZE,
                 crop=CROP, mirror=True, workers=None, prefetch=2):
        name = "TrainLoader"
        self.items = _check_items(items, name)
        if not (isinstance(epoch, (int, np.integer)) and epoch >= 0
                and isinstance(position, (int, np.integer))
                and 0 <= position < len(self.items)):
            raise ValueError(f"{name}: start epoch must be >= 0 and position in "
                             f"[0, {len(self.items)}), got epoch={epoch!r}, "
                             f"position={position!r}")
        if crop > resize:
            raise ValueError(f"{name}: crop {crop} is larger than the resized side {resize}")
        self.seed, self.resize, self.crop, self.mirror = int(seed), resize, crop, mirror
        self._start = (int(epoch), int(position))
        super().__init__(batch_size, workers, prefetch, name)

    def _initial_state(self):
        return {"epoch": self._start[0], "position": self._start[1]}

    def _jobs(self):
        n = len(self.items)
        epoch, start = self._start
        while True:
            order = epoch_order(n, self.seed, epoch)
            for position in range(start, n):
                path, label = self.items[order[position]]
                after = ({"epoch": epoch, "position": position + 1} if position + 1 < n
                         else {"epoch": epoch + 1, "position": 0})
                yield _Job(path, label, load_train_sample,
                           (path, self.seed, epoch, position, self.resize, self.crop,
                            self.mirror), after)
            epoch, start = epoch + 1, 0

    @property
    def epoch(self):
        """Epoch of the next sample (a float epoch count is epoch + position / len(items))."""
        return self.state["epoch"]

    @property
    def position(self):
        """Position, within its epoch's order, of the next sample."""
        return self.state["position"]


class EvalLoader(_BackgroundLoader):
    """One pass over `items` in order, centre crop or ten crops (module docstring).

    Yields images float32 (B, 3, crop, crop) for crops='center' or (B, 10, 3, crop, crop)
    for crops='ten', and labels int32 (B,); B = batch_size except for the last batch.
    Images that fail to load are skipped (warning, `skipped`); `batch_paths` lists the
    images of the batch just returned.
    """

    _full_batches = False

    def __init__(self, items, batch_size, crops="center", resize=RESIZE, crop=CROP,
                 workers=None, prefetch=2):
        name = "EvalLoader"
        self.items = _check_items(items, name)
        if crops not in ("center", "ten"):
            raise ValueError(f"{name}: crops must be 'center' or 'ten', got {crops!r}")
        if crop > resize:
            raise ValueError(f"{name}: crop {crop} is larger than the resized side {resize}")
        self.crops, self.resize, self.crop = crops, resize, crop
        super().__init__(batch_size, workers, prefetch, name)

    def _initial_state(self):
        return {"index": 0}

    def _jobs(self):
        for index, (path, label) in enumerate(self.items):
            yield _Job(path, label, load_eval_sample, (path, self.crops, self.resize,
                                                       self.crop), {"index": index + 1})
