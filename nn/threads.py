"""Splitting the CPU path's work over the batch on a few threads.

NumPy releases the GIL inside copies, ufuncs and matrix products on large arrays, so
plain Python threads run them truly in parallel. The layers split their batch into
contiguous chunks of images, one per thread (`run_split`); each thread writes only its
own images' rows of the outputs, so no locking is needed.

The matrix products inside such a split would fight with the BLAS library's own threads
(2 threads of ours x 2 BLAS threads on 2 cores: the BLAS threads spin waiting for each
other). `blas_threads_limited()` therefore asks the BLAS library that NumPy loaded
(OpenBLAS) to use one thread while our threads run; when that library cannot be found
(`BLAS_CONTROL` is False), the layers keep their products on the calling thread instead
(`gemm_parts()` is then 1) and leave the threading to BLAS.
"""
import contextlib
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np


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


# --------------------------------------------------------------- BLAS thread control
def _find_openblas():
    """(get_num_threads, set_num_threads) of the OpenBLAS already loaded in this process
    (NumPy's wheels bundle one, with prefixed, 64-bit-integer symbol names), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return None
    names = ("scipy_openblas_{}64_", "scipy_openblas_{}", "openblas_{}64_", "openblas_{}")
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            get_name, set_name = name.format("get_num_threads"), name.format("set_num_threads")
            if hasattr(lib, get_name) and hasattr(lib, set_name):
                getter, setter = getattr(lib, get_name), getattr(lib, set_name)
                getter.restype, setter.restype = ctypes.c_int, None
                setter.argtypes = [ctypes.c_int]
                return getter, setter
    return None


np.ones((2, 2)) @ np.ones((2, 2))  # make sure NumPy's BLAS library is loaded
_BLAS = _find_openblas()
BLAS_CONTROL = _BLAS is not None
_limit_lock = threading.Lock()
_limit_depth = 0
_saved_threads = None


def gemm_parts():
    """How many of our threads may run matrix products at once: THREADS when BLAS can be
    limited to one thread meanwhile, else 1 (BLAS threads itself)."""
    return THREADS if BLAS_CONTROL else 1


@contextlib.contextmanager
def blas_threads_limited():
    """Run the body with the BLAS library on one thread (no-op without BLAS_CONTROL).
    Re-entrant and safe from several threads: the first entry lowers the count, the
    last exit restores it."""
    global _limit_depth, _saved_threads
    if not BLAS_CONTROL or THREADS == 1:
        yield
        return
    getter, setter = _BLAS
    with _limit_lock:
        if _limit_depth == 0:
            _saved_threads = getter()
            setter(1)
        _limit_depth += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_depth -= 1
            if _limit_depth == 0:
                setter(_saved_threads)


def run_split_gemm(n, fn):
    """run_split for chunks that call matrix products: as many chunks as gemm_parts(),
    with BLAS on one thread while they run."""
    parts = gemm_parts()
    if parts == 1:
        return run_split(n, fn, 1)
    with blas_threads_limited():
        return run_split(n, fn, parts)
