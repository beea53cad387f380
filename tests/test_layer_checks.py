"""The NumPy reference (nn/<layer>.py) and the kernel launchers (kernels/<family>.py) share
one check of each layer's hyper-parameters and shapes: the same bad argument must give the
same ValueError message on both sides.

The arrays here are float32 and C-contiguous, so both sides' own array checks pass and the
error comes from the shared check. No kernel is launched (every call fails before), so the
emulator runner is used as is, without compiling anything.
"""
import re

import numpy as np
import pytest

import nn.conv
import nn.dropout
import nn.inner_product
import nn.lrn
import nn.pool
import nn.sgd
import nn.softmax
from kernels import conv, dropout, gemm, lrn, pool, sgd, softmax
from kernels.runner import get_runner


@pytest.fixture(scope="module")
def emu():
    return get_runner("emu")


def uniform(shape, seed=0):
    """float32 values in [0.5, 1.5): no zeros."""
    return np.random.default_rng(seed).uniform(0.5, 1.5, size=shape).astype(np.float32)


def same_error(reference, launcher, match):
    """Call both (no-argument callables); both must raise ValueError with one message, which
    must match `match`. Returns the message."""
    with pytest.raises(ValueError) as ref:
        reference()
    with pytest.raises(ValueError) as ker:
        launcher()
    assert str(ref.value) == str(ker.value)
    assert re.search(match, str(ref.value)), str(ref.value)
    return str(ref.value)


@pytest.mark.parametrize("kw, match", [
    (dict(local_size=4), r"^norm1: local_size must be odd .*got 4$"),
    (dict(local_size=0), r"^norm1: local_size must be an integer >= 1, got 0$"),
    (dict(local_size=3.0), r"^norm1: local_size must be an integer >= 1, got 3\.0$"),
    (dict(alpha=-1e-4), r"^norm1: alpha must be a finite number in \[0\.0, inf\]"),
    (dict(beta=float("nan")), r"^norm1: beta must be a finite number"),
    (dict(k="1"), r"^norm1: k must be a number, got '1'$"),
    (dict(k=0.0), r"^norm1: k must be > 0 so that scale stays positive, got 0\.0$"),
])
def test_lrn_params(emu, kw, match):
    x = uniform((1, 5, 3, 2))
    same_error(lambda: nn.lrn.lrn_forward(x, layer="norm1", **kw),
               lambda: lrn.lrn_forward(emu, x, layer="norm1", **kw), match)


@pytest.mark.parametrize("shape, kw, match", [
    ((1, 2, 5, 7), dict(kernel=0, stride=1), r"^pool2: kernel must be an integer >= 1"),
    ((1, 2, 5, 7), dict(kernel=3, stride=0), r"^pool2: stride must be an integer >= 1"),
    ((1, 2, 5, 7), dict(kernel=3, stride=True), r"^pool2: stride must be an integer >= 1"),
    ((1, 2, 5, 7), dict(kernel=3, stride=2, pad=-1), r"^pool2: pad must be an integer >= 0"),
    ((1, 2, 5, 7), dict(kernel=3, stride=2, pad=3),
     r"^pool2: pad = 3 must be smaller than kernel = 3 \(Caffe's rule\)$"),
    ((1, 2, 5, 2), dict(kernel=3, stride=1),
     r"^pool2: kernel 3 does not fit the padded input 5x2 \(x of shape \(1, 2, 5, 2\), "
     r"pad = 0\)$"),
])
def test_pool_params(emu, shape, kw, match):
    x = uniform(shape)
    same_error(lambda: nn.pool.max_pool_forward(x, layer="pool2", **kw),
               lambda: pool.max_pool_forward(emu, x, layer="pool2", **kw), match)


def test_pool_params_give_the_output_size():
    """check_pool_params returns Caffe's output size (ceil, then the pad correction)."""
    assert nn.pool.check_pool_params((2, 3, 13, 6), 3, 2, 0, "p") == (3, 2, 0, 6, 3)
    assert nn.pool.check_pool_params((1, 1, 5, 6), 2, 2, 1, "p") == (2, 2, 1, 3, 4)


