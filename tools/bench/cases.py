"""What is timed: a Case per operation at one layer's shape (its inputs, its untimed
set-up, the timed call), for every layer of CaffeNet and the SGD update; --only's choice
among them."""
import numpy as np

from nn import flops
from tools.bench import BenchError

SGD_LAYER = 'fc6'       # the SGD update is timed on the largest blob, fc6's weights
DROPOUT_SEED = 1234
SGD_ARGS = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)


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


def normal(rng, shape, scale=1.0):
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
        return lambda rng, n: {'x': normal(rng, (n, c), 3.0),
                               'labels': rng.integers(0, c, size=n).astype(np.int32)}
    if layer.kind in ('conv', 'fc'):
        w_shape = flops.weight_shape(layer)
        std = np.sqrt(2.0 / np.prod(w_shape[1:]))
        return lambda rng, n: {'x': normal(rng, (n,) + layer.in_shape),
                               'w': normal(rng, w_shape, std),
                               'b': normal(rng, (w_shape[0],), 0.1),
                               'dy': normal(rng, (n,) + layer.out_shape)}
    return lambda rng, n: {'x': normal(rng, (n,) + layer.in_shape),
                           'dy': normal(rng, (n,) + layer.out_shape)}


# The three fc products, written once for every array library (NumPy, CuPy, PyTorch):
# pass -> (our call through ops.matmul, the library's `@`, outputs with a row per image).
PRODUCTS = {
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
        return {'x': normal(rng, (n, d)), 'w': normal(rng, (o, d), std),
                'dy': normal(rng, (n, o))}
    cases = []
    for pass_, (m, n, k) in flops.fc_products(layer, batch).items():
        ours, _, per_sample = PRODUCTS[pass_]
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
        return {'param': normal(rng, shape, 0.01), 'grad': normal(rng, shape, 0.01),
                'history': normal(rng, shape, 0.001)}

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
