"""tools/convert_caffemodel.py against caffemodels built here with a tiny protobuf encoder,
in the V1 format (BVLC CaffeNet) and the current one, packed and unpacked floats."""
import os
import struct

import h5py
import numpy as np
import pytest

from tools import convert_caffemodel as cc


# --- a minimal protobuf encoder (independent of the decoder under test) ------------------

def varint(value):
    value &= (1 << 64) - 1          # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number, wire):
    return varint(number << 3 | wire)


def field_varint(number, value):
    return key(number, 0) + varint(value)


def field_bytes(number, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return key(number, 2) + varint(len(payload)) + payload


def blob(array, legacy=False, packed=True, double=False):
    """BlobProto: shape (new) or num/channels/height/width (legacy, padded to 4-D)."""
    array = np.asarray(array)
    out = b""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        for number, d in zip((1, 2, 3, 4), dims):
            out += field_varint(number, d)
    else:
        out += field_bytes(7, field_bytes(1, b"".join(varint(d) for d in array.shape)))
    flat = array.ravel()
    number, fmt, wire = (8, "<d", 1) if double else (5, "<f", 5)
    if packed:
        out += field_bytes(number, b"".join(struct.pack(fmt, v) for v in flat))
    else:
        out += b"".join(key(number, wire) + struct.pack(fmt, v) for v in flat)
    return out


def v1_layer(name, type_enum, blobs=(), extra=b""):
    body = field_bytes(4, name) + field_varint(5, type_enum) + extra
    return field_bytes(2, body + b"".join(field_bytes(6, b) for b in blobs))


def new_layer(name, type_name, blobs=(), extra=b""):
    body = field_bytes(1, name) + field_bytes(2, type_name) + extra
    return field_bytes(100, body + b"".join(field_bytes(7, b) for b in blobs))


def _rand(rng, *shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return {"conv1": (_rand(rng, 5, 3, 3, 3), _rand(rng, 5)),
            "fc6": (_rand(rng, 7, 45), _rand(rng, 7)),        # in = 5 * 3 * 3
            "fc8_twitter": (_rand(rng, 2, 7), _rand(rng, 2))}


def v1_model(w, packed=True):
    """Like BVLC CaffeNet: V1 layers, legacy 4-D blob shapes, layers without blobs."""
    return (field_bytes(1, "CaffeNet")
            + v1_layer("data", 5)
            + v1_layer("conv1", 4, [blob(w["conv1"][0], True, packed),
                                    blob(w["conv1"][1], True, packed)],
                       extra=field_bytes(2, "data") + field_bytes(3, "conv1"))
            + v1_layer("relu1", 18)
            + v1_layer("fc6", 14, [blob(w["fc6"][0], True, packed),
                                   blob(w["fc6"][1], True, packed)],
                       extra=key(7, 5) + struct.pack("<f", 1.0))   # blobs_lr, unpacked float
            + v1_layer("fc8_twitter", 14, [blob(w["fc8_twitter"][0], True, packed),
                                           blob(w["fc8_twitter"][1], True, packed)]))


def new_model(w, packed=True, conv_twin=False):
    """Current format: shape field; optionally the fully convolutional '-conv' twin."""
    fc6, fc8 = w["fc6"][0], w["fc8_twitter"][0]
    if conv_twin:
        layers = [("fc6-conv", "Convolution", fc6.reshape(7, 5, 3, 3)),
                  ("fc8_twitter-conv", "Convolution", fc8.reshape(2, 7, 1, 1))]
    else:
        layers = [("fc6", "InnerProduct", fc6), ("fc8_twitter", "InnerProduct", fc8)]
    out = field_bytes(1, "net") + new_layer("data", "Input") + new_layer(
        "conv1", "Convolution", [blob(w["conv1"][0], packed=packed),
                                 blob(w["conv1"][1], packed=packed)])
    out += new_layer("relu1", "ReLU", extra=field_bytes(3, "conv1") + field_bytes(4, "conv1"))
    bias = {"fc6": w["fc6"][1], "fc8_twitter": w["fc8_twitter"][1]}
    for name, kind, weight in layers:
        out += new_layer(name, kind, [blob(weight, packed=packed),
                                      blob(bias[name.replace("-conv", "")], packed=packed,
                                           double=not packed)])
    return out


def _check(params, w):
    assert list(params) == ["conv1", "fc6", "fc8_twitter"]
    for name, (weight, bias) in w.items():
        np.testing.assert_array_equal(params[name]["weight"], weight)
        np.testing.assert_array_equal(params[name]["bias"], bias)


@pytest.mark.parametrize("packed", [True, False])
def test_v1_model(weights, packed):
    layers = cc.parse_layers(v1_model(weights, packed))
    assert [(n, t, len(b)) for n, t, b in layers] == [
        ("data", "V1:5", 0), ("conv1", "Convolution", 2), ("relu1", "V1:18", 0),
        ("fc6", "InnerProduct", 2), ("fc8_twitter", "InnerProduct", 2)]
    assert layers[3][2][0].shape == (1, 1, 7, 45)         # legacy fc shape, reshaped later
    _check(cc.to_params(layers), weights)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("conv_twin", [False, True])
def test_new_model_and_conv_twin(weights, packed, conv_twin):
    _check(cc.to_params(cc.parse_layers(new_model(weights, packed, conv_twin))), weights)


def test_convert_writes_the_project_hdf5_layout(tmp_path, weights):
    src = tmp_path / "m.caffemodel"
    src.write_bytes(v1_model(weights))
    out = tmp_path / "m.h5"
    assert cc.main([str(src), str(out)]) == 0
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["conv1", "fc6", "fc8_twitter"]
        for name, (weight, bias) in weights.items():
            assert f[name]["weight"].dtype == np.float32
            np.testing.assert_array_equal(f[name]["weight"][()], weight)
            np.testing.assert_array_equal(f[name]["bias"][()], bias)
        assert f.attrs["architecture"] == "CaffeNet"
        assert f.attrs["num_classes"] == 2 and f.attrs["input_size"] == 227
        assert [s.decode() if isinstance(s, bytes) else s
                for s in f.attrs["class_names"]] == ["negative", "positive"]
        np.testing.assert_allclose(f.attrs["mean_bgr"], [104.0070, 116.6688, 122.6789])
    from nn.weights import load_weights
    params, attrs = load_weights(str(out))
    assert list(params) == attrs["layer_order"] == ["conv1", "fc6", "fc8_twitter"]


def test_class_options(tmp_path, weights, capsys):
    src = tmp_path / "m.caffemodel"
    src.write_bytes(new_model(weights))
    out = tmp_path / "m.h5"
    assert cc.main([str(src), str(out), "--class-names", "sad,happy"]) == 0
    from nn.weights import load_weights
    assert load_weights(str(out))[1]["class_names"] == ["sad", "happy"]
    assert cc.main([str(src), str(tmp_path / "x.h5"), "--num-classes", "3"]) == 1
    assert "has 2 outputs, but num_classes is 3" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def _top_level_ends(data):
    """Byte offsets where top-level fields end (cutting there leaves a valid message)."""
    ends, pos = {0}, 0
    for _, _, value in cc.fields(data, 0, len(data), "t"):
        pos = value[0] + value[1] if isinstance(value, tuple) else None
        ends.add(pos)
    return ends


def test_every_truncation_inside_a_layer_is_rejected(weights):
    data = v1_model(weights)
    boundaries = _top_level_ends(data)
    for cut in range(1, len(data)):
        if cut in boundaries:
            continue
        with pytest.raises(cc.CaffemodelError):
            cc.parse_layers(data[:cut], "cut")


@pytest.mark.parametrize("data,message", [
    (b"\xff" * 12, "varint longer than 10 bytes"),
    (b"\x80" * 10 + b"\x01", "varint longer than 10 bytes"),   # an 11th byte, however small
    (b"\x0a\x80", "truncated varint"),
    (b"\x0a\x05abc", "runs past the end"),
    (key(2, 3) + b"\x00", "unsupported wire type 3"),
    (key(1, 7) + b"\x00", "unsupported wire type 7"),
    (b"\x00\x01", "field number 0"),
    (b"", "no layer with weights"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "unsupported wire type 7"),   # a JPEG header
])
def test_corrupt_bytes_are_rejected(data, message):
    with pytest.raises(cc.CaffemodelError, match=message):
        cc.to_params(cc.parse_layers(data))


def test_blob_count_must_match_shape():
    shape = field_bytes(7, field_bytes(1, varint(2) + varint(3)))
    bad = shape + field_bytes(5, struct.pack("<5f", *[0.5] * 5))    # 5 values for (2, 3)
    with pytest.raises(cc.CaffemodelError, match=r"layer 'fc' blob 0: blob has 5 values "
                                                 r"but its shape \(2, 3\) needs 6"):
        cc.parse_layers(new_layer("fc", "InnerProduct", [bad, blob(np.ones(2))]))


@pytest.mark.parametrize("doubles_first", [False, True])
def test_double_data_wins_over_data(doubles_first):
    # Caffe's Blob::FromProto reads double_data whenever it has values, ignoring data
    rng = np.random.default_rng()
    doubles = _rand(rng, 2, 3).astype(np.float64)   # float32-exact, so comparable exactly
    floats = _rand(rng, 2, 3)
    shape = field_bytes(7, field_bytes(1, varint(2) + varint(3)))
    d = field_bytes(8, struct.pack("<6d", *doubles.ravel()))
    f = field_bytes(5, struct.pack("<6f", *floats.ravel()))
    both = shape + (d + f if doubles_first else f + d)
    (_, _, (weight, _)), = cc.parse_layers(new_layer("fc", "InnerProduct",
                                                     [both, blob(np.ones(2))]))
    assert weight.dtype == np.float32
    np.testing.assert_array_equal(weight, doubles)


def test_legacy_shape_missing_dims_are_zero():
    # caffe.proto's num/channels default to 0, so height 2, width 3 alone need 0 values
    legacy = field_varint(3, 2) + field_varint(4, 3)
    bad = legacy + field_bytes(5, struct.pack("<6f", *[0.5] * 6))
    with pytest.raises(cc.CaffemodelError, match=r"blob has 6 values but its shape "
                                                 r"\(0, 0, 2, 3\) needs 0"):
        cc.parse_layers(new_layer("fc", "InnerProduct", [bad, blob(np.ones(2))]))


def test_layer_errors_name_the_layer():
    rng = np.random.default_rng(1)
    one_blob = new_layer("fc7", "InnerProduct", [blob(_rand(rng, 3, 4))])
    with pytest.raises(cc.CaffemodelError, match="'fc7'.*has 1 blobs, expected 2"):
        cc.to_params(cc.parse_layers(one_blob))
    bn = new_layer("bn1", "BatchNorm", [blob(_rand(rng, 3)), blob(_rand(rng, 3))])
    with pytest.raises(cc.CaffemodelError, match="'bn1' \\(BatchNorm\\).*only Convolution"):
        cc.to_params(cc.parse_layers(bn))
    wrong_bias = new_layer("fc7", "InnerProduct", [blob(_rand(rng, 3, 4)), blob(_rand(rng, 4))])
    with pytest.raises(cc.CaffemodelError, match="bias has 4 values, expected 3"):
        cc.to_params(cc.parse_layers(wrong_bias))


def test_random_corruption_never_escapes_as_another_error(weights):
    data = bytearray(new_model(weights, conv_twin=True))
    rng = np.random.default_rng(2)
    for _ in range(300):
        broken = bytearray(data)
        for i in rng.integers(0, len(data), size=rng.integers(1, 4)):
            broken[i] = rng.integers(0, 256)
        try:
            cc.to_params(cc.parse_layers(bytes(broken)))
        except cc.CaffemodelError:
            pass


def test_missing_input_file(tmp_path, capsys):
    assert cc.main([str(tmp_path / "none.caffemodel"), str(tmp_path / "o.h5")]) == 1
    assert "none.caffemodel: cannot read" in capsys.readouterr().err


def test_unwritable_output_is_a_clean_error(tmp_path, weights, capsys):
    model = tmp_path / "m.caffemodel"
    model.write_bytes(v1_model(weights))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    out = blocker / "o.h5"
    assert cc.main([str(model), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tools.convert_caffemodel: error: {out}: cannot write: ")
    assert err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["blocker", "m.caffemodel"]   # nothing half-written


def test_unpacked_shape_dims_and_fixed_width_data():
    # BlobShape.dim and the data may each come unpacked, one field per value
    rng = np.random.default_rng()
    weight = _rand(rng, 3, 4)
    shape = field_bytes(7, field_varint(1, 3) + field_varint(1, 4))
    unpacked = shape + b"".join(key(5, 5) + struct.pack("<f", v) for v in weight.ravel())
    (_, _, (got, _)), = cc.parse_layers(new_layer("fc", "InnerProduct",
                                                  [unpacked, blob(np.ones(3))]))
    np.testing.assert_array_equal(got, weight)


@pytest.mark.parametrize("payload, message", [
    # packed floats whose byte count is not a multiple of 4
    (field_bytes(7, field_bytes(1, varint(2))) + field_bytes(5, b"\x00" * 6),
     "packed data of 6 bytes is not a multiple of 4"),
    # a double_data value written as fixed32
    (field_bytes(7, field_bytes(1, varint(1))) + key(8, 5) + struct.pack("<f", 1.0),
     "blob data with wire type 5, expected packed or fixed64"),
    # two negative dimensions whose product matches the data count
    (field_bytes(7, field_bytes(1, varint(-2) + varint(-3)))
     + field_bytes(5, struct.pack("<6f", *[0.5] * 6)), r"negative blob dimension in \(-2, -3\)"),
])
def test_malformed_blobs_are_rejected(payload, message):
    with pytest.raises(cc.CaffemodelError, match=message):
        cc.parse_layers(new_layer("fc", "InnerProduct", [payload, blob(np.ones(2))]))


def test_weight_shapes_are_checked():
    rng = np.random.default_rng()
    bias = blob(_rand(rng, 3))
    for layer, message in (
            # an InnerProduct weight with a leading dimension that is not 1
            (new_layer("fc7", "InnerProduct", [blob(_rand(rng, 2, 1, 3, 4)), bias]),
             r"'fc7'.*weight shape \(2, 1, 3, 4\), expected \(out, in\) or \(1, 1, out, in\)"),
            (new_layer("conv1", "Convolution", [blob(_rand(rng, 3, 4)), bias]),
             r"'conv1'.*weight shape \(3, 4\), expected \(K, C, kh, kw\)"),
            (new_layer("", "InnerProduct", [blob(_rand(rng, 3, 4)), bias]),
             "a layer with blobs has no name")):
        with pytest.raises(cc.CaffemodelError, match=message):
            cc.to_params(cc.parse_layers(layer))


def test_a_layer_and_its_conv_twin_are_not_both_written():
    # fc6 and fc6-conv would both become fc6: the second must not replace the first
    rng = np.random.default_rng()
    model = (new_layer("fc6", "InnerProduct", [blob(_rand(rng, 2, 3)), blob(_rand(rng, 2))])
             + new_layer("fc6-conv", "Convolution", [blob(_rand(rng, 2, 3, 1, 1)),
                                                     blob(_rand(rng, 2))]))
    with pytest.raises(cc.CaffemodelError, match="second layer is written as 'fc6'"):
        cc.to_params(cc.parse_layers(model))


def test_class_names_must_match_the_classes(tmp_path, weights, capsys):
    src = tmp_path / "m.caffemodel"
    src.write_bytes(new_model(weights))
    out = tmp_path / "m.h5"
    assert cc.main([str(src), str(out), "--num-classes", "2", "--class-names", "a,b,c"]) == 1
    assert "3 class names given for 2 classes" in capsys.readouterr().err
    assert not out.exists()


def test_too_few_bias_values_or_classes_are_rejected(tmp_path, weights, capsys):
    rng = np.random.default_rng()
    short_bias = new_layer("fc7", "InnerProduct", [blob(_rand(rng, 3, 4)), blob(_rand(rng, 2))])
    with pytest.raises(cc.CaffemodelError, match="bias has 2 values, expected 3"):
        cc.to_params(cc.parse_layers(short_bias))
    src = tmp_path / "m.caffemodel"
    src.write_bytes(new_model(weights))
    assert cc.main([str(src), str(tmp_path / "x.h5"), "--num-classes", "1"]) == 1
    assert "has 2 outputs, but num_classes is 1" in capsys.readouterr().err


def test_layers_are_written_in_file_order(tmp_path):
    # a classifier named so that it sorts first: the file's order is the network's
    rng = np.random.default_rng()
    w = {"fc6": (_rand(rng, 4, 3), _rand(rng, 4)), "classifier": (_rand(rng, 2, 4), _rand(rng, 2))}
    src = tmp_path / "m.caffemodel"
    src.write_bytes(b"".join(new_layer(n, "InnerProduct", [blob(a), blob(b)])
                             for n, (a, b) in w.items()))
    assert cc.main([str(src), str(tmp_path / "m.h5")]) == 0
    from nn.weights import load_weights
    params, attrs = load_weights(str(tmp_path / "m.h5"))
    assert list(params) == attrs["layer_order"] == ["fc6", "classifier"]
    assert attrs["num_classes"] == 2
    np.testing.assert_array_equal(params["classifier"]["weight"], w["classifier"][0])
