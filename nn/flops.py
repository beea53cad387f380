"""Work counts for CaffeNet's layers: multiply-accumulates, FLOPs and bytes moved.

The benchmark (`bench.py`) divides these counts by measured times to get GFLOP/s and
GB/s, so they must be exact for the layer shapes the network really uses.

Conventions (also in docs/benchmarks.md):

* MACs: one multiply-accumulate per (output element, weight element of its filter) pair,
  padding positions included (they are in the im2col product), which is
  the convention behind the usual "724 million MACs per image" figure for CaffeNet.
* FLOPs: 2 per MAC, plus the bias additions (forward) or bias-gradient additions
  (backward-weights). For the element-wise layers a FLOP count of the textbook algorithm
  is given for context; those layers are judged by bytes.
* Bytes: the compulsory traffic of float32 data (4 bytes each): every tensor the pass
  must read, once, plus every tensor it must write, once. Caches are counted only where
  the design contract fixes them (max pooling's argmax, int32). Anything an
  implementation re-reads or stores extra is its own cost, which is exactly what a
  GB/s figure measured against this lower bound reveals.

Shapes follow Caffe: convolution ``Ho = (H + 2 pad - k) // stride + 1``, pooling with
Caffe's ceil rule (see docs/design.md).
"""
from dataclasses import dataclass, field

from nn.conv import conv_output_size
from nn.pool import pool_output_size
from nn.weights import INPUT_SIZE

FLOAT_BYTES = 4
INDEX_BYTES = 4  # int32 argmax / labels


@dataclass(frozen=True)
class Layer:
    """One CaffeNet layer with its per-image shapes.

    in_shape / out_shape: per image, (C, H, W) for spatial layers, (D,) for fc layers.
    params: the layer's hyper-parameters (kernel, stride, pad, group, num_output, ...).
    """
    name: str
    kind: str  # 'conv', 'fc', 'relu', 'pool', 'lrn', 'dropout', 'loss'
    in_shape: tuple
    out_shape: tuple
    params: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Counts:
    """Work of one pass over a whole batch."""
    macs: int
    flops: int
    bytes: int

    def __add__(self, other):
        return Counts(self.macs + other.macs, self.flops + other.flops,
                      self.bytes + other.bytes)


# Pooling's output side, Caffe's ceil rule: the reference's own function, so the counts
# can never disagree with the shapes the network produces.
pool_out_size = pool_output_size


def _pool_window_total(size, out, kernel, stride, pad):
    """Sum over the output positions along one axis of the clipped window length."""
    total = 0
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size)
        total += end - max(start, 0)
    return total


def layers_from_spec(spec, input_size=INPUT_SIZE, in_channels=3):
    """A network spec (nn/caffenet.py's format) as a list of `Layer`, input to loss.

    Shapes are propagated from a (in_channels, input_size, input_size) image. A ReLU fused
    into a conv or fc layer is listed as its own layer ('conv1' -> 'relu1'), since the
    benchmark times the ReLU kernels too; a softmax 'loss' layer ends the list.
    This is also the walk CaffeNet takes its parameter shapes from (nn/caffenet.py), so
    the counts describe the network that runs. ValueError naming the layer when a conv's
    group does not divide its input channels and outputs, or when the input is too small
    and a layer's output map is empty.
    """
    layers = []
    shape = (in_channels, input_size, input_size)

    def add(name, kind, out_shape, **params):
        nonlocal shape
        if min(out_shape) < 1:
            raise ValueError(f"layer {name!r}: input of {input_size}x{input_size} is too "
                             f"small, its output map is empty")
        layers.append(Layer(name, kind, shape, tuple(out_shape), params))
        shape = tuple(out_shape)

    for item in spec:
        kind, name = item['type'], item['name']
        if kind == 'conv':
            c, h, w = shape
            k, stride, pad = item['kernel'], item.get('stride', 1), item.get('pad', 0)
            n, g = item['num_output'], item.get('group', 1)
            if c % g or n % g:
                raise ValueError(f"layer {name!r}: group {g} must divide its {c} input "
                                 f"channels and {n} outputs")
            ho, wo = conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)
            if min(ho, wo) < 1:
                raise ValueError(f"layer {name!r}: kernel {k} does not fit its input side "
                                 f"{min(h, w)} with pad {pad} (an input of {input_size}x"
                                 f"{input_size} is too small)")
            add(name, 'conv', (n, ho, wo), num_output=n, kernel=k, stride=stride, pad=pad,
                group=g)
        elif kind == 'fc':
            if len(shape) > 1:
                shape = (_numel(shape),)  # an fc layer sees its input flattened
            add(name, 'fc', (item['num_output'],), num_output=item['num_output'])
        elif kind == 'pool':
            c, h, w = shape
            k, stride, pad = item['kernel'], item['stride'], item.get('pad', 0)
            add(name, 'pool', (c, pool_out_size(h, k, stride, pad),
                               pool_out_size(w, k, stride, pad)),
                kernel=k, stride=stride, pad=pad)
        elif kind == 'lrn':
            add(name, 'lrn', shape, local_size=item['local_size'], alpha=item['alpha'],
                beta=item['beta'], k=item.get('k', 1.0))
        elif kind in ('relu', 'dropout'):
            add(name, kind, shape, **({'ratio': item['ratio']} if kind == 'dropout' else {}))
        else:
            raise ValueError(f"layer {name!r}: unknown layer type {kind!r}")
        if kind in ('conv', 'fc') and item.get('relu'):
            digits = name.lstrip('abcdefghijklmnopqrstuvwxyz_')
            add(f'relu{digits}' if digits.isdigit() else f'{name}_relu', 'relu', shape)
    add('loss', 'loss', shape)
    return layers


