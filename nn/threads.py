"""Splitting the CPU path's work over a few threads.

NumPy releases the GIL inside copies and ufuncs on large arrays, so plain Python threads
run them truly in parallel. `run_split` cuts a range into contiguous chunks, one per
thread; each thread writes only its own chunk of the outputs, so no locking is needed.
What is split: max-pool forward and LRN (images, nn/pool.py, nn/lrn.py), im2col and
col2im (channels, nn/conv.py), the bias and ReLU after im2col's products (images),
Winograd's transforms (images, nn/winograd.py), the SGD update (blocks, nn/sgd.py) and
the fully connected forward (rows of W, nn/inner_product.py).

Matrix products are mostly left to the BLAS library's own threads: on the 2-core
machine, splitting conv products over our threads was slower than one large product on
both BLAS threads (conv3 forward 45 ms against 29 ms at batch 16, measured by an earlier
session while OpenBLAS threads still spun; Winograd's 16 products split over our threads
measured no faster since). The exception is the fully connected forward at a small batch,
y^T = W x^T split by blocks of 64 rows of W (nn/inner_product.py; not for one
image): fc6 at batch 16 takes 11 ms that way, 20 ms as one x @ W^T call.

run_split must not be nested (a chunk calling run_split could wait on itself).
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor


def _available_cpus():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# How many threads (the caller included) share a split. CAFFENET_THREADS overrides it.
THREADS = max(1, int(os.environ.get("CAFFENET_THREADS", 0)) or min(_available_cpus(), 8))

_pool = None
_pool_lock = threading.Lock()


def _executor():
    """The shared worker threads (THREADS - 1 of them: the caller does one chunk)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, THREADS - 1),
                                       thread_name_prefix="caffenet-cpu")
        return _pool


def chunks(n, parts):
    """Split range(n) into at most `parts` contiguous (lo, hi) ranges of near-equal length,
    none empty: chunks(5, 2) == [(0, 2), (2, 5)]."""
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def run_split(n, fn, parts=None):
    """Call fn(lo, hi) for contiguous chunks of range(n), in parallel; return the results
    in chunk order. The caller runs the first chunk itself; if any call raises, every
    other chunk is still waited for (no thread keeps writing into a shared output)
    before the first error is re-raised."""
    ranges = chunks(n, THREADS if parts is None else parts)
    if len(ranges) == 1:
        return [fn(*ranges[0])]
    futures = [_executor().submit(fn, lo, hi) for lo, hi in ranges[1:]]
    try:
        first = fn(*ranges[0])
    finally:
        errors = [f.exception() for f in futures]  # waits for each
    for error in errors:
        if error is not None:
            raise error
    return [first] + [f.result() for f in futures]
