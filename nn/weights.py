"""CaffeNet weights in HDF5: one file layout used by every part of the project.

Layout (see docs/design.md)::

    /<layer>/weight   float32, Caffe's blob shape, e.g. conv1 (96, 3, 11, 11), fc6 (4096, 9216)
    /<layer>/bias     float32, (num_output,)
    root attributes:  architecture ("CaffeNet"), num_classes, class_names (list of str),
                      input_size (227), mean_bgr ([104.0070, 116.6688, 122.6789]),
                      layer_order (list of layer names, input to output); CaffeNet.save
                      also writes dropout_seed and dropout_iter (the dropout counter)

Files are read with h5py only (never pickle) and written atomically: a temporary file
next to the target, then ``os.replace``, so a crash never leaves half a file behind.
"""
import os

import numpy as np

from nn.atomic import atomic_write
from nn.checks import FLOAT_DTYPES

# The ImageNet mean pixel, in Caffe's BGR channel order, that preprocessing subtracts.
MEAN_BGR = (104.0070, 116.6688, 122.6789)

# CaffeNet's input side (the crop the network was trained on).
INPUT_SIZE = 227

# Attributes whose values are lists of strings (stored as variable-length UTF-8).
_STRING_LIST_ATTRS = ("class_names", "layer_order")


class WeightsError(ValueError):
    """A weight file is missing, not HDF5, or malformed; the message names file and layer."""


def _h5py():
    import h5py  # imported here so `import nn.weights` is cheap (MEAN_BGR users)
    return h5py


def _check_params(path, params):
    """Check `params` is {layer: {'weight': array, 'bias': array}} before writing anything."""
    if not isinstance(params, dict) or not params:
        raise WeightsError(f"{path}: params must be a non-empty dict "
                           "{layer: {'weight': array, 'bias': array}}")
    for layer, blobs in params.items():
        if not isinstance(blobs, dict) or set(blobs) != {"weight", "bias"}:
            got = sorted(blobs) if isinstance(blobs, dict) else type(blobs).__name__
            raise WeightsError(f"{path}: layer {layer!r} must have exactly 'weight' and "
                               f"'bias' arrays, got {got}")


def save_weights(path, params, **attrs):
    """Write `params` to the HDF5 file `path` atomically.

    params: {layer: {'weight': ndarray, 'bias': ndarray}} with NumPy arrays in Caffe's blob
        shapes; they are stored as float32 (Caffe's blob type).
    attrs: root attributes (architecture, num_classes, class_names, input_size, mean_bgr,
        layer_order, ...). `layer_order` defaults to the dict order of `params`; lists of
        strings are stored as UTF-8 strings, everything else as given.
    """
    h5py = _h5py()
    path = os.fspath(path)
    _check_params(path, params)
    attrs = dict(attrs)
    attrs.setdefault("layer_order", list(params))
    for key in _STRING_LIST_ATTRS:
        # A bare string would be stored as a list of its characters.
        if isinstance(attrs.get(key), (str, bytes)):
            raise WeightsError(f"{path}: attribute {key} must be a list of strings, got the "
                               f"string {attrs[key]!r}")
    # Refuse now what load_weights would refuse: a file written must read back.
    _check_attrs(path, params, {k: v for k, v in attrs.items() if v is not None})

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            write_params(f, params)
            string = h5py.string_dtype("utf-8")
            for key, value in attrs.items():
                if value is None:
                    continue  # HDF5 has no null; an absent attribute means "unknown"
                if key in _STRING_LIST_ATTRS:
                    f.attrs.create(key, [str(v) for v in value], dtype=string)
                else:
                    f.attrs[key] = value

    atomic_write(path, write)


def write_params(group, params, dtype=np.float32):
    """Write params {layer: {'weight': ndarray, 'bias': ndarray}} into an open h5py File or
    Group as datasets <layer>/weight and <layer>/bias, in `dtype` (float32, Caffe's blob
    type, for weight files; a checkpoint keeps its network's dtype). Shapes as given."""
    for layer, blobs in params.items():
        layer_group = group.create_group(layer)
        for blob in ("weight", "bias"):
            layer_group.create_dataset(blob, data=np.asarray(blobs[blob], dtype=dtype))