@pytest.mark.parametrize("shapes, kw, match", [
    (((2, 6, 7, 9), (6, 3, 3, 3), (6,)), dict(stride=0), r"^conv3: stride must be an integer >= 1"),
    (((2, 6, 7, 9), (6, 3, 3, 3), (6,)), dict(pad=-1), r"^conv3: pad must be an integer >= 0"),
    (((2, 6, 7, 9), (6, 3, 3, 3), (6,)), dict(group=1.5), r"^conv3: group must be an integer"),
    (((0, 6, 7, 9), (6, 3, 3, 3), (6,)), {},
     r"^conv3: x \(0, 6, 7, 9\) and w \(6, 3, 3, 3\) must not have empty axes$"),
    (((2, 6, 7, 9), (6, 3, 0, 3), (6,)), {}, r"^conv3: .* must not have empty axes$"),
    (((2, 6, 7, 9), (5, 3, 3, 3), (5,)), {},
     r"^conv3: the number of filters K = 5 \(w.shape\[0\]\) must be divisible by group = 2$"),
    (((2, 5, 7, 9), (6, 3, 3, 3), (6,)), {},
     r"^conv3: x must have shape \(N, 6, H, W\) \(C = w.shape\[1\] \* group = 3 \* 2\), "
     r"got \(2, 5, 7, 9\)$"),
    (((2, 6, 7, 9), (6, 3, 3, 3), (5,)), {},
     r"^conv3: b must have shape \(6,\) \(one bias per filter, K = w.shape\[0\]\), got \(5,\)$"),
    (((2, 6, 7, 4), (6, 3, 3, 5), (6,)), {},
     r"^conv3: kernel 3x5 does not fit the padded input 7x4 \(x of shape \(2, 6, 7, 4\), "
     r"pad = 0\)$"),
])
def test_conv_params(emu, shapes, kw, match):
    x, w, b = (uniform(s, seed) for seed, s in enumerate(shapes))
    kw = dict(dict(group=2), **kw)
    same_error(lambda: nn.conv.conv_forward(x, w, b, layer="conv3", **kw),
               lambda: conv.conv_forward(emu, x, w, b, layer="conv3", **kw), match)


def test_conv_params_give_the_output_size():
    """Caffe's floor rule: Ho = (H + 2*pad - kh) // stride + 1."""
    assert nn.conv.check_conv_params((2, 6, 11, 8), (4, 3, 3, 2), (4,), 2, 1, 2, "c") == \
        (2, 1, 2, 6, 5)


@pytest.mark.parametrize("shapes, match", [
    (((7,), (5, 7), (5,)),
     r"^fc6: x must be an array of shape \(N, D\) or \(N, \.\.\.\) with D = 7 \(w.shape\[1\]\) "
     r"elements per sample, got \(7,\)$"),
    (((3, 2, 4), (5, 7), (5,)),
     r"^fc6: x must have D = 7 \(w.shape\[1\]\) elements per sample, i.e. shape \(N, 7\) or "
     r"\(N, \.\.\.\) with product 7; got \(3, 2, 4\)$"),
    (((0, 7), (5, 7), (5,)), r"^fc6: x \(0, 7\) and w \(5, 7\) must not have empty axes$"),
    (((3, 7), (5, 7), (4,)),
     r"^fc6: b must have shape \(5,\) \(one bias per output, O = w.shape\[0\]\), got \(4,\)$"),
])
def test_inner_product_shapes(emu, shapes, match):
    x, w, b = (uniform(s, seed) for seed, s in enumerate(shapes))
    same_error(lambda: nn.inner_product.inner_product_forward(x, w, b, layer="fc6"),
               lambda: gemm.inner_product_forward(emu, x, w, b, layer="fc6"), match)


def test_inner_product_shapes_give_n_d_o():
    assert nn.inner_product.check_inner_product_shapes((3, 2, 5), (4, 10), (4,), "f") == \
        (3, 10, 4)


def test_softmax_shape(emu):
    x = uniform((3, 5, 2))
    same_error(lambda: nn.softmax.softmax(x, layer="prob"),
               lambda: softmax.softmax(emu, x, layer="prob"),
               r"^prob: scores must have shape \(N, C\) or \(N, C, H, W\), got \(3, 5, 2\)$")


