"""nn/threads.py (splitting work over threads) and the layers that use it (pooling, LRN,
im2col and col2im, Winograd's transforms, the fc forward): a split into any number of
chunks must give the same numbers as one chunk."""
import threading

import numpy as np
import pytest

from nn import threads
from nn.conv import conv_backward, conv_forward
from nn.inner_product import inner_product_forward
from nn.lrn import lrn_backward, lrn_forward
from nn.pool import max_pool_backward, max_pool_forward


def test_chunks_cover_the_range_evenly():
    assert threads.chunks(5, 2) == [(0, 2), (2, 5)]
    assert threads.chunks(2, 4) == [(0, 1), (1, 2)]   # never an empty chunk
    assert threads.chunks(7, 1) == [(0, 7)]
    for n in (1, 6, 11):
        for parts in (1, 2, 3, 5):
            ranges = threads.chunks(n, parts)
            assert [lo for lo, _ in ranges[1:]] == [hi for _, hi in ranges[:-1]]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            sizes = [hi - lo for lo, hi in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_run_split_results_in_order_and_on_several_threads(monkeypatch):
    monkeypatch.setattr(threads, "THREADS", 3)
    seen = set()

    def fn(lo, hi):
        seen.add(threading.get_ident())
        return list(range(lo, hi))
    parts = threads.run_split(8, fn)
    assert sum(parts, []) == list(range(8)) and len(parts) == 3
    assert threading.get_ident() in seen


def test_run_split_reraises_after_every_chunk_finished(monkeypatch):
    monkeypatch.setattr(threads, "THREADS", 3)
    done = []

    def fn(lo, hi):
        if lo == 0:
            raise RuntimeError("chunk 0 failed")
        done.append(lo)
    with pytest.raises(RuntimeError, match="chunk 0 failed"):
        threads.run_split(9, fn)
    assert sorted(done) == [3, 6]


def _all_layers(rng, dtype, n):
    """Pooling and LRN (images split over threads), conv (im2col and col2im: channels
    split; Winograd's transforms: images split) and the fc forward (rows of W split) on
    odd sizes: N images, 6 channels (and a 1-channel conv: fewer channels than threads),
    fc with 130 outputs (split) and 7 (too few rows to split)."""
    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)
    out = []
    x = normal(n, 6, 11, 9)
    for xc, w, stride in ((x, normal(8, 3, 3, 3), 2),   # im2col, col2im
                          (x, normal(8, 3, 3, 3), 1),   # Winograd
                          (x[:, :1], normal(4, 1, 5, 5), 1)):   # im2col, one channel
        group = xc.shape[1] // w.shape[1]
        y, cache = conv_forward(xc, w, normal(w.shape[0]), stride=stride, pad=1, group=group,
                                relu=True)
        out += [y, *conv_backward(normal(*y.shape), cache)]
    y, cache = max_pool_forward(x, 3, 2, pad=1)
    out += [y, cache["argmax"], max_pool_backward(normal(*y.shape), cache)]
    y, cache = lrn_forward(x, 5, alpha=0.5, beta=0.75)
    out += [y, lrn_backward(normal(*y.shape), cache)]
    for outputs in (130, 7):
        w_fc = normal(outputs, x[0].size)
        out.append(inner_product_forward(x, w_fc, normal(outputs))[0])
    return out


@pytest.mark.parametrize("count", [2, 3, 5])
@pytest.mark.parametrize("dtype, n", [(np.float32, 5), (np.float64, 1)])
def test_layers_split_over_threads_match_one_thread(monkeypatch, count, dtype, n):
    """Bit for bit: every chunk computes its own slice exactly as one thread would."""
    monkeypatch.setattr(threads, "THREADS", 1)
    one = _all_layers(np.random.default_rng(8), dtype, n)
    monkeypatch.setattr(threads, "THREADS", count)
    many = _all_layers(np.random.default_rng(8), dtype, n)
    for a, e in zip(many, one):
        np.testing.assert_array_equal(a, e)


def test_importing_nn_first_quiets_openblas_threads():
    """nn/__init__.py sets OPENBLAS_THREAD_TIMEOUT before NumPy loads, unless it is set."""
    import os
    import subprocess
    import sys
    code = "import nn, os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = [sys.executable, "-c", code]
    assert subprocess.run(run, env=env, cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip() == "4"
    assert subprocess.run(run, env=dict(env, OPENBLAS_THREAD_TIMEOUT="20"), cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip() == "20"
    numpy_first = [sys.executable, "-c", "import numpy; " + code]
    assert subprocess.run(numpy_first, env=env, cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip() == "None"   # too late to matter
