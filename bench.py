#!/usr/bin/env python
"""How fast are the hand-written kernels? Time every layer of CaffeNet, honestly.

    python bench.py                          # GPU if there is one, else the CPU path
    python bench.py --device cpu --batch 16  # the NumPy reference, next to PyTorch CPU
    python bench.py --only conv2 --versions  # one layer, every kept kernel version
    python bench.py --json results.json      # every figure, device and settings

For every kernel at CaffeNet's real layer shapes (forward and backward of conv1..conv5,
fc6..fc8, pooling, LRN, ReLU, dropout, softmax-loss, and the SGD update) it reports the
median time over repeated runs after warm-up, GFLOP/s and GB/s from the counts in
nn/flops.py, the fraction of the machine's roofline measured in the same run (a large copy
for bandwidth, the best FP32 matrix product for compute), and the same operation through
the library a user would otherwise pick (cuBLAS via CuPy, cuDNN via PyTorch, or PyTorch's
CPU build), with the ratio. Then the whole network: training step and inference
images/s, and batch-1 latency, next to PyTorch running the identical network.

Every result is checked against the NumPy reference in float64 before it is timed; a
result that disagrees is reported as WRONG and not timed. See docs/benchmarks.md.
"""
import argparse
import collections
import datetime
import functools
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types

import nn  # first, before NumPy: see nn/__init__.py (OpenBLAS threads)
import numpy as np

from kernels.ops import OP_NAMES   # the op set of docs/design.md
from nn import flops
from nn.atomic import atomic_write, check_writable

CHECK_IMAGES = 2        # images compared with the float64 reference: first and last
TOLERANCE = 1e-4        # max |result - reference| / max |reference|: float32 against float64
# The same for the tensor-core (TF32) versions: TF32 keeps 10 of float32's 23 mantissa bits,
# about 5e-4 relative per operand, which long sums add up; a wrong index is off by O(1).
TF32_TOLERANCE = 1e-2
FLUSH_BYTES = 256 << 20  # written between GPU runs: several times any GPU's L2 cache
# The GPU flush is written this many times: about 0.2 ms of GPU work on an H200, queued
# before the start event, while the host queues the timed launches behind it. Otherwise the
# GPU would reach the start event and then wait on Python (the launchers' checks, tens of
# microseconds a launch), and that wait would count as kernel time in the small cases.
GPU_FLUSH_PASSES = 4
CPU_SETTLE_S = 0.02      # idle time before each CPU run (see CpuTimer)
GPU_BATCHES = (256, 1)
CPU_BATCH = 16
SGD_LAYER = 'fc6'       # the SGD update is timed on the largest blob, fc6's weights
DROPOUT_SEED = 1234
SGD_ARGS = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
# The timed training steps use a tiny rate: speed does not depend on it, and a real one
# would drive the random network to inf/NaN within a few repeated steps.
NET_LR = 1e-7


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (no GPU for --device cuda, unknown --only...)."""


# ------------------------------------------------------------------------------ timers
def cpu_flush_bytes():
    """Bytes to write to flush the CPU caches: 4x the last-level cache (Linux sysfs),
    at least 32 MiB, at most FLUSH_BYTES."""
    biggest = 0
    folder = '/sys/devices/system/cpu/cpu0/cache'
    entries = os.listdir(folder) if os.path.isdir(folder) else []
    for entry in entries:
        try:
            with open(os.path.join(folder, entry, 'size')) as f:
                text = f.read().strip()
            scale = {'K': 1 << 10, 'M': 1 << 20}.get(text[-1:], 1)
            biggest = max(biggest, int(text.rstrip('KM')) * scale)
        except (OSError, ValueError):
            continue  # not a cache folder (uevent), or an unreadable size
    return int(min(max(4 * biggest, 32 << 20), FLUSH_BYTES))


class _Timer:
    """The measuring loop shared by CpuTimer and GpuTimer, which supply flush() (evict the
    caches) and time_once(fn) (run fn once, return its seconds)."""

    def measure(self, fn, warmup, repeats, flush=True):
        """Run fn warmup times, then time it repeats times, flushing the caches before each
        timed run when `flush`; returns the list of seconds."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if flush:
                self.flush()
            times.append(self.time_once(fn))
        return times


