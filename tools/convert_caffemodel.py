"""Convert a Caffe .caffemodel into the project's HDF5 weight file, without Caffe.

    python -m tools.convert_caffemodel IN.caffemodel OUT.h5 [--num-classes N]
                                       [--class-names negative,positive]

A .caffemodel is a serialized protobuf ``NetParameter``. This module reads the protobuf
wire format directly (no protobuf package) and only the fields it needs (caffe.proto):

==================  ======================================================================
message             fields read
==================  ======================================================================
NetParameter        name = 1 (string), layers = 2 (V1LayerParameter, old files such as
                    BVLC CaffeNet), layer = 100 (LayerParameter, current files)
LayerParameter      name = 1 (string), type = 2 (string, e.g. "Convolution"), blobs = 7
V1LayerParameter    name = 4 (string), type = 5 (enum: 4 CONVOLUTION, 14 INNER_PRODUCT),
                    blobs = 6
BlobProto           num = 1, channels = 2, height = 3, width = 4 (legacy 4-D shape),
                    data = 5 (float, packed or not), diff = 6 (ignored), shape = 7
                    (BlobShape: dim = 1, packed int64), double_data = 8 (used instead of
                    data when it holds any value, as Caffe's Blob::FromProto does)
==================  ======================================================================

Everything else is skipped by wire type. Only layers with blobs are written, as
``{layer: {'weight', 'bias'}}`` through `nn.weights.save_weights`, in Caffe's blob shapes
for the classifier network:

==========================  =================================  ===========================
caffemodel layer            stored blob shape                  written as
==========================  =================================  ===========================
convN (Convolution)         weight (K, C, kh, kw), bias any    convN: (K, C, kh, kw), (K,)
fcN (InnerProduct)          weight (out, in) or V1 (1,1,out,in)  fcN: (out, in), (out,)
<name>-conv (Convolution,   weight (K, C, kh, kw)              <name>: (K, C*kh*kw), (K,)
fully convolutional twin    e.g. fc6-conv (4096, 256, 6, 6)    fc6: (4096, 9216)
of an InnerProduct layer)   fc8_twitter-conv (2, 4096, 1, 1)   fc8_twitter: (2, 4096)
==========================  =================================  ===========================

The ``-conv`` rule is how the paper's released fully convolutional model
(twitter_finetuned_test4_iter_180_conv.caffemodel, deploy file
sentiment_fully_conv_deploy.prototxt) names fc6-conv, fc7-conv and fc8_twitter-conv; the
flattening order (C, kh, kw) is the one Caffe's InnerProduct uses on pool5, so the
classifier and the fully convolutional net share one HDF5 file.

A malformed or truncated file raises `CaffemodelError` (bad varint, length past the end,
unknown wire type, blob data count not matching its shape, ...) naming the file and layer;
so does an output file that cannot be written.
"""
import argparse
import math
import os
import sys

import numpy as np

# V1LayerParameter.LayerType values of the layers that carry weights
_V1_TYPES = {4: "Convolution", 14: "InnerProduct"}
# wire types
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class CaffemodelError(ValueError):
    """A .caffemodel (or its protobuf encoding) is malformed; the message says where."""


# --- protobuf wire format ---------------------------------------------------------------

def _varint(buf, pos, end, where):
    """Decode a base-128 varint at buf[pos:end]. Returns (value, new pos)."""
    value, shift = 0, 0
    while True:
        if pos >= end:
            raise CaffemodelError(f"{where}: truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise CaffemodelError(f"{where}: varint longer than 10 bytes at byte {pos}")


def fields(buf, start, end, where):
    """Iterate the fields of the message buf[start:end].

    Yields (field number, wire type, value): an int for varint, (offset, length) for
    fixed32 / fixed64 / length-delimited payloads. Every step advances, so it never hangs.
    """
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end, where)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CaffemodelError(f"{where}: field number 0 at byte {pos}")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end, where)
            yield number, wire, value
            continue
        if wire == _LENGTH:
            size, pos = _varint(buf, pos, end, where)
        elif wire in (_FIXED32, _FIXED64):
            size = 4 if wire == _FIXED32 else 8
        else:
            raise CaffemodelError(f"{where}: unsupported wire type {wire} (field {number}) "
                                  f"at byte {pos}")
        if pos + size > end:
            raise CaffemodelError(f"{where}: field {number} of {size} bytes at byte {pos} "
                                  f"runs past the end of its message (byte {end})")
        yield number, wire, (pos, size)
        pos += size