def read_params(path, group, names=None):
    """The layers `names` (default: all, in the group's order) of an open h5py File or
    Group written by `write_params`, as {layer: {'weight': ndarray, 'bias': ndarray}}.
    Raises WeightsError naming `path` and the layer for a missing or non-float dataset."""
    h5py = _h5py()
    params = {}
    for layer in (list(group.keys()) if names is None else names):
        layer_group = group[layer]
        if not isinstance(layer_group, h5py.Group):
            raise WeightsError(f"{path}: {layer!r} is not a layer group "
                               "(expected /<layer>/weight and /<layer>/bias)")
        params[layer] = {blob: _read_blob(path, layer, layer_group, blob)
                         for blob in ("weight", "bias")}
    return params


def _plain(key, value):
    """HDF5 attribute value -> plain Python (str, int, float, list)."""
    if key in _STRING_LIST_ATTRS:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v)
                for v in np.atleast_1d(value)]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_blob(path, layer, group, blob):
    """One dataset of a layer group as a NumPy array, checked for presence and dtype."""
    h5py = _h5py()
    if blob not in group or not isinstance(group[blob], h5py.Dataset):
        raise WeightsError(f"{path}: layer {layer!r} has no {blob!r} dataset "
                           "(expected datasets 'weight' and 'bias')")
    data = group[blob]
    if data.dtype not in FLOAT_DTYPES:
        raise WeightsError(f"{path}: layer {layer!r} {blob} has dtype {data.dtype}, "
                           "expected float32 (or float64)")
    return data[()]


def _check_attrs(path, params, attrs):
    """Raise WeightsError when the root attributes contradict each other or the layers:
    layer_order naming a layer not in params, num_classes vs class_names and vs the bias
    of the last layer of layer_order, input_size a positive int, mean_bgr three numbers.
    Absent attributes are not checked."""
    def fail(message):
        raise WeightsError(f"{path}: {message}")

    unknown = [name for name in attrs.get("layer_order") or () if name not in params]
    if unknown:
        fail(f"layer_order names {unknown[0]!r}, which is not among the layers "
             f"({', '.join(params)})")

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    for key in ("num_classes", "input_size"):
        if key in attrs and not (is_int(attrs[key]) and attrs[key] >= 1):
            fail(f"root attribute {key} must be a positive integer, got {attrs[key]!r}")
    if "mean_bgr" in attrs:
        mean = np.asarray(attrs["mean_bgr"])
        if mean.shape != (3,) or not np.issubdtype(mean.dtype, np.number):
            fail(f"root attribute mean_bgr must be 3 numbers (B, G, R), got {attrs['mean_bgr']!r}")
    num_classes = attrs.get("num_classes")
    if num_classes is None:
        return
    order = attrs.get("layer_order")
    if order:
        last = order[-1]
        bias = np.shape(params[last]["bias"])
        if bias != (num_classes,):
            fail(f"last layer {last!r} has bias shape {bias} but the file says "
                 f"num_classes={num_classes}")
    if "class_names" in attrs and len(attrs["class_names"]) != num_classes:
        fail(f"{len(attrs['class_names'])} class_names {attrs['class_names']} for "
             f"num_classes={num_classes}")


def load_weights(path):
    """Read a weight file written by `save_weights` (or the Caffe converter).

    Returns (params, attrs): params {layer: {'weight': ndarray, 'bias': ndarray}} in the
    order of the `layer_order` attribute when present, attrs a dict of plain Python values.
    Raises WeightsError naming the file (and layer) on anything missing or malformed,
    including root attributes that contradict each other or the layers (`_check_attrs`).
    """
    h5py = _h5py()
    path = os.fspath(path)
    if os.path.isdir(path):
        raise WeightsError(f"{path}: is a directory, not a weight file")
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such weight file")
    if not h5py.is_hdf5(path):
        raise WeightsError(f"{path}: not an HDF5 file (expected CaffeNet weights in HDF5)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:  # truncated or damaged: h5py's message does not name the file
        raise WeightsError(f"{path}: cannot be read as HDF5 (damaged or truncated?): {e}") \
            from None
    with f:
        attrs = {key: _plain(key, value) for key, value in f.attrs.items()}
        names = list(f.keys())
        order = attrs.get("layer_order")
        if order is not None:   # (a name with no group in the file: _check_attrs says so)
            names = [n for n in order if n in f] + [n for n in names if n not in order]
        params = read_params(path, f, names)
    _check_attrs(path, params, attrs)
    return params, attrs