def caffenet_layers(num_classes=1000, input_size=INPUT_SIZE, last_layer='fc8'):
    """CaffeNet (nn/caffenet.py's caffenet_spec: bvlc_reference_caffenet, pooling before
    LRN) as a list of `Layer`, with its ReLUs as separate layers and the loss last."""
    from nn.caffenet import caffenet_spec
    return layers_from_spec(caffenet_spec(num_classes, last_layer), input_size)


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def weight_shape(layer):
    """Weight blob shape in Caffe's layout: conv (K, C // group, kh, kw), fc (O, D)."""
    p = layer.params
    if layer.kind == 'conv':
        return (p['num_output'], layer.in_shape[0] // p['group'], p['kernel'], p['kernel'])
    if layer.kind == 'fc':
        return (p['num_output'], layer.in_shape[0])
    raise ValueError(f"layer {layer.name!r} ({layer.kind}) has no weights")


def _product_counts(layer, batch):
    """conv and fc: the three products (forward, backward-data, backward-weights)."""
    x = batch * _numel(layer.in_shape)
    y = batch * _numel(layer.out_shape)
    w = _numel(weight_shape(layer))
    b = layer.params['num_output']
    # Each output element uses every weight of its filter once: y * (weights per filter).
    macs = y * (w // b)
    f = FLOAT_BYTES
    return {
        'forward': Counts(macs, 2 * macs + y, f * (x + w + b + y)),
        'backward_data': Counts(macs, 2 * macs, f * (y + w + x)),
        'backward_weights': Counts(macs, 2 * macs + y, f * (x + y + w + b)),
    }


def _pool_counts(layer, batch):
    c, h, w = layer.in_shape
    _, ho, wo = layer.out_shape
    p = layer.params
    # Window elements visited, exactly (windows are clipped at the image edge).
    visits = (_pool_window_total(h, ho, p['kernel'], p['stride'], p['pad'])
              * _pool_window_total(w, wo, p['kernel'], p['stride'], p['pad']))
    x = batch * c * h * w
    y = batch * c * ho * wo
    return {
        'forward': Counts(0, batch * c * visits, FLOAT_BYTES * (x + y) + INDEX_BYTES * y),
        'backward': Counts(0, y, FLOAT_BYTES * (y + x) + INDEX_BYTES * y),
    }


def _elementwise_counts(layer, batch):
    n = batch * _numel(layer.in_shape)
    f = FLOAT_BYTES
    if layer.kind == 'relu':
        # forward: max(x, 0); backward: dy where the input was positive (reads dy and x).
        return {'forward': Counts(0, n, f * 2 * n), 'backward': Counts(0, n, f * 3 * n)}
    if layer.kind == 'lrn':
        s = layer.params['local_size']
        # forward per element: square, window sum (s adds), affine (2), power, multiply.
        # backward (Caffe's formula): dy*y/scale (2), window sum (s), scale**-beta and
        # product (2), minus coef*x*sum (3). Minimal traffic: x and dy in, dx out
        # (y and scale can be recomputed from x).
        return {'forward': Counts(0, (s + 5) * n, f * 2 * n),
                'backward': Counts(0, (s + 7) * n, f * 3 * n)}
    if layer.kind == 'dropout':
        # The keep mask comes from a hash of the element index: nothing to read for it.
        return {'forward': Counts(0, 2 * n, f * 2 * n), 'backward': Counts(0, 2 * n, f * 2 * n)}
    raise ValueError(f"layer {layer.name!r}: no element-wise counts for kind {layer.kind!r}")


def _loss_counts(layer, batch):
    n = batch * _numel(layer.in_shape)
    f = FLOAT_BYTES
    # forward: max, subtract, exp, sum, (log of the label's probability) per score.
    # backward: softmax again (or read probs) minus one-hot, scaled by 1/N.
    return {
        'forward': Counts(0, 4 * n + batch, f * n + INDEX_BYTES * batch),
        'backward': Counts(0, 6 * n, f * 2 * n + INDEX_BYTES * batch),
    }


def layer_counts(layer, batch):
    """Counts for every pass of `layer` over a batch of `batch` images.

    Returns {pass: Counts}; passes are 'forward', 'backward_data', 'backward_weights'
    for conv and fc layers, 'forward' and 'backward' for the others.
    """
    if batch < 1:
        raise ValueError(f"layer_counts: batch must be >= 1, got {batch}")
    if layer.kind in ('conv', 'fc'):
        return _product_counts(layer, batch)
    if layer.kind == 'pool':
        return _pool_counts(layer, batch)
    if layer.kind == 'loss':
        return _loss_counts(layer, batch)
    return _elementwise_counts(layer, batch)


def sgd_counts(num_params):
    """SGD with momentum and weight decay over `num_params` floats (in place).

    history = momentum * history + lr * (grad * scale + decay * param); param -= history:
    7 FLOPs per element; reads param, grad, history and writes param, history.
    """
    return Counts(0, 7 * num_params, FLOAT_BYTES * 5 * num_params)


def param_count(layers):
    """Number of learnable floats (weights and biases) in `layers`."""
    return sum(_numel(weight_shape(l)) + l.params['num_output']
               for l in layers if l.kind in ('conv', 'fc'))


def forward_macs(layers, batch=1):
    """Multiply-accumulates of the conv and fc layers' forward pass."""
    return sum(layer_counts(l, batch)['forward'].macs for l in layers
               if l.kind in ('conv', 'fc'))


def network_counts(layers, batch, train=False):
    """Total work of a forward pass (train=False) or a training step (train=True).

    A training step is forward + every backward pass + one SGD update of all the
    parameters. The first layer's backward-data product is skipped: nothing needs the
    gradient of the input image. The ReLUs are counted as separate layers.
    """
    total = Counts(0, 0, 0)
    for i, layer in enumerate(layers):
        passes = layer_counts(layer, batch)
        total += passes['forward']
        if not train:
            continue
        for name, c in passes.items():
            if name == 'forward' or (i == 0 and name == 'backward_data'):
                continue
            total += c
    if train:
        total += sgd_counts(param_count(layers))
    return total


def matmul_counts(m, n, k):
    """C (m, n) = A (m, k) @ B (k, n): m*n*k MACs, 2 FLOPs each; reads A and B, writes C."""
    return Counts(m * n * k, 2 * m * n * k, FLOAT_BYTES * (m * k + k * n + m * n))


def fc_products(layer, batch):
    """The three matrix products of an fc layer as {pass: (m, n, k)}:
    forward y = x W^T (N, O, D); backward-data dx = dy W (N, D, O);
    backward-weights dW = dy^T x (O, D, N)."""
    if layer.kind != 'fc':
        raise ValueError(f"layer {layer.name!r} ({layer.kind}) is not an fc layer")
    o, d = weight_shape(layer)
    return {'forward': (batch, o, d), 'backward_data': (batch, d, o),
            'backward_weights': (o, d, batch)}