class CpuTimer(_Timer):
    """Wall-clock time of a host function (the CPU path and PyTorch CPU), with the CPU
    caches flushed before every run, as on the GPU, and then CPU_SETTLE_S of idle time:
    PyTorch's OpenMP threads keep spinning for a few milliseconds after its work, and a
    run started at once shares the cores with them (measured on 2 cores: our conv1 took
    32.3 ms right after PyTorch's conv1 and the flush, 28.9 after our own; with 20 ms of
    idle time in between, 29.3). PyTorch is not slowed by ours (OpenBLAS's threads sleep
    at once, nn/__init__.py)."""
    name = 'perf_counter, caches flushed, 20 ms idle before each run'

    _flush_buf = None  # one buffer shared by every CpuTimer

    def __init__(self):
        if CpuTimer._flush_buf is None:
            CpuTimer._flush_buf = np.empty(cpu_flush_bytes() // 4, dtype=np.float32)
        self.flush_buf = CpuTimer._flush_buf

    def flush(self):
        self.flush_buf.fill(0)  # evicts what the last run left in the caches
        time.sleep(CPU_SETTLE_S)

    def time_once(self, fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


class GpuTimer(_Timer):
    """CUDA-event time of GPU work, with the L2 cache flushed before every run.

    `lib` is 'cupy' or 'torch': the events, the flush buffer and the timed work must be on
    the same library's current stream, so each library gets its own timer.
    """

    def __init__(self, lib, module):
        self.lib, self.m = lib, module
        self.name = f'CUDA events ({lib}), L2 flushed'
        if lib == 'cupy':
            self.flush_buf = module.empty(FLUSH_BYTES // 4, dtype=module.float32)
        else:
            self.flush_buf = module.empty(FLUSH_BYTES // 4, dtype=module.float32, device='cuda')

    def _event(self):
        if self.lib == 'cupy':
            return self.m.cuda.Event()
        return self.m.cuda.Event(enable_timing=True)

    def flush(self):
        # Writing a buffer larger than L2 evicts what the previous run left in it; the
        # repeats keep the GPU busy while the timed launches are queued (GPU_FLUSH_PASSES).
        for _ in range(GPU_FLUSH_PASSES):
            if self.lib == 'cupy':
                self.flush_buf.fill(0)
            else:
                self.flush_buf.zero_()

    def time_once(self, fn):
        start, end = self._event(), self._event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        ms = (self.m.cuda.get_elapsed_time(start, end) if self.lib == 'cupy'
              else start.elapsed_time(end))
        return ms / 1e3


# ------------------------------------------------------------------------------ cases
class Case:
    """One timed operation at one layer's shape.

    make(rng, batch) -> {name: numpy array}: the inputs (float32; labels int32).
    prepare(ops, inputs) -> state: untimed set-up (e.g. the forward whose cache a backward
        needs); run(ops, state) -> tuple of outputs: the timed call. Both are written once
        against the op set, so the same code runs our kernels and the float64 reference.
    per_sample: for each output, whether its leading axis follows the inputs' leading axis
        (then rows of the full-batch output can be checked too).
    check_all: the reference is cheap enough to check the whole batch (dropout: its mask
        depends on the flat index, so rows cannot be checked apart; loss: a batch mean).
    op: the op-set function timed (for --versions); counts: flops.Counts at this batch;
    vendor: the (kind, pass) key of the library version, or None.
    """

    def __init__(self, name, layer, op, counts, make, prepare, run, per_sample,
                 vendor=None, check_all=False):
        self.name, self.layer, self.op, self.counts = name, layer, op, counts
        self.make, self.prepare, self.run, self.per_sample = make, prepare, run, per_sample
        self.vendor, self.check_all = vendor, check_all


def _normal(rng, shape, scale=1.0):
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)


def _forward_fn(layer):
    """(op family, fwd(ops, t) -> (out, cache)) for a layer, written against the op set."""
    p, name, kind = layer.params, layer.name, layer.kind
    if kind == 'conv':
        return 'conv', lambda ops, t: ops.conv_forward(
            t['x'], t['w'], t['b'], stride=p['stride'], pad=p['pad'], group=p['group'],
            layer=name)
    if kind == 'fc':
        return 'inner_product', lambda ops, t: ops.inner_product_forward(
            t['x'], t['w'], t['b'], layer=name)
    if kind == 'pool':
        return 'max_pool', lambda ops, t: ops.max_pool_forward(
            t['x'], p['kernel'], p['stride'], pad=p['pad'], layer=name)
    if kind == 'lrn':
        return 'lrn', lambda ops, t: ops.lrn_forward(
            t['x'], local_size=p['local_size'], alpha=p['alpha'], beta=p['beta'], k=p['k'],
            layer=name)
    if kind == 'relu':
        return 'relu', lambda ops, t: ops.relu_forward(t['x'])
    if kind == 'dropout':
        return 'dropout', lambda ops, t: ops.dropout_forward(t['x'], p['ratio'], DROPOUT_SEED,
                                                             train=True)
    if kind == 'loss':
        return 'softmax_loss', lambda ops, t: ops.softmax_loss_forward(t['x'], t['labels'])
    raise BenchError(f'layer {name!r}: no benchmark for layer kind {kind!r}')


def _make_inputs(layer):
    """make(rng, n) for a layer: x, dy (and He-scaled w, b; or scores and labels)."""
    if layer.kind == 'loss':
        c = layer.in_shape[0]
        return lambda rng, n: {'x': _normal(rng, (n, c), 3.0),
                               'labels': rng.integers(0, c, size=n).astype(np.int32)}
    if layer.kind in ('conv', 'fc'):
        w_shape = flops.weight_shape(layer)
        std = np.sqrt(2.0 / np.prod(w_shape[1:]))
        return lambda rng, n: {'x': _normal(rng, (n,) + layer.in_shape),
                               'w': _normal(rng, w_shape, std),
                               'b': _normal(rng, (w_shape[0],), 0.1),
                               'dy': _normal(rng, (n,) + layer.out_shape)}
    return lambda rng, n: {'x': _normal(rng, (n,) + layer.in_shape),
                           'dy': _normal(rng, (n,) + layer.out_shape)}


def _numpy_matmul(a, b, trans_a=False, trans_b=False):
    """The CPU path's matrix product (NumPy's BLAS), with kernels/gemm.py's signature."""
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


# The three fc products, written once for every array library (NumPy, CuPy, PyTorch):
# pass -> (our call through ops.matmul, the library's `@`, outputs with a row per image).
_PRODUCTS = {
    'forward': (lambda ops, t: ops.matmul(t['x'], t['w'], trans_b=True),
                lambda T: T['x'] @ T['w'].T, True),
    'backward_data': (lambda ops, t: ops.matmul(t['dy'], t['w']),
                      lambda T: T['dy'] @ T['w'], True),
    'backward_weights': (lambda ops, t: ops.matmul(t['dy'], t['x'], trans_a=True),
                         lambda T: T['dy'].T @ T['x'], False),
}


def _product_cases(layer, batch):
    """An fc layer's three bare matrix products (no bias), each its own Case: the fc
    layer's backward does two of them at once, here they are timed apart."""
    o, d = flops.weight_shape(layer)
    std = np.sqrt(2.0 / d)

    def make(rng, n):
        return {'x': _normal(rng, (n, d)), 'w': _normal(rng, (o, d), std),
                'dy': _normal(rng, (n, o))}
    cases = []
    for pass_, (m, n, k) in flops.fc_products(layer, batch).items():
        ours, _, per_sample = _PRODUCTS[pass_]
        cases.append(Case(f'{layer.name}.gemm_{pass_}', layer.name, 'matmul',
                          flops.matmul_counts(m, n, k), make, lambda ops, t: t,
                          lambda ops, t, f=ours: (f(ops, t),), (per_sample,),
                          ('gemm', pass_)))
    return cases


def _conv_backward_cases(layer, counts, make, prepare):
    """A convolution's two backward passes, each its own Case: backward_data (dx) and
    backward_weights (dw and db), through conv_backward's need_dw / need_dx; prepare
    gives each its (cache, dy)."""
    passes = {'backward_data': (dict(need_dw=False), slice(0, 1), (True,)),
              'backward_weights': (dict(need_dx=False), slice(1, 3), (False, False))}
    return [Case(f'{layer.name}.{pass_}', layer.name, 'conv_backward', counts[pass_], make,
                 prepare, lambda ops, s, kw=kw, keep=keep: tuple(
                     ops.conv_backward(s[1], s[0], **kw)[keep]),
                 per_sample, ('conv', pass_))
            for pass_, (kw, keep, per_sample) in passes.items()]


def _layer_cases(layer, batch):
    """The Cases of one flops.Layer at `batch`: forward, and backward (conv: its data
    and weight gradients apart; fc: together, as the op set's backward returns them, with
    the three bare products as cases of their own)."""
    counts = flops.layer_counts(layer, batch)
    op, fwd = _forward_fn(layer)
    make, name, kind = _make_inputs(layer), layer.name, layer.kind
    check_all = kind in ('dropout', 'loss')
    forward = Case(f'{name}.forward', name, f'{op}_forward', counts['forward'], make,
                   lambda ops, t: t, lambda ops, t: (fwd(ops, t)[0],),
                   (kind != 'loss',),   # the loss is a batch mean, no row per image
                   (kind, 'forward'), check_all)
    bwd_op = f'{op}_backward'
    if kind == 'loss':
        bwd_prepare = lambda ops, t: fwd(ops, t)[1]                        # noqa: E731
        bwd_run = lambda ops, cache: (ops.softmax_loss_backward(cache),)  # noqa: E731
        bwd_per_sample = (False,)  # dscores carries 1/N
    else:
        bwd_prepare = lambda ops, t: (fwd(ops, t)[1], t['dy'])            # noqa: E731
        if kind == 'conv':
            return [forward] + _conv_backward_cases(layer, counts, make, bwd_prepare)

        def bwd_run(ops, s):
            out = getattr(ops, bwd_op)(s[1], s[0])
            return tuple(out) if isinstance(out, tuple) else (out,)
        # fc returns (dx, dw, db): only dx has a row per image.
        bwd_per_sample = (True, False, False) if kind == 'fc' else (True,)
    if kind == 'fc':
        bwd_counts = counts['backward_data'] + counts['backward_weights']
    else:
        bwd_counts = counts['backward']
    products = _product_cases(layer, batch) if kind == 'fc' else []
    return products + [
        forward,
        Case(f'{name}.backward', name, bwd_op, bwd_counts, make, bwd_prepare, bwd_run,
             bwd_per_sample, (kind, 'backward'), check_all),
    ]


def _sgd_case(layers):
    """The SGD update of the largest blob (fc6's weights), in place."""
    layer = next(l for l in layers if l.name == SGD_LAYER)
    shape = flops.weight_shape(layer)

    def make(rng, n):
        # The "batch" of an update is its rows: the check takes the first and last rows.
        return {'param': _normal(rng, shape, 0.01), 'grad': _normal(rng, shape, 0.01),
                'history': _normal(rng, shape, 0.001)}

    def prepare(ops, t):
        return {k: v.copy() for k, v in t.items()}  # the update is in place

    def run(ops, s):
        ops.sgd_update(s['param'], s['grad'], s['history'], **SGD_ARGS)
        return s['param'], s['history']

    counts = flops.sgd_counts(shape[0] * shape[1])
    return Case(f'sgd.{SGD_LAYER}', 'sgd', 'sgd_update', counts, make, prepare, run,
                (True, True))


def build_cases(layers, batch, sgd=True):
    """Every Case of CaffeNet at `batch`, in network order, then (sgd=True) the SGD
    update, whose size does not depend on the batch."""
    cases = [c for layer in layers for c in _layer_cases(layer, batch)]
    return cases + ([_sgd_case(layers)] if sgd else [])


def select(cases, only):
    """The cases `--only` names: a layer ('conv3'), a case ('conv3.backward_data') or 'sgd'."""
    if not only:
        return cases
    wanted = [w.strip() for w in only.split(',') if w.strip()]
    chosen = [c for c in cases if c.name in wanted or c.layer in wanted]
    return chosen


# ------------------------------------------------------------------------------ checking
def max_rel_error(got, want):
    """max |got - want| / max |want| as a float (inf on a shape mismatch, nan stays nan)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return float('inf')
    if got.size == 0:
        return 0.0
    # One float64 temporary (a gradient can be 37M long); reshape keeps scalars arrays.
    diff = np.subtract(got.reshape(-1), want.reshape(-1), dtype=np.float64)
    np.abs(diff, out=diff)
    scale = max(float(np.abs(want).max()), 1e-30)
    return float(diff.max() / scale)


def check_rows(n):
    """Rows (images) compared with the reference: the first and the last, where the
    edge cases of a tiled kernel live; at most CHECK_IMAGES of them."""
    return sorted({0, n - 1})[:CHECK_IMAGES]


def _take_rows(inputs, rows):
    """The chosen rows of every batched input (weights and biases stay whole)."""
    return {n: (a if n in ('w', 'b') else np.ascontiguousarray(a[rows]))
            for n, a in inputs.items()}


class Library:
    """Moves NumPy inputs into one library's arrays and results back.

    to_lib(a) keeps integer arrays integer; to_numpy(a) handles Python floats too.
    """

    def __init__(self, name, to_lib, to_numpy):
        self.name, self.to_lib, self.to_numpy = name, to_lib, to_numpy

    def convert(self, inputs):
        return {n: self.to_lib(a) for n, a in inputs.items()}


def gate(case, run_fn, lib, inputs, full_outputs=None, tolerance=TOLERANCE):
    """Compare a result with the float64 NumPy reference; returns (ok, max_rel_error),
    ok when the error is at most `tolerance`.

    run_fn(lib_inputs) -> outputs runs the subject on inputs converted by `lib`. It is run
    on the check rows (the first and last image; the whole batch for case.check_all) and
    every output is compared; `full_outputs`, the subject's outputs on the whole timed
    batch, are compared on the same rows of their per-sample outputs.
    """
    reference = reference_ops()
    n = len(next(iter(inputs.values())))
    rows = list(range(n)) if case.check_all else check_rows(n)
    small = _take_rows(inputs, rows)
    small64 = {k: (a.astype(np.float64) if a.dtype.kind == 'f' else a) for k, a in small.items()}
    truth = case.run(reference, case.prepare(reference, small64))
    got = run_fn(lib.convert(small))
    errors = [max_rel_error(lib.to_numpy(g), t) for g, t in zip(got, truth)]
    if len(got) != len(truth):
        errors.append(float('inf'))
    if full_outputs is not None:
        for per_sample, g, t in zip(case.per_sample, full_outputs, truth):
            if per_sample:
                errors.append(max_rel_error(lib.to_numpy(g[rows]), t))  # rows on device
    worst = max(errors)
    return bool(worst <= tolerance), worst


# ------------------------------------------------------------------------------ vendors
def _torch_impls(torch):
    """PyTorch's version of each (kind, pass): (prepare(T, layer), run(state)) on tensors.

    The same code runs on PyTorch CPU and CUDA (cuDNN). Dropout and SGD have no exact
    PyTorch twin (PyTorch's masks and momentum formula differ) and are not compared.
    """
    F = torch.nn.functional
    aten = torch.ops.aten

    def conv_args(L):
        p = L.params
        return [p['stride']] * 2, [p['pad']] * 2, p['group']

    def conv_fwd(T, L):
        s, pad, g = conv_args(L)
        return lambda: (F.conv2d(T['x'], T['w'], T['b'], s, pad, 1, g),)

    def conv_bwd(mask):   # output_mask: which of (dx, dw, db) to compute
        def prepare(T, L):
            s, pad, g = conv_args(L)
            return lambda: tuple(o for o in aten.convolution_backward(
                T['dy'], T['x'], T['w'], [T['w'].shape[0]], s, pad, [1, 1], False, [0, 0], g,
                mask) if o is not None)
        return prepare

    def pool_fwd(T, L):
        p = L.params
        return lambda: (F.max_pool2d(T['x'], p['kernel'], p['stride'], p['pad'],
                                     ceil_mode=True, return_indices=True)[0],)

    def pool_bwd(T, L):
        p = L.params
        k, s, pad = [p['kernel']] * 2, [p['stride']] * 2, [p['pad']] * 2
        _, idx = F.max_pool2d(T['x'], k, s, pad, ceil_mode=True, return_indices=True)
        return lambda: (aten.max_pool2d_with_indices_backward(
            T['dy'], T['x'], k, s, pad, [1, 1], True, idx),)

    def lrn(x, L):
        p = L.params
        # PyTorch divides alpha by size, like Caffe: scale = k + alpha/n * sum x^2.
        return F.local_response_norm(x, p['local_size'], p['alpha'], p['beta'], p['k'])

    def autograd_bwd(forward):
        def prepare(T, L):
            x = T['x'].detach().requires_grad_(True)
            y = forward(x, L, T)
            dy = T.get('dy')
            return lambda: torch.autograd.grad(y, x, dy, retain_graph=True)
        return prepare

    return {
        **_matmul_impls(),
        ('fc', 'forward'): lambda T, L: (lambda: (F.linear(T['x'], T['w'], T['b']),)),
        ('conv', 'forward'): conv_fwd,
        ('conv', 'backward_data'): conv_bwd([True, False, False]),
        ('conv', 'backward_weights'): conv_bwd([False, True, True]),
        ('pool', 'forward'): pool_fwd,
        ('pool', 'backward'): pool_bwd,
        ('lrn', 'forward'): lambda T, L: (lambda: (lrn(T['x'], L),)),
        ('lrn', 'backward'): autograd_bwd(lambda x, L, T: lrn(x, L)),
        ('relu', 'forward'): lambda T, L: (lambda: (F.relu(T['x']),)),
        ('relu', 'backward'): lambda T, L: (lambda: (aten.threshold_backward(T['dy'], T['x'], 0),)),
        ('loss', 'forward'): lambda T, L: (lambda: (F.cross_entropy(T['x'], T['labels'].long()),)),
        ('loss', 'backward'): autograd_bwd(
            lambda x, L, T: F.cross_entropy(x, T['labels'].long())),
    }


def _matmul_impls():
    """fc layers and their bare products through any array library's `@` (cuBLAS for
    CuPy): fc forward y = x W^T + b; fc backward dx = dy W, dW = dy^T x, db = sum of dy."""
    impls = {('fc', 'forward'): lambda T, L: (lambda: (T['x'] @ T['w'].T + T['b'],)),
             ('fc', 'backward'): lambda T, L: (
                 lambda: (T['dy'] @ T['w'], T['dy'].T @ T['x'], T['dy'].sum(0)))}
    for pass_, (_, lib_fn, _) in _PRODUCTS.items():
        impls[('gemm', pass_)] = lambda T, L, f=lib_fn: (lambda: (f(T),))
    return impls


class Vendor:
    """The library a user would otherwise pick, for the cases it can run."""

    def __init__(self, name, lib, timer, impls):
        self.name, self.lib, self.timer, self.impls = name, lib, timer, impls

    def runner(self, case, layer):
        """prepare(T) -> the timed callable for `case`, or None when not comparable."""
        make = self.impls.get(case.vendor) if case.vendor else None
        if make is None:
            return None
        return lambda T: make(T, layer)


def _torch_vendor(torch, device_kind):
    dev = 'cuda' if device_kind == 'cuda' else 'cpu'

    def to_lib(a):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(dev) if dev == 'cuda' else t

    lib = Library('torch', to_lib, lambda t: t.detach().cpu().numpy() if hasattr(t, 'detach')
                  else np.asarray(t))
    timer = GpuTimer('torch', torch) if dev == 'cuda' else CpuTimer()
    what = 'PyTorch CUDA (cuDNN conv)' if dev == 'cuda' else 'PyTorch CPU'
    return Vendor(f'{what} {torch.__version__}', lib, timer, _torch_impls(torch))


def _cublas_vendor(cp):
    lib = Library('cupy', cp.asarray, lambda a: cp.asnumpy(a) if hasattr(a, 'device') else np.asarray(a))
    return Vendor(f'cuBLAS (CuPy {cp.__version__} matmul)', lib, GpuTimer('cupy', cp),
                  _matmul_impls())


def import_torch(disabled, device_kind):
    """torch (imported lazily) set up for a fair FP32 comparison, or None with why."""
    if disabled:
        return None, 'disabled with --no-torch'
    try:
        import torch
    except ImportError:
        return None, 'PyTorch is not installed (pip install torch; never a project requirement)'
    except Exception as exc:  # e.g. clashing CUDA libraries: our own figures still count
        return None, f'PyTorch failed to import ({type(exc).__name__}: {exc})'
    if device_kind == 'cuda':
        if not torch.cuda.is_available():
            return None, f'PyTorch {torch.__version__} has no CUDA here'
        torch.backends.cudnn.allow_tf32 = False       # true FP32, like our kernels
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True         # let cuDNN pick its fastest algorithm
    return torch, None


# ------------------------------------------------------------------------------ devices
def subject_ops(device):
    """The op namespace to time: a copy of device.ops plus `matmul` (the gemm launcher on
    the GPU, NumPy's on the CPU). Tests replace this function to inject bugs."""
    ops = types.SimpleNamespace(**{n: getattr(device.ops, n) for n in OP_NAMES})
    ops.matmul = _numpy_matmul
    if device.runner is not None:
        try:
            from kernels.gemm import matmul
            ops.matmul = functools.partial(matmul, device.runner)
        except ImportError as exc:
            ops.matmul = _missing(f'kernels/gemm.py: {exc}')
    return ops


def reference_ops():
    """The NumPy reference op set (plus matmul): the truth every result is checked against."""
    from nn import reference
    ops = types.SimpleNamespace(**{n: getattr(reference, n) for n in OP_NAMES})
    ops.matmul = _numpy_matmul
    return ops


def _missing(why):
    """An op that is not there: calling it raises ImportError(why)."""
    def op(*args, **kwargs):
        raise ImportError(why)
    return op


def open_device(name, tf32=False):
    """(Device, timer, array Library) for 'cpu', 'emu', 'cuda' or 'auto' (nn/device.py's
    choice); BenchError when impossible. On emu/cuda a missing kernel launcher fails only
    the cases that call it: the kernels that exist are still timed. tf32: the device's
    convolutions and fully connected layers on tensor cores (nn/device.py)."""
    from nn.device import DeviceError, get_device
    try:
        device = get_device(name, partial=True, tf32=tf32)
    except DeviceError as exc:
        if tf32:
            raise BenchError(f'--tf32: {exc}') from exc
        raise BenchError(f'--device {name}: {exc}') from exc   # (it says what to use)
    # cpu, or emu (the CUDA kernels on the CPU emulator: checks the kernel path) time on
    # the CPU clock.
    timer = GpuTimer('cupy', device.xp) if device.name == 'cuda' else CpuTimer()
    lib = Library(device.name, lambda a: device.asarray(a, a.dtype), device.to_numpy)
    return device, timer, lib


# Sizes of the peak measurements: (copy floats, square matmul side, runs). The CPU copy is
# 4x the last-level cache; tests shrink these to stay fast.
GPU_PEAK_SIZES = ((1 << 30) // 4, 8192, 10)
CPU_PEAK_SIZES = (None, 2048, 5)


def measure_peaks(device, timer, torch=None):
    """The machine's own limits, measured now: copy bandwidth and FP32 matmul rate.

    Bandwidth: a large copy (read + write counted). Compute: the best FP32 matrix product
    on offer: CuPy's cuBLAS with TF32 off on the GPU; on the CPU the faster of NumPy's BLAS
    and PyTorch's (when installed). The best run counts: a peak is what the machine can
    do, not what it usually does.
    """
    xp = device.xp
    gpu = device.name == 'cuda'
    n_copy, n_mm, runs = GPU_PEAK_SIZES if gpu else CPU_PEAK_SIZES
    n_copy = n_copy or cpu_flush_bytes() // 4
    src = xp.ones(n_copy, dtype=xp.float32)
    dst = xp.empty_like(src)
    t_copy = min(timer.measure(lambda: xp.copyto(dst, src), 1, runs, flush=False))
    del src, dst
    a_host = np.random.default_rng(0).standard_normal((n_mm, n_mm), dtype=np.float32)
    a = xp.asarray(a_host)
    c = xp.empty_like(a)
    products = {f'{xp.__name__}.matmul': lambda: xp.matmul(a, a, out=c)}
    if torch is not None and not gpu:
        ta, tc = torch.from_numpy(a_host), torch.empty(n_mm, n_mm)
        products['torch.matmul'] = lambda: torch.matmul(ta, ta, out=tc)
    best, failed = {}, []
    for name, fn in products.items():
        try:   # our kernels need no cuBLAS: a broken one must not cost the whole run
            best[name] = min(timer.measure(fn, 1, runs, flush=False))
        except Exception as exc:
            failed.append(f'{name} failed ({type(exc).__name__}: {exc})')
    peaks = {'bandwidth_GBps': 2 * n_copy * 4 / t_copy / 1e9,
             'bandwidth_how': f'{xp.__name__}.copyto of {n_copy * 4 >> 20} MiB, read + '
                              f'write, best of {runs}'}
    tried = ', '.join([f'{n} {2 * n_mm ** 3 / t / 1e9:.1f} GFLOP/s' for n, t in best.items()]
                      + failed)
    if not best:
        return dict(peaks, fp32_GFLOPs=None, fp32_how=f'not measured: {tried}')
    fastest = min(best, key=best.get)
    what = ' (cuBLAS, CUPY_TF32=' + os.environ.get('CUPY_TF32', '') + ')' if gpu else ''
    return dict(peaks, fp32_GFLOPs=2 * n_mm ** 3 / best[fastest] / 1e9,
                fp32_how=f'{fastest} {n_mm}x{n_mm} float32{what}, best of {runs}; tried '
                         f'{tried}')


# ------------------------------------------------------------------------------ one case
def _rates(counts, seconds, peaks):
    """GFLOP/s, GB/s, the bound (roofline term that dominates) and % of that roofline."""
    gflops = counts.flops / seconds / 1e9
    gbps = counts.bytes / seconds / 1e9
    if peaks['fp32_GFLOPs'] is None:   # no matrix product could be timed (measure_peaks)
        return {'gflops': gflops, 'gbps': gbps, 'bound': None, 'roofline_fraction': None}
    t_compute = counts.flops / (peaks['fp32_GFLOPs'] * 1e9)
    t_memory = counts.bytes / (peaks['bandwidth_GBps'] * 1e9)
    bound = 'compute' if t_compute >= t_memory else 'memory'
    return {'gflops': gflops, 'gbps': gbps, 'bound': bound,
            'roofline_fraction': max(t_compute, t_memory) / seconds}


def _summary(times, images=None):
    """{'time_s': median, 'times_s': all runs} (+ 'images_per_s' for `images` per run)."""
    out = {'time_s': statistics.median(times), 'times_s': times}
    if images:
        out['images_per_s'] = images / out['time_s']
    return out


def _timed(timer, fn, args, images=None):
    """Time fn with `timer` after args.warmup runs: see _summary."""
    return _summary(timer.measure(fn, args.warmup, args.repeats), images)


def _time_checked(case, run_fn, lib, inputs, timer, args, tolerance=TOLERANCE):
    """Gate, then time: {'status', 'max_rel_error', 'time_s', 'times_s'} (+ 'error')."""
    try:
        state_inputs = lib.convert(inputs)
        full = run_fn(state_inputs, keep=True)
        ok, err = gate(case, lambda t: run_fn(t, keep=False), lib, inputs, full, tolerance)
        out = {'status': 'ok' if ok else 'WRONG', 'max_rel_error': err}
        if ok:
            out.update(_timed(timer, run_fn.timed, args))
        return out
    except Exception as exc:  # a missing launcher or a crash must not stop the run
        return {'status': 'ERROR', 'error': f'{type(exc).__name__}: {exc}'}


class _Runner:
    """Calls a subject on converted inputs; remembers the last state for timing."""

    def __init__(self, prepare, run):
        self.prepare, self.run, self.timed = prepare, run, None

    def __call__(self, lib_inputs, keep):
        state = self.prepare(lib_inputs)
        if keep:
            self.timed = functools.partial(self.run, state)
        return self.run(state)


def _checked_row(case, runner, lib, inputs, timer, args, peaks, tolerance=TOLERANCE):
    """_time_checked plus the rates when it was timed."""
    row = _time_checked(case, runner, lib, inputs, timer, args, tolerance)
    if 'time_s' in row:
        row.update(_rates(case.counts, row['time_s'], peaks))
    return row


def bench_case(case, layer, ops, lib, timer, vendor, args, batch, peaks, versions=None):
    """Check and time one case with our ops (and each kept version), then the vendor."""
    inputs = case.make(np.random.default_rng(args.seed), batch)
    row = {'name': case.name, 'layer': case.layer, 'op': case.op, 'batch': batch,
           'macs': case.counts.macs, 'flops': case.counts.flops, 'bytes': case.counts.bytes}
    ours = _Runner(lambda t: case.prepare(ops, t), lambda s: case.run(ops, s))
    row.update(_checked_row(case, ours, lib, inputs, timer, args, peaks))
    if versions:
        row['versions'] = []
        for label, vops, tolerance in versions:
            r = _Runner(lambda t, o=vops: case.prepare(o, t), lambda s, o=vops: case.run(o, s))
            row['versions'].append({'version': label, **_checked_row(
                case, r, lib, inputs, timer, args, peaks, tolerance)})
    make = vendor.runner(case, layer) if vendor is not None else None
    if make is not None:
        r = _Runner(make, lambda fn: fn())
        v = {'name': vendor.name,
             **_checked_row(case, r, vendor.lib, inputs, vendor.timer, args, peaks)}
        if 'time_s' in v and 'time_s' in row:
            v['vendor_time_over_ours'] = v['time_s'] / row['time_s']
        row['vendor'] = v
    return row


def reference_algorithms(device, case, layer):
    """[(label, ops, tolerance)] for the CPU path: the reference's convolution algorithms
    (nn.conv.conv_algorithm) where more than one applies (3x3 at stride 1: im2col and
    Winograd); [] for every other case. The backward follows its forward's algorithm (it
    is in the cache), so the forward op is the one bound."""
    from nn.conv import conv_algorithm
    if layer is None or layer.kind != 'conv' or case.op not in ('conv_forward',
                                                                 'conv_backward'):
        return []
    p = layer.params
    if conv_algorithm((p['kernel'], p['kernel']), p.get('stride', 1)) != 'winograd':
        return []
    out = []
    for algorithm in ('im2col', 'winograd'):
        ops = subject_ops(device)
        ops.conv_forward = functools.partial(device.ops.conv_forward, algorithm=algorithm)
        out.append((algorithm, ops, TOLERANCE))
    return out


def kernel_versions(device, case, layer=None):
    """[(label, ops, tolerance)] for each kept version of the kernel `case` times (kernel
    devices; on the CPU path, reference_algorithms: the convolution algorithms). A
    launcher whose TILED_VERSIONS can force their tile height (conv) adds those at each
    height; its TF32_VERSION (tensor cores) is held to TF32_TOLERANCE.

    The launcher module's VERSIONS tuple lists them. A backward that takes no `version=`
    follows its forward's (kernels/conv.py and gemm.py keep it in the cache), so the
    forward op is the one bound.
    """
    import inspect
    from kernels.ops import OP_FAMILIES
    if device.runner is None:
        return reference_algorithms(device, case, layer)
    family = 'gemm' if case.op == 'matmul' else OP_FAMILIES[case.op]
    module = importlib.import_module(f'kernels.{family}')
    target = case.op
    if 'version' not in inspect.signature(getattr(module, target)).parameters:
        target = case.op.replace('_backward', '_forward')
        if not hasattr(module, target) or \
                'version' not in inspect.signature(getattr(module, target)).parameters:
            return []
    out = []
    for v in module.VERSIONS:
        tf32 = v == getattr(module, 'TF32_VERSION', None)
        name = f'{v} (TF32)' if tf32 else str(v)
        variants = [(name, {})]
        if v in getattr(module, 'TILED_VERSIONS', ()):   # conv: each tile height too
            variants += [(f'{name}, {h}-row tiles', {'tile_rows': h})
                         for h in module.TILE_HEIGHTS]
        for label, extra in variants:
            ops = subject_ops(device)
            setattr(ops, target, functools.partial(getattr(module, target), device.runner,
                                                   version=v, **extra))
            out.append((label, ops, TF32_TOLERANCE if tf32 else TOLERANCE))
    return out


# ------------------------------------------------------------------------------ network
def _fresh_params(net, seed):
    """He-scaled random weights and non-zero biases, so every layer shapes the scores.

    Uniform on [-a, a] with a = sqrt(6 / fan_in), He's variance 2 / fan_in: drawing 61M
    uniforms takes a third of the time normals would.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in net.blob_shapes.items():
        a = np.float32(np.sqrt(6.0 / np.prod(shape[1:])))
        weight = rng.random(shape, dtype=np.float32)
        weight *= 2 * a
        weight -= a
        params[name] = {'weight': weight, 'bias': _normal(rng, (shape[0],), 0.1)}
    return params


def torch_caffenet(torch, spec, params, device):
    """The identical CaffeNet in PyTorch (FP32), our weights copied in.

    Convolution groups, LocalResponseNorm(5, 1e-4, 0.75, k=1) (PyTorch divides alpha
    by the size like Caffe), max pooling with ceil_mode=True (Caffe's rounding).
    Each module is named after the spec layer it belongs to: the layer's own name, or
    '<layer>_relu' and '<layer>_flatten' for the fused ReLU and the flattening before
    the first fully connected layer (torch_layer_owner maps them back).
    """
    nn = torch.nn
    mods, flat = {}, False
    for layer in spec:
        kind, name = layer['type'], layer['name']
        if kind in ('conv', 'fc'):
            w = torch.from_numpy(params[name]['weight'])
            b = torch.from_numpy(params[name]['bias'])
            if kind == 'conv':
                g = layer.get('group', 1)
                m = nn.Conv2d(w.shape[1] * g, w.shape[0], w.shape[2], layer.get('stride', 1),
                              layer.get('pad', 0), groups=g)
            else:
                if not flat:
                    mods[f'{name}_flatten'] = nn.Flatten()
                    flat = True
                m = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                m.weight.copy_(w.reshape(m.weight.shape))
                m.bias.copy_(b)
            mods[name] = m
            if layer.get('relu'):
                mods[f'{name}_relu'] = nn.ReLU(inplace=True)
        elif kind == 'pool':
            mods[name] = nn.MaxPool2d(layer['kernel'], layer['stride'], layer.get('pad', 0),
                                      ceil_mode=True)
        elif kind == 'lrn':
            mods[name] = nn.LocalResponseNorm(layer['local_size'], layer['alpha'],
                                              layer['beta'], layer.get('k', 1.0))
        elif kind == 'relu':
            mods[name] = nn.ReLU(inplace=True)
        elif kind == 'dropout':
            mods[name] = nn.Dropout(layer['ratio'])
    return nn.Sequential(collections.OrderedDict(mods)).to(device)


def torch_layer_owner(module_name, spec):
    """The spec layer a module of torch_caffenet belongs to: 'conv1_relu' -> 'conv1'."""
    names = {layer['name'] for layer in spec}
    return module_name if module_name in names else module_name.rsplit('_', 1)[0]


def _torch_sgd(torch, model):
    """SGD with Caffe's multipliers: weights lr x1 decay x1, biases lr x2 no decay."""
    weights = [p for n, p in model.named_parameters() if n.endswith('weight')]
    biases = [p for n, p in model.named_parameters() if n.endswith('bias')]
    lr, wd = NET_LR, SGD_ARGS['weight_decay']
    return torch.optim.SGD([{'params': weights, 'lr': lr, 'weight_decay': wd},
                            {'params': biases, 'lr': 2 * lr, 'weight_decay': 0.0}],
                           lr=lr, momentum=SGD_ARGS['momentum'])


def bench_network(device, sub_device, timer, torch, args, batch, tolerance=TOLERANCE,
                  label=''):
    """Whole-network figures at `batch`: inference, training step, and batch-1 latency.

    Checked first: scores (test mode), and loss plus every gradient (train mode, the
    same dropout masks) against the float64 reference network with the same weights,
    within `tolerance`. The reference's backward takes the net's ReLU masks and pooling
    argmaxes (CaffeNet.adopt_routing: a near-tie decided the other way would move a whole
    gradient term), and in each layer at most `tolerance` of them (or one) may differ
    from its own: rounding flips about one in a million in float32, one in 1,000 in TF32
    at worst (pool5, simulated), a wrong kernel a large part of its layer.
    label: appended to the rows' names ('net.inference' + label).
    """
    from nn.caffenet import CaffeNet
    from nn.solver import SGDSolver
    rng = np.random.default_rng(args.seed)
    net = CaffeNet(num_classes=args.classes, device=sub_device, dropout_seed=DROPOUT_SEED,
                   init='zeros')  # (weights are loaded below)
    params = _fresh_params(net, args.seed)
    # A copy: on the CPU the net may keep the very arrays it is given, and the timed
    # training steps update them in place; PyTorch must start from the same weights.
    net.load_params({n: {b: a.copy() for b, a in blobs.items()} for n, blobs in params.items()},
                    strict=True, source='bench')
    truth = CaffeNet(num_classes=args.classes, device='cpu', dropout_seed=DROPOUT_SEED,
                     dtype=np.float64, init='zeros')
    truth.load_params(params, strict=True, source='bench')
    solver = SGDSolver(net, base_lr=NET_LR, momentum=SGD_ARGS['momentum'],
                       weight_decay=SGD_ARGS['weight_decay'], lr_policy='fixed')

    size = net.input_size
    x_host = _normal(rng, (batch, 3, size, size), 30.0)  # roughly mean-subtracted pixels
    labels_host = rng.integers(0, args.classes, size=batch).astype(np.int32)
    rows = check_rows(batch)
    x_check, labels_check = x_host[rows], labels_host[rows]
    x, labels = device.asarray(x_host), device.asarray(labels_host, np.int32)

    # Gate: test-mode scores of the check images, alone and inside the whole batch, then
    # one training step's loss and gradients (both nets on their first dropout masks).
    want = truth.forward(x_check.astype(np.float64))
    errs = [max_rel_error(device.to_numpy(net.forward(device.asarray(x_check))), want),
            max_rel_error(device.to_numpy(net.forward(x))[rows], want)]
    routes, misrouted = None, []
    if max(errs) <= tolerance:  # (a wrong forward needs no gradient check)
        loss, grads, _ = net.loss_and_grads(device.asarray(x_check),
                                            device.asarray(labels_check, np.int32))
        t_loss, t_dscores, _ = truth.forward_loss(x_check.astype(np.float64), labels_check)
        routes = truth.adopt_routing(net)
        misrouted = [f'{layer} {changed} of {n}' for layer, (changed, n) in routes.items()
                     if changed > max(1, tolerance * n)]
        t_grads = truth.backward(t_dscores)
        errs.append(max_rel_error(loss, t_loss))
        for name in t_grads:
            for blob in ('weight', 'bias'):
                errs.append(max_rel_error(device.to_numpy(grads[name][blob]),
                                          t_grads[name][blob]))
    err = max(errs)
    status = 'ok' if err <= tolerance and not misrouted else 'WRONG'

    plan = [('inference', batch, lambda: net.predict(x))]
    plan.append(('training_step', batch, lambda: solver.step(net.loss_and_grads(x, labels)[1])))
    if batch != 1:
        plan.append(('latency', 1, lambda: net.predict(x[:1])))
    layers = flops.caffenet_layers(args.classes)
    theirs = None
    if torch is not None:
        try:   # a PyTorch failure (cuDNN, memory) must not cost our own figures
            theirs = _torch_network(torch, device, net, params, x_host, labels_host, want)
        except Exception as exc:
            theirs = ({'name': f'PyTorch {torch.__version__}', 'status': 'ERROR',
                       'error': f'{type(exc).__name__}: {exc}'}, None, None)
    report = []
    for what, n, fn in plan:
        row = {'name': f'net.{what}{label}', 'batch': n, 'status': status, 'max_rel_error': err,
               'routes_differing': routes,
               'flops': flops.network_counts(layers, n, train=(what == 'training_step')).flops}
        if status != 'ok':
            row['error'] = (f"max relative error {err:.2e} (tolerance {tolerance:g}); "
                            + ("no gradient check" if routes is None else
                               "ReLU/pooling routes differing: "
                               + (', '.join(misrouted) or 'within tolerance')))
        t = dict(theirs[0]) if theirs else None
        if status == 'ok' and t and t['status'] == 'ok':
            ours_t, their_t = _timed_pair(timer, fn, theirs[2], theirs[1][what], args, n)
            row.update(ours_t)
            t.update(their_t, vendor_time_over_ours=their_t['time_s'] / ours_t['time_s'])
        elif status == 'ok':
            row.update(_timed(timer, fn, args, n))
        if 'time_s' in row:
            row['gflops'] = row['flops'] / row['time_s'] / 1e9
        if t:
            row['torch'] = t
        report.append(row)
    if getattr(args, 'layers', False) and status == 'ok':
        subjects = [(our_inference_by_layer(net, x), timer)]
        if theirs and theirs[0]['status'] == 'ok':
            subjects.append((theirs[1]['inference_by_layer'], theirs[2]))
        medians = layer_times(subjects, args)
        report[0]['layers'] = [
            dict({'layer': layer, 'time_s': s},
                 **({'torch_time_s': medians[1].get(layer)} if len(medians) > 1 else {}))
            for layer, s in medians[0].items()]
    return report


def with_floor(rows, peaks):
    """Each timed network row with its arithmetic floor: 'floor_s', its FLOPs at the
    measured FP32 peak (a training step at batch 256: 1.06 TFLOP, about 16 ms on an
    H200), and 'time_over_floor', how many floors the run took (the issue asks for the
    step time as a fraction of that floor). Returns rows."""
    peak = peaks.get('fp32_GFLOPs')
    for row in rows:
        if peak and 'time_s' in row:
            row['floor_s'] = row['flops'] / (peak * 1e9)
            row['time_over_floor'] = row['time_s'] / row['floor_s']
    return rows


def _timed_pair(timer_a, fn_a, timer_b, fn_b, args, images):
    """Time two subjects alternately, run by run, so that a machine whose load drifts
    (a shared CPU) weighs on both alike. Returns two _timed-style dicts."""
    for _ in range(args.warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(args.repeats):
        times_a += timer_a.measure(fn_a, 0, 1)
        times_b += timer_b.measure(fn_b, 0, 1)
    return _summary(times_a, images), _summary(times_b, images)


def _torch_network(torch, device, net, params, x_host, labels_host, want):
    """PyTorch running the identical network: (info, {what: fn}, timer).

    info holds its name, and its status and error against the reference scores `want`
    of the check images; the functions mirror bench_network's plan.
    """
    dev = 'cuda' if device.name == 'cuda' else 'cpu'
    model = torch_caffenet(torch, net.spec, params, dev)
    opt = _torch_sgd(torch, model)
    F = torch.nn.functional
    x = torch.from_numpy(x_host).to(dev)
    y = torch.from_numpy(labels_host.astype(np.int64)).to(dev)
    model.eval()
    with torch.no_grad():
        err = max_rel_error(model(x[check_rows(len(x_host))]).cpu().numpy(), want)
    info = {'name': f"PyTorch {torch.__version__} {'CUDA' if dev == 'cuda' else 'CPU'}",
            'status': 'ok' if err <= TOLERANCE else 'WRONG', 'max_rel_error': err}

    def infer(xb):
        model.eval()
        with torch.no_grad():
            return torch.softmax(model(xb), 1).cpu()  # like predict: probabilities on the host

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def infer_by_layer(clock):   # for --layers: infer(x), each module through the clock
        model.eval()
        with torch.no_grad():
            h = x
            for name, module in model.named_children():
                h = clock(torch_layer_owner(name, net.spec), functools.partial(module, h))
            clock('softmax', functools.partial(torch.softmax, h, 1))

    fns = {'inference': lambda: infer(x), 'training_step': train_step,
           'latency': lambda: infer(x[:1]), 'inference_by_layer': infer_by_layer}
    return info, fns, (GpuTimer('torch', torch) if dev == 'cuda' else CpuTimer())


class _ClockedOps:
    """A network's ops with every forward op (and the softmax) run through
    clock(layer, fn): the op's `layer=` name, else the op's own name."""

    def __init__(self, ops, clock):
        self._ops, self._clock = ops, clock

    def __getattr__(self, name):
        fn = getattr(self._ops, name)
        if not (name.endswith('_forward') or name == 'softmax'):
            return fn
        return lambda *a, **k: self._clock(k.get('layer', name), lambda: fn(*a, **k))


def our_inference_by_layer(net, x):
    """net.predict(x) with each layer's op clocked (see layer_times)."""
    def run(clock):
        real = net.ops
        net.ops = _ClockedOps(real, clock)
        try:
            net.predict(x)
        finally:
            net.ops = real
    return run


def layer_times(subjects, args):
    """Each layer's median seconds inside whole inferences (--layers), for every subject
    (run, timer): run(clock) makes one inference, passing each layer's work to
    clock(layer, fn), which times fn alone (timer.time_once: the GPU synchronised around
    it) and returns its result. The caches are flushed before each inference (the timer's
    flush), not between its layers: each layer finds what the one before left, as in a
    real run. A layer clocked several times in one inference (PyTorch's convolution,
    then its ReLU) counts their sum. Subjects alternate run by run, as in _timed_pair.
    Returns one {layer: median seconds} per subject, layers in the order they ran."""
    times = [{} for _ in subjects]
    for repeat in range(args.warmup + args.repeats):
        for (run, timer), subject_times in zip(subjects, times):
            this_run = {}
            timer.flush()

            def clock(layer, fn):
                result = []
                seconds = timer.time_once(lambda: result.append(fn()))
                this_run[layer] = this_run.get(layer, 0.0) + seconds
                return result[0]
            run(clock)
            if repeat >= args.warmup:
                for layer, seconds in this_run.items():
                    subject_times.setdefault(layer, []).append(seconds)
    return [{layer: statistics.median(s) for layer, s in t.items()} for t in times]


# ------------------------------------------------------------------------------ report
def machine_info(device, torch):
    info = {'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
            'cpu_count': os.cpu_count(), 'python': platform.python_version(),
            'numpy': np.__version__, 'torch': getattr(torch, '__version__', None)}
    if device.name == 'cuda':
        cp = device.xp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props['name']
        info.update(device_name=name.decode() if isinstance(name, bytes) else str(name),
                    cupy=cp.__version__,
                    cuda_driver_api=cp.cuda.runtime.driverGetVersion(),
                    cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
                    nvrtc='.'.join(map(str, cp.cuda.nvrtc.getVersion())),
                    l2_cache_bytes=int(props.get('l2CacheSize', 0)))
        try:
            info['driver'] = subprocess.run(
                ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info['driver'] = None
    else:
        info['device_name'] = f'CPU ({info["processor"]}, {info["cpu_count"]} logical cores)'
    return info


def _fmt_time(s):
    return '-' if s is None else (f'{s * 1e3:9.3f}' if s >= 1e-4 else f'{s * 1e6:7.1f}us')


def print_table(report, out=None):
    """The human-readable table: one line per case, then the network (to out or stdout)."""
    out = out or sys.stdout
    peaks = report['peaks']
    fp32 = peaks['fp32_GFLOPs']
    print(f"device: {report['machine']['device_name']}   measured peaks: "
          f"{peaks['bandwidth_GBps']:.1f} GB/s copy, "
          + ('FP32 not measured' if fp32 is None else f'{fp32:.1f} GFLOP/s FP32'), file=out)
    head = (f"{'case':27} {'batch':>5} {'status':>6} {'ms':>9} {'GFLOP/s':>9} {'GB/s':>8} "
            f"{'bound':>7} {'%roof':>6} | {'vendor ms':>9} {'vendor/ours':>11}")
    print(head, file=out)
    print('-' * len(head), file=out)
    for r in report['kernels']:
        rows = [(r['name'], r)] + [(f"  v={v['version']}", v) for v in r.get('versions', [])]
        for label, x in rows:
            line = f"{label:27} {r['batch']:5d} {x['status']:>6} "
            if 'time_s' in x:
                roof = x['roofline_fraction']
                line += (f"{_fmt_time(x['time_s']):>9} {x['gflops']:9.1f} {x['gbps']:8.1f} "
                         f"{x['bound'] or '-':>7} "
                         + ('     -' if roof is None else f"{100 * roof:5.1f}%"))
            else:
                line += f"{'':9} {'':9} {'':8} {'':7} {'':6}"
            v = r.get('vendor') if x is r else None
            if v:
                vt = _fmt_time(v.get('time_s')) if 'time_s' in v else v['status']
                ratio = v.get('vendor_time_over_ours')
                line += f" | {vt:>9} {'' if ratio is None else f'{ratio:11.2f}'}"
            print(line, file=out)
            if 'error' in x:
                print(f"    {x['error']}", file=out)
    if report['kernels'] and any('vendor' in r for r in report['kernels']):
        names = sorted({r['vendor']['name'] for r in report['kernels'] if 'vendor' in r})
        print(f"vendor: {', '.join(names)}; vendor/ours > 1 means ours is faster", file=out)
    for r in report['network']:
        line = f"{r['name']:27} {r['batch']:5d} {r['status']:>6} "
        if 'time_s' in r:
            line += f"{_fmt_time(r['time_s']):>9} ms  {r['images_per_s']:9.1f} images/s"
            if 'time_over_floor' in r:
                line += f", {r['time_over_floor']:.1f}x its FP32 floor"
        t = r.get('torch')
        if t:
            line += f" | {t['name']}: "
            line += (f"{_fmt_time(t['time_s'])} ms {t['images_per_s']:.1f} images/s"
                     if 'time_s' in t else t['status'])
            if 'vendor_time_over_ours' in t:
                line += f", torch/ours {t['vendor_time_over_ours']:.2f}"
        print(line, file=out)
        for x in (r, t or {}):
            if 'error' in x:
                print(f"    {x['error']}", file=out)
    for r in report['network']:
        if 'layers' in r:
            _print_layers(r, out)
    for note in report['notes']:
        print(f'note: {note}', file=out)


def _print_layers(row, out):
    """--layers: the inference's time layer by layer, next to PyTorch's when measured."""
    layers = row['layers']
    torch = all(x.get('torch_time_s') is not None for x in layers)
    print(f"{row['name']} layer by layer (batch {row['batch']}, each layer timed in place"
          " inside whole inferences):", file=out)
    print(f"  {'layer':12} {'ms':>9}" + (f" | {'PyTorch ms':>10} {'torch/ours':>10}" if torch
                                         else ''), file=out)
    total = [sum(x['time_s'] for x in layers),
             sum(x.get('torch_time_s') or 0.0 for x in layers)]
    for name, ours, theirs in ([(x['layer'], x['time_s'], x.get('torch_time_s')) for x in layers]
                               + [('sum', *total)]):
        line = f"  {name:12} {_fmt_time(ours):>9}"
        if torch:
            line += f" | {_fmt_time(theirs):>10} {theirs / ours:10.2f}"
        print(line, file=out)


def write_json(path, report):
    """Write the report atomically (nn/atomic.py: a temporary file beside it, then a rename)."""
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(report, f, indent=1)
    atomic_write(path, write)


# ------------------------------------------------------------------------------ main
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda', 'emu'), default='auto',
                   help='cuda: our kernels on the GPU; cpu: the NumPy reference path; '
                        'auto (default): cuda when a GPU is usable, else cpu; emu: the '
                        'kernels on the CPU emulator, to check the kernel path on small '
                        'layers (its times mean nothing)')
    p.add_argument('--batch', '--batch-size', type=int, nargs='+', default=None,
                   help=f'batch sizes (default {GPU_BATCHES[0]} and {GPU_BATCHES[1]} on the GPU, '
                        f'{CPU_BATCH} on the CPU); the network is timed at the largest, '
                        'plus batch-1 latency')
    p.add_argument('--repeats', type=int, default=None,
                   help='timed runs per case, the median is reported (default 20 GPU, 3 CPU)')
    p.add_argument('--warmup', type=int, default=None,
                   help='untimed runs first (default 3 GPU, 2 CPU)')
    p.add_argument('--only', default=None,
                   help="time only these (comma-separated): a layer 'conv3', a case "
                        "'conv3.backward_data', 'sgd', 'kernels' for every kernel case, or "
                        "'net' for the whole network")
    p.add_argument('--versions', action='store_true',
                   help="also time every kept version of each kernel (GPU: the launchers' "
                        'version=; CPU: the two convolution algorithms of conv3-conv5)')
    p.add_argument('--json', default=None, metavar='FILE', help='write every figure to FILE')
    p.add_argument('--classes', type=int, default=1000,
                   help='classes of the last layer (default 1000, ImageNet CaffeNet)')
    p.add_argument('--no-torch', action='store_true', help='skip the PyTorch comparisons')
    p.add_argument('--tf32', action='store_true',
                   help='also time the whole network with its convolutions and fully '
                        'connected layers on tensor cores in TF32 (cuda, or emu to check '
                        'it), checked within a TF32 tolerance; the kernels\' TF32 '
                        'versions are in --versions')
    p.add_argument('--layers', action='store_true',
                   help="with the network: also time each layer inside whole inferences "
                        "(in place: caches as the layer before left them), next to PyTorch's")
    p.add_argument('--seed', type=int, default=0, help='seed of the random inputs')
    args = p.parse_args(argv)
    for name in ('batch', 'repeats', 'warmup', 'classes'):
        v = getattr(args, name)
        values = v if isinstance(v, list) else [v]
        least = 0 if name == 'warmup' else 1
        if v is not None and any(x < least for x in values):
            p.error(f'--{name} must be at least {least}, got {v}')
    return args


def check_only(only, classes):
    """BenchError unless every comma-separated name of --only names something to time."""
    if only is None:
        return
    known = build_cases(flops.caffenet_layers(num_classes=classes), 1)
    names = {'net', 'kernels'} | {c.layer for c in known} | {c.name for c in known}
    words = [w.strip() for w in only.split(',') if w.strip()]
    unknown = [w for w in words if w not in names]
    if unknown or not words:
        layers = ', '.join(dict.fromkeys(c.layer for c in known))
        raise BenchError(f"--only {only!r}: {', '.join(map(repr, unknown)) or 'empty'}: "
                         f"names no case; choose from 'net', 'kernels', a layer ({layers}) "
                         "or one of its cases, e.g. 'conv3.backward_data'")


def run(args):
    """Run the benchmark described by parsed `args`; returns the report dict."""
    check_only(args.only, args.classes)
    if args.json:   # now, rather than after the run
        try:
            check_writable(args.json)
        except OSError as exc:
            raise BenchError(f'--json {args.json}: {exc}') from None
    if args.device in ('cuda', 'auto'):
        # True FP32 everywhere, set before CuPy or PyTorch loads a CUDA library: CuPy's
        # matmul (CUPY_TF32), and every NVIDIA library (cuBLAS, cuDNN) by their override.
        os.environ['CUPY_TF32'] = '0'
        os.environ['NVIDIA_TF32_OVERRIDE'] = '0'
    device, timer, lib = open_device(args.device)
    if args.tf32 and device.runner is None:
        raise BenchError('--tf32 needs the kernels: --device cuda (or emu to check the TF32 '
                         'path on the CPU emulator)')
    gpu = device.name == 'cuda'
    batches = args.batch or (list(GPU_BATCHES) if gpu else [CPU_BATCH])
    args.repeats = args.repeats or (20 if gpu else 3)
    # Two on the CPU: the NumPy path's first two training steps grow the heap to its peak
    # (page faults, about 1.0-1.1 s instead of 0.6; nn/memory.py keeps it from then on).
    args.warmup = (3 if gpu else 2) if args.warmup is None else args.warmup
    torch, torch_why = import_torch(args.no_torch, device.name)

    notes = []
    if device.name == 'cpu':
        notes.append('CPU path (NumPy reference) timed; GPU figures need a GPU: '
                      'run `python bench.py --device cuda` on a machine with an NVIDIA GPU')
        notes.append('the CPU path computes 3x3 stride-1 convolutions (conv3-conv5) by '
                     "Winograd's F(2x2, 3x3), with 2.25x fewer multiplications; their "
                     "GFLOP/s and %roof count the direct convolution's work, so they can "
                     'pass the FP32 peak')
    if torch_why:
        notes.append(f'no PyTorch comparison: {torch_why}')
    if args.versions and device.runner is None:
        notes.append("--versions on the CPU path: the reference's convolution algorithms "
                     '(im2col, Winograd) for the 3x3 stride-1 layers; nothing else has two')
    if device.name == 'emu':
        notes.append('emu: the CUDA kernels run on the CPU emulator; the checks hold, the '
                     'times say nothing about a GPU')

    layers = flops.caffenet_layers(num_classes=args.classes)
    by_name = {l.name: l for l in layers}
    only = args.only
    words = [w.strip() for w in only.split(',') if w.strip()] if only else []
    want_net = not only or 'net' in words
    all_kernels = not only or 'kernels' in words
    kernel_only = None if all_kernels else ','.join(w for w in words if w != 'net')
    run_kernels = all_kernels or bool(kernel_only)

    peaks = measure_peaks(device, timer, torch)
    vendors = []
    if gpu:
        vendors.append(_cublas_vendor(device.xp))
    if torch is not None:
        vendors.append(_torch_vendor(torch, device.name))
    ops = subject_ops(device)

    kernels, network = [], []

    machine = machine_info(device, torch)   # once: it may run nvidia-smi
    runners = [device.runner] if device.runner is not None else []   # (TF32 adds its own)

    def report(partial):
        """The whole report so far; partial=True while cases are still to come."""
        return _report(args, device, machine, torch, gpu, timer, batches, peaks, kernels,
                       network, notes, partial, runners)

    def save_partial():
        """Write what is measured so far: a run cut off by a time limit keeps it."""
        if args.json:
            write_json(args.json, report(partial=True))

    todo = [(batch, case) for batch in (batches if run_kernels else [])
            for case in select(build_cases(layers, batch, sgd=batch == batches[0]),
                               kernel_only)]
    for done, (batch, case) in enumerate(todo, 1):
        vendor = next((v for v in vendors if v.runner(case, None)), None)
        versions = None
        if args.versions:
            try:
                versions = kernel_versions(device, case, by_name.get(case.layer))
            except ImportError as exc:
                notes.append(f'{case.name}: no versions to compare: {exc}')
            if versions == [] and device.runner is not None:
                notes.append(f'{case.name}: its launcher takes no version=')
        kernels.append(bench_case(case, by_name.get(case.layer), ops, lib, timer, vendor,
                                  args, batch, peaks, versions))
        if gpu:
            device.xp.get_default_memory_pool().free_all_blocks()
        _progress(f'{done}/{len(todo)} {case.name} (batch {batch})', kernels[-1])
        save_partial()

    if want_net:
        nets = [('net', lambda: device.with_ops(ops), torch, TOLERANCE, '')]
        if args.tf32:   # the same network on tensor cores; PyTorch is compared in FP32 only
            def tf32_device():
                tf32 = open_device(device.name, tf32=True)[0]
                runners.append(tf32.runner)
                return tf32.with_ops(subject_ops(tf32))
            nets.append(('net (TF32)', tf32_device, None, TF32_TOLERANCE, ' (TF32)'))
        for name, sub_device, net_torch, tolerance, label in nets:
            try:
                network.extend(with_floor(bench_network(
                    device, sub_device(), timer, net_torch, args, max(batches), tolerance,
                    label), peaks))
            except Exception as exc:  # keep the kernel figures; say what broke
                network.append({'name': name, 'batch': max(batches), 'status': 'ERROR',
                                'error': f'{type(exc).__name__}: {exc}'})
            save_partial()   # the FP32 figures survive a time limit hit in the TF32 run
        if args.tf32:
            notes.extend(_tf32_speedups(network))

    wrong = [r['name'] for r in kernels + network
             if r['status'] != 'ok' or r.get('vendor', {}).get('status', 'ok') != 'ok']
    if wrong:
        notes.append('not timed (WRONG or ERROR): ' + ', '.join(wrong))
    return report(partial=False)


def _tf32_speedups(network):
    """Notes giving each network figure's FP32 time over its TF32 time (the issue's
    target: the TF32 training step at most half the FP32 one)."""
    times = {r['name']: r['time_s'] for r in network if 'time_s' in r}
    return [f'TF32: {name} FP32/TF32 time = {times[name] / times[name + " (TF32)"]:.2f}'
            for name in times if name + ' (TF32)' in times]


def _progress(what, row):
    """One line on stderr per finished case, so a long run shows where it is."""
    time = f", {row['time_s'] * 1e3:.3f} ms" if 'time_s' in row else ''
    print(f"bench.py: {what}: {row['status']}{time}", file=sys.stderr, flush=True)


def _report(args, device, machine, torch, gpu, timer, batches, peaks, kernels, network,
            notes, partial, runners=()):
    """bench.py's JSON report (see --json); partial: True in the copies written while the
    run goes on; runners: the kernel runners used, whose compiled kernels it lists."""
    return {
        'tool': 'bench.py',
        'partial': partial,
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'command': 'python bench.py ' + ' '.join(sys.argv[1:] if args.argv is None else args.argv),
        'machine': machine,
        'settings': {'device': device.name, 'batches': batches, 'repeats': args.repeats,
                     'warmup': args.warmup, 'only': args.only, 'versions': args.versions,
                     'layers': getattr(args, 'layers', False),
                     'classes': args.classes, 'seed': args.seed, 'timer': timer.name,
                     'statistic': 'median of the timed runs (peaks: best run)',
                     'cache_flush_bytes': FLUSH_BYTES if gpu else cpu_flush_bytes(),
                     'gpu_flush_passes': GPU_FLUSH_PASSES if gpu else None,
                     'check_images': CHECK_IMAGES, 'tolerance_max_rel_error': TOLERANCE,
                     'tf32': args.tf32, 'tf32_tolerance_max_rel_error': TF32_TOLERANCE,
                     'routing_tolerance': 'per layer: the tolerance in force, or one route',
                     'cupy_tf32': os.environ.get('CUPY_TF32') if gpu else None,
                     'nvidia_tf32_override': os.environ.get('NVIDIA_TF32_OVERRIDE') if gpu else None,
                     'torch_allow_tf32': False if (torch is not None and gpu) else None,
                     'torch_threads': torch.get_num_threads() if torch is not None else None,
                     'counts': 'nn/flops.py: FLOPs = 2 x MACs + bias; bytes = compulsory float32 traffic'},
        'peaks': peaks,
        'kernels': kernels,
        'network': network,
        'notes': notes,
        # What the compiler made of each kernel run so far (registers and spilled local
        # bytes per thread are known on the GPU only; NVRTC versions differ in both).
        'compiled_kernels': None if not runners else list({
            (k.file, k.name): {'file': k.file, 'name': k.name, 'registers': k.registers,
                               'local_bytes': k.local_bytes,
                               'static_shared_bytes': k.static_shared}
            for runner in runners for k in runner.loaded_kernels()}.values()),
    }


def main(argv=None):
    """Command-line entry point; returns the exit status: 0, 1 when any of our results is
    WRONG or ERROR, 2 when the benchmark cannot run as asked."""
    args = parse_args(argv)
    args.argv = argv
    try:
        report = run(args)
    except BenchError as exc:
        print(f'bench.py: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        saved = (f'; the figures measured so far are in {args.json} ("partial": true)'
                 if args.json and os.path.exists(args.json) else '')
        print(f'bench.py: interrupted{saved}', file=sys.stderr)
        return 130
    if args.json:  # first: the figures survive a closed pipe on the table
        write_json(args.json, report)
    print_table(report)
    if args.json:
        print(f'wrote {args.json}')
    return 1 if _ours_failed(report) else 0


def _ours_failed(report):
    """Whether any of our results (a kernel case, a kept version of it, the network) was
    WRONG or ERROR. A vendor's failure is reported, but it is not ours."""
    rows = report['kernels'] + report['network']
    rows += [v for r in report['kernels'] for v in r.get('versions', [])]
    return any(r['status'] != 'ok' for r in rows)


if __name__ == '__main__':
    sys.exit(main())
