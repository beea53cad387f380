"""Keep freed memory for reuse, so the CPU path's large buffers cost no page faults.

glibc hands every allocation above 32 MiB out as a fresh mmap and returns it to the
system when it is freed. The CPU path allocates such buffers in every layer of every
pass (conv2's column matrix is 112 MB at batch 16), so each pass would touch fresh pages
and take one page fault per 4 KiB: about 10% of CaffeNet's inference time on a 2-core
machine, measured. Raising glibc's mmap and trim thresholds makes large buffers come
from the heap, and freed ones stay there for the next layer, as a deep-learning
framework's caching allocator would. The cost: the process keeps its peak memory.
Elsewhere than glibc, nothing is changed.
"""
import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def keep_freed_memory():
    """Ask glibc to serve large allocations from the heap and keep freed memory (once per
    process). Returns True when the setting took effect."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
