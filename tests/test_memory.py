"""nn/memory.py: after keep_freed_memory, a large buffer freed and allocated again costs
no fresh page faults (glibc Linux only)."""
import resource
import sys

import numpy as np
import pytest

from nn.memory import keep_freed_memory


def faults_of_touching(nbytes):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(nbytes // 4, dtype=np.float32)
    a.fill(1.5)                  # touch every page
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del a
    return after - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_large_buffers_are_reused_without_page_faults():
    if not keep_freed_memory():
        pytest.skip("this C library has no mallopt (not glibc)")
    nbytes = 96 << 20            # above glibc's largest default mmap threshold (32 MiB)
    faults_of_touching(nbytes)   # first use: the heap grows, pages are faulted in
    again = faults_of_touching(nbytes)
    pages = nbytes // 4096
    assert again < 32, f"{again} page faults for {pages} pages reused (560 measured without)"
    assert keep_freed_memory() is True   # idempotent