@pytest.mark.parametrize("n, labels, match", [
    (3, [0, 4, 1], r"^{}: labels must lie in \[0, 4\) \(C = scores.shape\[1\]\), got values "
                   r"in \[0, 4\]$"),
    (3, [2, -1, 3], r"^{}: labels must lie in \[0, 4\) .*got values in \[-1, 3\]$"),
    (3, [0, 1], r"^{}: labels must have shape \(3,\) \(one label per row of scores\), "
                r"got \(2,\)$"),
    (0, [], r"^{}: scores must have at least one row \(the loss is a mean over rows\)$"),
])
@pytest.mark.parametrize("name", ["softmax_loss_forward", "accuracy"])
def test_softmax_labels(emu, name, n, labels, match):
    scores = uniform((n, 4))
    labels = np.array(labels, dtype=np.int32)
    same_error(lambda: getattr(nn.softmax, name)(scores, labels, layer="loss"),
               lambda: getattr(softmax, name)(emu, scores, labels, layer="loss"),
               match.format("loss"))


def test_softmax_loss_weight(emu):
    scores, labels = uniform((3, 4)), np.array([0, 3, 1], dtype=np.int32)
    _, ref_cache = nn.softmax.softmax_loss_forward(scores, labels)
    # The launcher's forward runs a kernel: build its cache (p, labels) directly instead.
    ker_cache = (nn.softmax.softmax(scores), labels)
    same_error(lambda: nn.softmax.softmax_loss_backward(ref_cache, loss_weight="1"),
               lambda: softmax.softmax_loss_backward(emu, ker_cache, loss_weight="1"),
               r"^softmax_loss_backward: loss_weight must be a number, got '1'$")


@pytest.mark.parametrize("kw, match", [
    (dict(ratio=1.0, seed=3), r"^drop7: ratio must be a finite number in \[0.0, 1.0\), got 1.0$"),
    (dict(ratio=-0.5, seed=3), r"^drop7: ratio must be a finite number in \[0.0, 1.0\)"),
    (dict(ratio=None, seed=3), r"^drop7: ratio must be a number, got None$"),
    (dict(ratio=0.5, seed=-1), r"^drop7: seed must be an integer >= 0, got -1$"),
    (dict(ratio=0.5, seed=2 ** 32), r"^drop7: seed must be < 2\*\*32 \(it is used as a uint32\)"),
    (dict(ratio=0.5, seed=1.0), r"^drop7: seed must be an integer >= 0, got 1.0$"),
])
@pytest.mark.parametrize("train", [True, False])
def test_dropout_params(emu, kw, match, train):
    x = uniform((3, 5))
    same_error(lambda: nn.dropout.dropout_forward(x, train=train, layer="drop7", **kw),
               lambda: dropout.dropout_forward(emu, x, train=train, layer="drop7", **kw), match)


@pytest.mark.parametrize("bad, match", [
    (dict(grad=(3, 4)), r"^sgd_update: grad must have shape \(3, 5\) \(the shape of param\), "
                        r"got \(3, 4\)$"),
    (dict(history=(5, 3)), r"^sgd_update: history must have shape \(3, 5\) "),
    (dict(read_only="param"), r"^sgd_update: param and history are updated in place and must "
                              r"be writeable$"),
    (dict(read_only="history"), r"must be writeable$"),
    (dict(lr="0.1"), r"^sgd_update: lr must be a number, got '0.1'$"),
    (dict(momentum=float("inf")), r"^sgd_update: momentum must be a finite number"),
    (dict(weight_decay=True), r"^sgd_update: weight_decay must be a number, got True$"),
    (dict(grad_scale=float("nan")), r"^sgd_update: grad_scale must be a finite number"),
])
def test_sgd_args(emu, bad, match):
    arrays = {name: uniform(bad.get(name, (3, 5)), seed)
              for seed, name in enumerate(("param", "grad", "history"))}
    if "read_only" in bad:
        arrays[bad["read_only"]].flags.writeable = False
    scalars = dict(lr=0.01, momentum=0.9, weight_decay=5e-4, grad_scale=0.5)
    scalars.update((k, v) for k, v in bad.items() if k in scalars)
    before = {name: a.copy() for name, a in arrays.items()}
    same_error(lambda: nn.sgd.sgd_update(**arrays, **scalars),
               lambda: sgd.sgd_update(emu, **arrays, **scalars), match)
    for name, a in arrays.items():   # a rejected update changes nothing
        np.testing.assert_array_equal(a, before[name])
