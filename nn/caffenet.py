"""CaffeNet (Caffe's AlexNet variant), written once against a device's op set.

The whole API in six lines::

    net = CaffeNet(num_classes=2, last_layer='fc8_twitter', device='cpu')
    net.load('weights/caffenet_imagenet.h5')               # copies conv1..fc7, fc8_twitter fresh
    probs = net.predict(batch)                              # (N, 3, 227, 227) float32, BGR, mean-subtracted
    loss, grads, scores = net.loss_and_grads(batch, labels) # train mode: dropout on, softmax loss
    SGDSolver(net, base_lr=0.001, stepsize=2000).step(grads)  # from nn.solver
    net.save('weights/mine.h5')

The layer stack is a `spec`: a list of dicts, one per layer, in the order data flows
(`caffenet_spec()` is CaffeNet's, the default). Types and keys:

    conv     name, num_output, kernel, stride=1, pad=0, group=1, relu=False, std=0.01,
             bias_fill=0.0   (relu fused into the op; std/bias_fill: Caffe's init)
    fc       name, num_output, relu=False, std=0.01, bias_fill=0.0   (InnerProduct)
    pool     name, kernel, stride, pad=0               (MAX, Caffe's ceil rule)
    lrn      name, local_size, alpha, beta, k=1.0      (across channels)
    relu     name                                      (stand-alone; conv/fc fuse theirs)
    dropout  name, ratio
    optional on conv/fc: mult = ((w_lr_mult, w_decay_mult), (b_lr_mult, b_decay_mult))

Weights are stored in Caffe's blob shapes (fc6 (4096, 9216)). With fully_conv=True the fc
layers run as convolutions, their weights reshaped in memory to (out, C, h, w) of their
input at 227x227 (fc6 (4096, 256, 6, 6), fc7 (4096, 4096, 1, 1), last (C, 4096, 1, 1)),
and any input of at least 227x227 gives a score map (451x451 -> 8x8).
"""
import logging
import zlib

import numpy as np

from nn.device import get_device
from nn.flops import layers_from_spec, weight_shape
from nn.weights import INPUT_SIZE, MEAN_BGR, WeightsError, load_weights, save_weights

log = logging.getLogger(__name__)

PARAM_TYPES = ("conv", "fc")
LAYER_TYPES = PARAM_TYPES + ("pool", "lrn", "relu", "dropout")

# Caffe's CaffeNet multipliers: (lr_mult, decay_mult) for weight and bias; a last layer
# that is trained from scratch (renamed, e.g. fc8_twitter) learns 10x faster, as in the
# paper's fine-tuning prototxt.
DEFAULT_MULT = ((1.0, 1.0), (2.0, 0.0))
FRESH_LAST_MULT = ((10.0, 1.0), (20.0, 0.0))


def _conv(name, num_output, kernel, stride=1, pad=0, group=1, bias_fill=0.0):
    return dict(type="conv", name=name, num_output=num_output, kernel=kernel, stride=stride,
                pad=pad, group=group, relu=True, std=0.01, bias_fill=bias_fill)


def caffenet_spec(num_classes=1000, last_layer="fc8"):
    """CaffeNet's layer stack (bvlc_reference_caffenet: pool before norm) as a spec list."""
    last = dict(type="fc", name=last_layer, num_output=num_classes, relu=False, std=0.01,
                bias_fill=0.0)
    if last_layer != "fc8":
        last["mult"] = FRESH_LAST_MULT
    norm = dict(type="lrn", local_size=5, alpha=1e-4, beta=0.75, k=1.0)
    return [
        _conv("conv1", 96, 11, stride=4),
        dict(type="pool", name="pool1", kernel=3, stride=2),
        dict(norm, name="norm1"),
        _conv("conv2", 256, 5, pad=2, group=2, bias_fill=1.0),
        dict(type="pool", name="pool2", kernel=3, stride=2),
        dict(norm, name="norm2"),
        _conv("conv3", 384, 3, pad=1),
        _conv("conv4", 384, 3, pad=1, group=2, bias_fill=1.0),
        _conv("conv5", 256, 3, pad=1, group=2, bias_fill=1.0),
        dict(type="pool", name="pool5", kernel=3, stride=2),
        dict(type="fc", name="fc6", num_output=4096, relu=True, std=0.005, bias_fill=1.0),
        dict(type="dropout", name="drop6", ratio=0.5),
        dict(type="fc", name="fc7", num_output=4096, relu=True, std=0.005, bias_fill=1.0),
        dict(type="dropout", name="drop7", ratio=0.5),
        last,
    ]


