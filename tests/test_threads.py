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


def _all_layers(rng):
    """Pooling and LRN (images split over threads), conv (im2col and col2im: channels
    split; Winograd's transforms: images split) and the fc forward (rows of W split) on
    odd sizes (N = 5, 7 outputs), float32."""
    out = []
    x = rng.standard_normal((5, 6, 11, 9)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    for stride in (2, 1):   # im2col (col2im: channels split), Winograd (images split)
        y, cache = conv_forward(x, w, b, stride=stride, pad=1, group=2, relu=True)
        out += [y, *conv_backward(rng.standard_normal(y.shape).astype(np.float32), cache)]
    y, cache = max_pool_forward(x, 3, 2, pad=1)
    out += [y, cache["argmax"], max_pool_backward(
        rng.standard_normal(y.shape).astype(np.float32), cache)]
    y, cache = lrn_forward(x, 5, alpha=0.5, beta=0.75)
    out += [y, lrn_backward(rng.standard_normal(y.shape).astype(np.float32), cache)]
    w_fc = rng.standard_normal((7, x[0].size)).astype(np.float32)
    out.append(inner_product_forward(x, w_fc, rng.standard_normal(7).astype(np.float32))[0])
    return out


@pytest.mark.parametrize("count", [2, 3, 4])
def test_layers_split_over_threads_match_one_thread(monkeypatch, count):
    monkeypatch.setattr(threads, "THREADS", 1)
    one = _all_layers(np.random.default_rng(8))
    monkeypatch.setattr(threads, "THREADS", count)
    many = _all_layers(np.random.default_rng(8))
    for a, e in zip(many, one):
        # products summed in another order may differ in the last bits
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