def _string(buf, span, where):
    try:
        return bytes(buf[span[0]:span[0] + span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise CaffemodelError(f"{where}: a name is not valid UTF-8") from None


def _packed_varints(buf, span, where):
    pos, end = span[0], span[0] + span[1]
    out = []
    while pos < end:
        value, pos = _varint(buf, pos, end, where)
        out.append(value)
    return out


def _signed64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


# --- messages -----------------------------------------------------------------------------

def parse_blob(buf, start, end, where):
    """BlobProto at buf[start:end] -> float32 array in the blob's shape.

    The shape comes from `shape` (field 7) when present, else from the legacy
    num/channels/height/width. Raises CaffemodelError when the data count does not match.
    """
    legacy = {}
    shape = None
    floats, doubles = [], []       # lists of arrays, one per field occurrence
    for number, wire, value in fields(buf, start, end, where):
        if number in (1, 2, 3, 4) and wire == _VARINT:
            legacy[number] = _signed64(value)
        elif number == 7 and wire == _LENGTH:
            shape = _blob_shape(buf, value, where)
        elif number == 5:
            floats.append(_numbers(buf, wire, value, "<f4", where))
        elif number == 8:
            doubles.append(_numbers(buf, wire, value, "<f8", where))
    # As Caffe's Blob::FromProto: double_data when it holds any value, else data.
    doubles = np.concatenate(doubles) if doubles else np.zeros(0)
    data = doubles if doubles.size else (np.concatenate(floats) if floats
                                         else np.zeros(0, np.float32))
    if shape is None:
        shape = [legacy.get(k, 0) for k in (1, 2, 3, 4)]
    if any(d < 0 for d in shape):
        raise CaffemodelError(f"{where}: negative blob dimension in {tuple(shape)}")
    count = math.prod(shape)   # Python ints: no overflow on absurd dimensions
    if count != data.size:
        raise CaffemodelError(f"{where}: blob has {data.size} values but its shape "
                              f"{tuple(shape)} needs {count}")
    return data.astype(np.float32).reshape(shape)


def _blob_shape(buf, span, where):
    """BlobShape message -> list of dims (field 1, packed or unpacked int64)."""
    shape = []
    for number, wire, value in fields(buf, span[0], span[0] + span[1], where):
        if number == 1 and wire == _LENGTH:
            shape += [_signed64(d) for d in _packed_varints(buf, value, where)]
        elif number == 1 and wire == _VARINT:
            shape.append(_signed64(value))
    return shape


def _numbers(buf, wire, value, dtype, where):
    """float/double field: packed (length-delimited) or one unpacked fixed-width value."""
    width = np.dtype(dtype).itemsize
    offset, size = value if isinstance(value, tuple) else (None, None)
    if wire == _LENGTH:
        if size % width:
            raise CaffemodelError(f"{where}: packed data of {size} bytes is not a multiple "
                                  f"of {width}")
        return np.frombuffer(buf, dtype=dtype, count=size // width, offset=offset)
    if (wire == _FIXED32 and width == 4) or (wire == _FIXED64 and width == 8):
        return np.frombuffer(buf, dtype=dtype, count=1, offset=offset)
    raise CaffemodelError(f"{where}: blob data with wire type {wire}, expected packed or "
                          f"{'fixed32' if width == 4 else 'fixed64'}")


def parse_layers(buf, where="caffemodel"):
    """NetParameter bytes -> [(layer name, type string, [blob arrays])] in file order.

    Reads both `layers` (V1) and `layer` (current format). The type is the current
    string name ("Convolution", "InnerProduct", ...); V1 enum values other than
    convolution and inner product become "V1:<number>".
    """
    buf = memoryview(buf).cast("B") if not isinstance(buf, (bytes, bytearray)) else buf
    layers = []
    for number, wire, value in fields(buf, 0, len(buf), where):
        if wire != _LENGTH or number not in (2, 100):
            continue
        v1 = number == 2
        name_field, type_field, blobs_field = (4, 5, 6) if v1 else (1, 2, 7)
        name, kind, blob_spans = None, None, []
        start, end = value[0], value[0] + value[1]
        here = f"{where}: layer #{len(layers) + 1}"
        for n, w, v in fields(buf, start, end, here):
            if n == name_field and w == _LENGTH:
                name = _string(buf, v, here)
            elif n == type_field:
                if v1 and w == _VARINT:
                    kind = _V1_TYPES.get(v, f"V1:{v}")
                elif not v1 and w == _LENGTH:
                    kind = _string(buf, v, here)
            elif n == blobs_field and w == _LENGTH:
                blob_spans.append(v)
        here = f"{where}: layer {name!r}" if name is not None else here
        blobs = [parse_blob(buf, s, s + size, f"{here} blob {i}")
                 for i, (s, size) in enumerate(blob_spans)]
        layers.append((name, kind, blobs))
    return layers


# --- to the project's layout --------------------------------------------------------------

def to_params(layers, where="caffemodel"):
    """[(name, type, blobs)] -> {name: {'weight', 'bias'}} in the classifier's shapes.

    See the table in the module docstring. Layers without blobs are left out; a layer with
    blobs that is not a convolution / inner product, or without exactly weight and bias,
    raises CaffemodelError.
    """
    params = {}
    for name, kind, blobs in layers:
        if not blobs:
            continue
        here = f"{where}: layer {name!r} ({kind})"
        if not name:
            raise CaffemodelError(f"{here}: a layer with blobs has no name")
        if kind not in ("Convolution", "InnerProduct"):
            raise CaffemodelError(f"{here}: has {len(blobs)} blobs, but only Convolution "
                                  "and InnerProduct weights can be converted")
        if len(blobs) != 2:
            raise CaffemodelError(f"{here}: has {len(blobs)} blobs, expected 2 "
                                  "(weight and bias)")
        weight, bias = blobs
        out_name = name
        if kind == "InnerProduct":
            # V1 files store (1, 1, out, in); current files (out, in)
            if weight.ndim < 2 or any(d != 1 for d in weight.shape[:-2]):
                raise CaffemodelError(f"{here}: weight shape {weight.shape}, expected "
                                      "(out, in) or (1, 1, out, in)")
            weight = weight.reshape(weight.shape[-2:])
        else:
            if weight.ndim != 4:
                raise CaffemodelError(f"{here}: weight shape {weight.shape}, expected "
                                      "(K, C, kh, kw)")
            if name.endswith("-conv"):   # fully convolutional twin of an fc layer
                out_name = name[:-len("-conv")]
                weight = weight.reshape(weight.shape[0], -1)
        if bias.size != weight.shape[0]:
            raise CaffemodelError(f"{here}: bias has {bias.size} values, expected "
                                  f"{weight.shape[0]} (one per output)")
        if out_name in params:
            raise CaffemodelError(f"{here}: a second layer is written as {out_name!r}")
        params[out_name] = {"weight": np.ascontiguousarray(weight),
                            "bias": bias.reshape(-1).copy()}
    if not params:
        raise CaffemodelError(f"{where}: no layer with weights found (is it a .caffemodel?)")
    return params


def default_class_names(num_classes):
    """['negative', 'positive'] for 2 classes (the Twitter labels), else class0, class1..."""
    if num_classes == 2:
        return ["negative", "positive"]
    return [f"class{i}" for i in range(num_classes)]


def convert(in_path, out_path, num_classes=None, class_names=None):
    """Read `in_path` (.caffemodel) and write `out_path` (HDF5). Returns the params dict.

    num_classes defaults to the output count of the last layer and must match it;
    class_names defaults to `default_class_names(num_classes)`.
    """
    from nn.preprocess import CROP, MEAN_BGR
    from nn.weights import save_weights

    in_path = os.fspath(in_path)
    try:
        with open(in_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CaffemodelError(f"{in_path}: cannot read: {e.strerror}") from None
    params = to_params(parse_layers(data, in_path), in_path)
    last = list(params)[-1]
    outputs = params[last]["weight"].shape[0]
    if num_classes is None:
        num_classes = len(class_names) if class_names else outputs
    if num_classes != outputs:
        raise CaffemodelError(f"{in_path}: last layer {last!r} has {outputs} outputs, "
                              f"but num_classes is {num_classes}")
    class_names = list(class_names) if class_names else default_class_names(num_classes)
    if len(class_names) != num_classes:
        raise CaffemodelError(f"{in_path}: {len(class_names)} class names given for "
                              f"{num_classes} classes")
    try:
        save_weights(out_path, params, architecture="CaffeNet", num_classes=int(num_classes),
                     class_names=class_names, input_size=CROP, mean_bgr=list(MEAN_BGR),
                     layer_order=list(params))
    except OSError as e:   # a folder that cannot be created or written, a full disk
        reason = e.strerror or str(e)
        raise CaffemodelError(f"{os.fspath(out_path)}: cannot write: {reason}") from None
    return params


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tools.convert_caffemodel",
        description="Convert a Caffe .caffemodel to the project's HDF5 weights (no Caffe "
                    "needed).")
    parser.add_argument("input", help="the .caffemodel file")
    parser.add_argument("output", help="the HDF5 file to write (atomically)")
    parser.add_argument("--num-classes", type=int,
                        help="expected outputs of the last layer (default: read from it)")
    parser.add_argument("--class-names",
                        help="comma-separated class names (default: negative,positive for "
                             "2 classes, else class0,class1,...)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    try:
        params = convert(args.input, args.output, args.num_classes, names)
    except CaffemodelError as e:
        print(f"tools.convert_caffemodel: error: {e}", file=sys.stderr)
        return 1
    for layer, blobs in params.items():
        print(f"{layer:14s} weight {str(blobs['weight'].shape):22s} bias "
              f"{blobs['bias'].shape}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