# The layers with parameters every CaffeNet weight file has before its classifier.
TRUNK_LAYERS = tuple(layer["name"] for layer in caffenet_spec()
                     if layer["type"] in PARAM_TYPES)[:-1]


def _mix32(*words):
    """A 32-bit hash of some integers (FNV-1a over words, then murmur3's finaliser)."""
    h = 0x811C9DC5
    for word in words:
        h = ((h ^ (word & 0xFFFFFFFF)) * 0x01000193) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def _check_spec(spec):
    """Raise ValueError for unknown types, duplicate names or missing keys in a spec."""
    required = {"conv": ("num_output", "kernel"), "fc": ("num_output",),
                "pool": ("kernel", "stride"), "lrn": ("local_size", "alpha", "beta"),
                "relu": (), "dropout": ("ratio",)}
    names = set()
    for i, layer in enumerate(spec):
        kind, name = layer.get("type"), layer.get("name")
        if kind not in LAYER_TYPES:
            raise ValueError(f"spec[{i}] ({name}): unknown layer type {kind!r}, "
                             f"expected one of {LAYER_TYPES}")
        if not name or name in names:
            raise ValueError(f"spec[{i}]: layer name {name!r} is empty or used twice")
        names.add(name)
        missing = [key for key in required[kind] if key not in layer]
        if missing:
            raise ValueError(f"spec layer {name!r} ({kind}) lacks {missing}")
    if not any(layer["type"] in PARAM_TYPES for layer in spec):
        raise ValueError("spec has no conv or fc layer")


def _check_file_attrs(path, attrs, input_size, any_mean=False):
    """WeightsError when a weight file's root attributes say it is not for a CaffeNet of
    this input_size: another architecture, input size, or (unless any_mean) a mean other
    than the MEAN_BGR that the preprocessing subtracts. Absent attributes (hand-written
    files) pass."""
    architecture = attrs.get("architecture", "CaffeNet")
    if architecture != "CaffeNet":
        raise WeightsError(f"{path}: root attribute architecture is {architecture!r}, "
                           f"expected 'CaffeNet'")
    size = attrs.get("input_size", input_size)
    if size != input_size:
        raise WeightsError(f"{path}: root attribute input_size is {size}, this network's "
                           f"input is {input_size}")
    mean = attrs.get("mean_bgr", MEAN_BGR)
    if not any_mean and not np.allclose(mean, MEAN_BGR, rtol=0, atol=1e-3):
        raise WeightsError(f"{path}: root attribute mean_bgr is {list(mean)}, but the "
                           f"preprocessing subtracts {list(MEAN_BGR)}")


class CaffeNet:
    """CaffeNet on a device ('cpu', 'emu', 'cuda', a Device, or None for automatic).

    num_classes, last_layer: size and name of the final InnerProduct (renaming it, e.g.
        'fc8_twitter', makes it fresh: not copied from ImageNet weights, 10x/20x lr_mult).
    class_names: optional list of num_classes strings, saved with the weights.
    fully_conv: run fc6/fc7/last as convolutions (score maps for inputs >= 227).
    dropout_seed: base seed of the dropout masks; the mask of each training forward is a
        function of (dropout_seed, dropout_iter, layer), and dropout_iter counts training
        forwards, so resuming with the saved counter reproduces the masks.
    spec, input_size, in_channels: another layer stack (overrides num_classes and
        last_layer) and its input, for small test networks.
    init: 'caffe' (Gaussian weights, constant biases, as CaffeNet's prototxt; seeded by
        `seed` and the layer name), 'xavier' (Caffe's xavier filler, zero biases: training
        from scratch) or 'zeros'. dtype: float32, or float64 on cpu for checks.

    params: {layer: {'weight': array, 'bias': array}} on the device.
    """

    def __init__(self, num_classes=1000, last_layer="fc8", class_names=None, device=None,
                 fully_conv=False, dropout_seed=0, *, spec=None, input_size=INPUT_SIZE,
                 in_channels=3, init="caffe", seed=0, dtype=np.float32):
        self.device = get_device(device)
        self.ops = self.device.ops
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"CaffeNet: dtype must be float32 or float64, got {self.dtype}")
        if self.dtype != np.float32 and self.device.name != "cpu":
            raise ValueError(f"CaffeNet: the {self.device.name} kernels are float32 only; "
                             f"float64 needs device='cpu'")
        self.spec = [dict(layer) for layer in (spec or caffenet_spec(num_classes, last_layer))]
        _check_spec(self.spec)
        self.fully_conv = bool(fully_conv)
        self.input_size = int(input_size)
        self.in_channels = int(in_channels)
        last = [layer for layer in self.spec if layer["type"] in PARAM_TYPES][-1]
        self.last_layer = last["name"]
        self.num_classes = int(last["num_output"])
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != self.num_classes:
                raise ValueError(f"CaffeNet: {len(class_names)} class_names for "
                                 f"{self.num_classes} classes")
        self.class_names = class_names
        self.dropout_seed = int(dropout_seed)
        self.dropout_iter = 0
        self._plan_shapes()
        self._multipliers = {
            layer["name"]: {"weight": tuple(layer.get("mult", DEFAULT_MULT)[0]),
                            "bias": tuple(layer.get("mult", DEFAULT_MULT)[1])}
            for layer in self.spec if layer["type"] in PARAM_TYPES}
        self.params = {}
        self.init_params(init, seed)
        self._caches = None

    # ----------------------------------------------------------------- shapes and params
    def _plan_shapes(self):
        """Each param layer's blob shape (Caffe's, stored in files) and memory shape (4-D
        for fc layers when fully convolutional), from nn/flops.py's walk of the spec at
        input_size (the walk the benchmark counts with; it raises for an empty map)."""
        self.blob_shapes, self.memory_shapes = {}, {}
        spatial = (self.in_channels, self.input_size, self.input_size)  # (C, H, W) so far
        for layer in layers_from_spec(self.spec, self.input_size, self.in_channels):
            if layer.kind in PARAM_TYPES:
                blob = weight_shape(layer)
                self.blob_shapes[layer.name] = blob
                # Fully convolutional, an fc layer is a convolution covering its whole input.
                self.memory_shapes[layer.name] = (blob[:1] + spatial if layer.kind == "fc"
                                                  and self.fully_conv else blob)
            out = layer.out_shape
            spatial = out if len(out) == 3 else out + (1, 1)
        self.param_layers = list(self.blob_shapes)
        self._param_spec = {layer["name"]: layer for layer in self.spec
                            if layer["type"] in PARAM_TYPES}

    def init_params(self, init="caffe", seed=0):
        """(Re)initialise every layer, each from its own generator seeded by (seed, layer
        name): 'caffe' = N(0, std) weights and constant biases, as CaffeNet's prototxt;
        'xavier' = Caffe's xavier filler, U(-a, a) with a = sqrt(3 / fan_in), and zero
        biases (activations keep their scale through the layers); or 'zeros'."""
        for name in self.param_layers:
            self._init_layer(name, init, seed)

    def _init_layer(self, name, init="caffe", seed=0):
        layer = self._param_spec[name]
        shape = self.blob_shapes[name]
        # Drawn in float32 in the blob shape, so float64, classifier and fully
        # convolutional nets start from the same numbers.
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        if init == "caffe":
            weight = rng.standard_normal(shape, dtype=np.float32)
            weight *= np.float32(layer.get("std", 0.01))  # in place: fc6 alone is 151 MB
            bias = np.full(shape[0], layer.get("bias_fill", 0.0), dtype=np.float32)
        elif init == "xavier":
            scale = np.float32(np.sqrt(3.0 / np.prod(shape[1:])))
            weight = rng.random(shape, dtype=np.float32)
            weight *= 2 * scale
            weight -= scale
            bias = np.zeros(shape[0], np.float32)
        elif init == "zeros":
            weight, bias = np.zeros(shape, np.float32), np.zeros(shape[0], np.float32)
        else:
            raise ValueError(f"CaffeNet: unknown init {init!r}, expected 'caffe', "
                             f"'xavier' or 'zeros'")
        self._set_layer(name, weight, bias)

    def _set_layer(self, name, weight, bias):
        """Put host arrays on the device in the layer's memory shape and dtype.

        Always a copy: on the cpu device asarray would otherwise keep the caller's array,
        and the solver's in-place updates would change it."""
        def own(a, shape):
            copy = np.array(np.reshape(a, shape), dtype=self.dtype, copy=True)
            return copy if self.device.name == "cpu" else self.device.asarray(copy, self.dtype)

        self.params[name] = {"weight": own(weight, self.memory_shapes[name]),
                             "bias": own(bias, (self.memory_shapes[name][0],))}

    def param_multipliers(self):
        """{layer: {'weight': (lr_mult, decay_mult), 'bias': (lr_mult, decay_mult)}}."""
        return {name: dict(blobs) for name, blobs in self._multipliers.items()}

    def set_param_multipliers(self, layer, weight=None, bias=None):
        """Change a layer's (lr_mult, decay_mult) pairs, e.g. weight=(0, 0) to freeze it."""
        if layer not in self._multipliers:
            raise KeyError(f"CaffeNet has no layer {layer!r} with parameters; "
                           f"layers: {self.param_layers}")
        for blob, mult in (("weight", weight), ("bias", bias)):
            if mult is not None:
                lr_mult, decay_mult = mult
                self._multipliers[layer][blob] = (float(lr_mult), float(decay_mult))

    def to_numpy_params(self):
        """A host copy of params (same structure and shapes) as NumPy arrays."""
        out = {}
        for name, blobs in self.params.items():
            out[name] = {}
            for blob, arr in blobs.items():
                host = self.device.to_numpy(arr)
                out[name][blob] = host.copy() if host is arr else host
        return out

    # ----------------------------------------------------------------------- checking
    def _check_input(self, x):
        """x as a device array; ValueError naming the expected shape/dtype otherwise."""
        size, c = self.input_size, self.in_channels
        want = (f"(N, {c}, >={size}, >={size})" if self.fully_conv
                else f"(N, {c}, {size}, {size})")
        shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
        ok = (shape is not None and len(shape) == 4 and shape[0] >= 1 and shape[1] == c
              and (shape[2] >= size and shape[3] >= size if self.fully_conv
                   else shape[2:] == (size, size)))
        if not ok or dtype != self.dtype:
            raise ValueError(f"CaffeNet input: expected a {self.dtype} array of shape {want}, "
                             f"got {dtype} {shape}")
        return self.device.asarray(x, self.dtype)

    def _check_labels(self, labels, n):
        """labels as a device int32 array of shape (n,) with values in [0, num_classes)."""
        host = np.asarray(self.device.to_numpy(labels) if hasattr(labels, "shape")
                          else labels)
        if (host.shape != (n,) or not np.issubdtype(host.dtype, np.integer)
                or host.min() < 0 or host.max() >= self.num_classes):
            raise ValueError(f"CaffeNet labels: expected integers of shape ({n},) in "
                             f"[0, {self.num_classes}), got {host.dtype} {host.shape}")
        return self.device.asarray(host, np.int32)

    # -------------------------------------------------------------- forward / backward
    def _dropout_seed(self, index):
        return _mix32(self.dropout_seed, self.dropout_iter, index)

    def forward(self, x, train=False, for_backward=True):
        """Scores for x (N, C_in, H, W): (N, num_classes), or (N, num_classes, h, w) when
        fully convolutional. train=True turns dropout on (a fresh mask per call). Keeps
        the caches that `backward` needs; for_backward=False keeps none, and pooling then
        skips its argmax (inference: 10 of 190 ms at batch 16 on 2 CPU cores)."""
        x = self._check_input(x)
        ops, caches = self.ops, []
        for index, layer in enumerate(self.spec):
            kind, name = layer["type"], layer["name"]
            if kind in PARAM_TYPES:
                p = self.params[name]
                if kind == "conv" or self.fully_conv:
                    x, cache = ops.conv_forward(
                        x, p["weight"], p["bias"], stride=layer.get("stride", 1),
                        pad=layer.get("pad", 0), group=layer.get("group", 1),
                        relu=layer.get("relu", False), layer=name)
                else:
                    x, cache = ops.inner_product_forward(x, p["weight"], p["bias"],
                                                         relu=layer.get("relu", False), layer=name)
            elif kind == "pool":
                x, cache = ops.max_pool_forward(x, layer["kernel"], layer["stride"],
                                                pad=layer.get("pad", 0), layer=name,
                                                need_argmax=for_backward)
            elif kind == "lrn":
                x, cache = ops.lrn_forward(x, local_size=layer["local_size"],
                                           alpha=layer["alpha"], beta=layer["beta"],
                                           k=layer.get("k", 1.0), layer=name)
            elif kind == "relu":
                x, cache = ops.relu_forward(x)
            elif train:  # dropout
                x, cache = ops.dropout_forward(x, layer["ratio"], self._dropout_seed(index),
                                               train=True)
            else:
                cache = None  # test-mode dropout is the identity
            if for_backward:
                caches.append(cache)
        if train:
            self.dropout_iter += 1
        self._caches = caches if for_backward else None
        return x

    def backward(self, dscores):
        """Gradients of a loss whose gradient w.r.t. the last forward's scores is dscores
        (same shape as the scores). Returns {layer: {'weight': dW, 'bias': db}} shaped
        like params."""
        if self._caches is None:
            raise RuntimeError("CaffeNet.backward needs a forward() with for_backward=True "
                               "first (predict() keeps no caches)")
        ops, grads, d = self.ops, {}, dscores
        first = self.param_layers[0]  # below it no gradient is needed, not even dx
        for layer, cache in zip(reversed(self.spec), reversed(self._caches)):
            kind = layer["type"]
            if kind in PARAM_TYPES:
                if kind == "conv" or self.fully_conv:
                    d, dw, db = ops.conv_backward(d, cache, need_dx=layer["name"] != first)
                else:
                    d, dw, db = ops.inner_product_backward(d, cache)
                grads[layer["name"]] = {"weight": dw, "bias": db}
                if layer["name"] == first:
                    break
            elif kind == "pool":
                d = ops.max_pool_backward(d, cache)
            elif kind == "lrn":
                d = ops.lrn_backward(d, cache)
            elif kind == "relu":
                d = ops.relu_backward(d, cache)
            elif cache is not None:  # dropout in train mode
                d = ops.dropout_backward(d, cache)
        return {name: grads[name] for name in self.param_layers}

    def forward_loss(self, x, labels):
        """Train-mode forward (dropout on) and SoftmaxWithLoss (mean over the batch).
        x (N, C_in, H, W), labels (N,) ints. Returns (loss float, dscores, scores), the
        caches kept for backward(dscores)."""
        scores = self.forward(x, train=True)
        n = scores.shape[0]
        if scores.ndim == 4 and scores.shape[2:] != (1, 1):
            raise ValueError(f"CaffeNet loss: the fully convolutional scores are a "
                             f"{scores.shape[2]}x{scores.shape[3]} map; the loss needs "
                             f"(N, {self.num_classes}) scores, i.e. a {self.input_size} input")
        labels = self._check_labels(labels, n)
        loss, cache = self.ops.softmax_loss_forward(scores.reshape(n, -1), labels)
        dscores = self.ops.softmax_loss_backward(cache).reshape(scores.shape)
        return loss, dscores, scores

    def loss_and_grads(self, x, labels):
        """forward_loss and backward: x (N, C_in, H, W), labels (N,) ints. Returns
        (loss float, grads, scores)."""
        loss, dscores, scores = self.forward_loss(x, labels)
        return loss, self.backward(dscores), scores

    def adopt_routing(self, other):
        """Make this net's pending backward route its gradient as `other`'s would: take
        the ReLU masks (conv and fc outputs, which backward reads only as y > 0) and the
        pooling argmaxes of other's last forward, a forward of the same spec on the same
        input (on any device). Returns {layer: (elements whose route changed, elements)}.

        For comparing two implementations: where rounding puts a pre-ReLU value on the
        other side of 0, or lets the other of two nearly equal values win a pooling
        window, the nets send a whole gradient term to different places; at batch 64
        that happens at a few of millions of elements, and can move conv1's weight
        gradient by 1e-3. With the routing shared, the gradients differ by rounding only,
        and the number of changed routes says how often the two disagreed.
        """
        if self._caches is None or other._caches is None:
            raise RuntimeError("CaffeNet.adopt_routing needs a forward() with "
                               "for_backward=True on both nets first")
        if other.spec != self.spec or other.fully_conv != self.fully_conv:
            raise ValueError("CaffeNet.adopt_routing: the other net must have the same layers "
                             "(spec) and the same fully_conv setting")
        changes = {}
        for index, layer in enumerate(self.spec):
            kind, mine, theirs = layer["type"], self._caches[index], other._caches[index]
            # What routes the gradient (docs/design.md, "The op set"): the argmax of a
            # pooling cache, the y of a conv or fc cache (None without ReLU), a ReLU's
            # whole cache (its output).
            if kind == "pool":
                key = "argmax"
            elif kind in PARAM_TYPES and layer.get("relu", False):
                key = "y"
            elif kind == "relu":
                key = None
            else:
                continue
            own = np.asarray(self.device.to_numpy(mine if key is None else mine[key]))
            new = np.asarray(other.device.to_numpy(theirs if key is None else theirs[key]))
            if new.shape != own.shape:
                raise ValueError(f"CaffeNet.adopt_routing: {layer['name']}'s routes have shape "
                                 f"{new.shape} in the other net, {own.shape} here (a "
                                 "forward on a different input?)")
            if kind == "pool":
                changed = np.count_nonzero(new != own)
            else:
                changed = np.count_nonzero((new > 0) != (own > 0))
            changes[layer["name"]] = (int(changed), own.size)
            routed = self.device.asarray(np.array(new, dtype=own.dtype), own.dtype)  # a copy
            if key is None:
                self._caches[index] = routed
            else:
                mine[key] = routed
        return changes

    def predict(self, x):
        """Class probabilities (NumPy), test mode: (N, num_classes), or
        (N, num_classes, h, w) when fully convolutional."""
        probs = self.ops.softmax(self.forward(x, train=False, for_backward=False))
        return self.device.to_numpy(probs)

    # --------------------------------------------------------------------- weights I/O
    def load_params(self, source_params, strict=False, source="params"):
        """Copy layers of {layer: {'weight', 'bias'}} (NumPy) whose names match this net's.

        Shapes must be Caffe's blob shape (or this net's memory shape); a mismatch raises
        WeightsError naming the layer and both shapes, before anything is copied. Layers
        absent from source_params keep their current (fresh) values; strict=True makes
        that, and source layers this net lacks, an error. Returns
        {'copied': [...], 'fresh': [...], 'ignored': [...]} and logs it as Caffe does.
        """
        copied = [name for name in self.param_layers if name in source_params]
        fresh = [name for name in self.param_layers if name not in source_params]
        ignored = [name for name in source_params if name not in self.params]
        for name in copied:
            for blob in ("weight", "bias"):
                want = self.blob_shapes[name] if blob == "weight" else self.blob_shapes[name][:1]
                allowed = (want, self.memory_shapes[name]) if blob == "weight" else (want,)
                got = tuple(np.shape(source_params[name][blob]))
                if got not in allowed:
                    raise WeightsError(f"{source}: layer {name!r} {blob} has shape {got}, "
                                       f"but the network expects {want}")
        if strict and (fresh or ignored):
            raise WeightsError(f"{source}: strict load, but layers {fresh} are missing "
                               f"and layers {ignored} are not in the network")
        for name in ignored:
            log.info("Ignoring source layer %s", name)
        for name in copied:
            log.info("Copying %s from %s", name, source)
            self._set_layer(name, source_params[name]["weight"], source_params[name]["bias"])
        for name in fresh:
            log.info("%s not found in %s, initialising fresh", name, source)
        return {"copied": copied, "fresh": fresh, "ignored": ignored}

    def load(self, path, strict=False):
        """Copy matching layers from an HDF5 weight file (see load_params for the rules).

        The file's root attributes must fit this net (`_check_file_attrs`). Adopts the
        file's class_names when the last layer is copied and the net has none.
        Returns {'copied': [...], 'fresh': [...], 'ignored': [...]}."""
        params, attrs = load_weights(path)
        _check_file_attrs(path, attrs, self.input_size)
        report = self.load_params(params, strict=strict, source=str(path))
        if (self.class_names is None and self.last_layer in report["copied"]
                and len(attrs.get("class_names", [])) == self.num_classes):
            self.class_names = list(attrs["class_names"])
        return report

    @classmethod
    def from_file(cls, path, device=None, fully_conv=False, any_mean=False):
        """The CaffeNet classifier a weight file holds, every layer loaded (strictly).

        The last layer is the last of the file's layer_order (e.g. fc8_twitter);
        num_classes and class_names are the root attributes, else the length of that
        layer's bias and '0', '1', ... The root attributes must fit CaffeNet
        (`_check_file_attrs`); any_mean=True accepts a mean_bgr other than MEAN_BGR, for a
        caller that adds MEAN_BGR - mean_bgr to its inputs (predict.py).
        Returns (net, attrs). Raises WeightsError naming the file and what is wrong (not
        HDF5, not CaffeNet, a layer missing or of the wrong shape, < 2 classes).
        """
        params, attrs = load_weights(path)
        _check_file_attrs(path, attrs, INPUT_SIZE, any_mean)
        expected = (f"expected {', '.join(TRUNK_LAYERS)}, then a classifier such as "
                    f"fc8_twitter")
        order = list(attrs.get("layer_order") or params)
        if not order:
            raise WeightsError(f"{path}: holds no layers ({expected})")
        last = order[-1]
        missing = [name for name in TRUNK_LAYERS if name not in params]
        if missing or last in TRUNK_LAYERS:
            raise WeightsError(f"{path}: not CaffeNet classifier weights: layers "
                               f"{missing or [last]} "
                               f"{'are missing' if missing else 'cannot be the last layer'} "
                               f"({expected})")
        # A num_classes attribute that contradicts this bias is load_weights' error (or,
        # without layer_order, load_params'); here only the count itself is checked.
        bias = np.shape(params[last]["bias"])
        num_classes = int(attrs.get("num_classes", bias[0] if len(bias) == 1 else 0))
        if num_classes < 2:
            raise WeightsError(f"{path}: last layer {last!r} has bias shape {bias} and "
                               f"num_classes={num_classes} (need >= 2 classes)")
        class_names = attrs.get("class_names") or [str(i) for i in range(num_classes)]
        try:
            net = cls(num_classes=num_classes, last_layer=last, class_names=class_names,
                      device=device, fully_conv=fully_conv, init="zeros")
        except ValueError as exc:  # class_names of the wrong length, a clashing layer name
            raise WeightsError(f"{path}: {exc}") from None
        # Other layers of the file (an ImageNet fc8 beside fc8_twitter) are not this net's.
        net.load_params({name: params[name] for name in net.param_layers if name in params},
                        strict=True, source=str(path))
        return net, attrs

    def save(self, path):
        """Write the weights (Caffe blob shapes) and the root attributes to HDF5, atomically."""
        params = {name: {"weight": blobs["weight"].reshape(self.blob_shapes[name]),
                         "bias": blobs["bias"]}
                  for name, blobs in self.to_numpy_params().items()}
        class_names = self.class_names or [str(i) for i in range(self.num_classes)]
        save_weights(path, params, architecture="CaffeNet", num_classes=self.num_classes,
                     class_names=class_names, input_size=self.input_size,
                     mean_bgr=list(MEAN_BGR), layer_order=self.param_layers,
                     dropout_seed=self.dropout_seed, dropout_iter=self.dropout_iter)
