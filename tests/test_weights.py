"""nn/weights.py: HDF5 round trip, atomic writes and clear errors on malformed files."""
import os

import h5py
import numpy as np
import pytest

from nn.weights import MEAN_BGR, WeightsError, load_weights, save_weights


def _params(seed=0):
    """Two small layers with odd shapes and random, nonzero values."""
    rng = np.random.default_rng(seed)
    return {
        "conv1": {"weight": rng.standard_normal((5, 3, 3, 3)).astype(np.float32),
                  "bias": rng.standard_normal(5).astype(np.float32)},
        "fc8_twitter": {"weight": rng.standard_normal((2, 7)).astype(np.float32),
                        "bias": rng.standard_normal(2).astype(np.float32)},
    }


def test_round_trip_values_and_attrs(tmp_path):
    path = tmp_path / "w.h5"
    params = _params()
    save_weights(path, params, architecture="CaffeNet", num_classes=2,
                 class_names=["negative", "positive"], input_size=227,
                 mean_bgr=list(MEAN_BGR))
    loaded, attrs = load_weights(path)
    assert list(loaded) == ["conv1", "fc8_twitter"]
    for layer, blobs in params.items():
        for blob, arr in blobs.items():
            assert loaded[layer][blob].dtype == np.float32
            np.testing.assert_array_equal(loaded[layer][blob], arr)
    assert attrs["architecture"] == "CaffeNet"
    assert attrs["num_classes"] == 2
    assert attrs["class_names"] == ["negative", "positive"]
    assert attrs["input_size"] == 227
    np.testing.assert_allclose(attrs["mean_bgr"], [104.0070, 116.6688, 122.6789])
    assert attrs["layer_order"] == ["conv1", "fc8_twitter"]
    # No temporary file is left next to the target.
    assert os.listdir(tmp_path) == ["w.h5"]


def test_layer_order_attr_orders_the_result(tmp_path):
    path = tmp_path / "w.h5"
    save_weights(path, _params(), layer_order=["fc8_twitter", "conv1"])
    loaded, _ = load_weights(path)
    assert list(loaded) == ["fc8_twitter", "conv1"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.h5"
    save_weights(path, _params(0))
    bad = _params(1)
    bad["conv1"]["weight"] = np.array(["not", "numbers"])  # cannot become float32
    with pytest.raises(ValueError):
        save_weights(path, bad)
    loaded, _ = load_weights(path)
    np.testing.assert_array_equal(loaded["conv1"]["weight"], _params(0)["conv1"]["weight"])
    assert os.listdir(tmp_path) == ["w.h5"]


def test_save_rejects_malformed_params(tmp_path):
    with pytest.raises(WeightsError, match="conv1.*'weight' and 'bias'"):
        save_weights(tmp_path / "w.h5", {"conv1": {"weight": np.ones(3)}})
    assert not os.listdir(tmp_path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(WeightsError, match="nope.h5.*no such"):
        load_weights(path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "fake.h5"
    path.write_bytes(b"this is not HDF5 at all")
    with pytest.raises(WeightsError, match="fake.h5.*not an HDF5"):
        load_weights(path)


def _raw_file(path, datasets):
    """Write {hdf5 path: array} by hand, bypassing save_weights' checks."""
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
    return path


@pytest.mark.parametrize("datasets, message", [
    ({"conv1/weight": np.ones((2, 3), np.float32)}, r"w.h5: layer 'conv1' has no 'bias'"),
    ({"fc6/weight": np.ones((2, 3), np.int32), "fc6/bias": np.ones(2, np.float32)},
     r"w.h5: layer 'fc6' weight has dtype int32"),
    ({"conv1": np.ones(3, np.float32)}, r"w.h5: 'conv1' is not a layer group"),
])
def test_malformed_file_names_file_and_layer(tmp_path, datasets, message):
    with pytest.raises(WeightsError, match=message):
        load_weights(_raw_file(tmp_path / "w.h5", datasets))


def _with_raw_attrs(path, **attrs):
    """A weight file whose root attributes `attrs` were set through h5py directly, as
    another writer might (save_weights refuses contradictory ones)."""
    save_weights(path, _params())
    with h5py.File(path, "a") as f:
        for key, value in attrs.items():
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                f.attrs.create(key, value, dtype=h5py.string_dtype("utf-8"))
            else:
                f.attrs[key] = value


def test_layer_order_naming_a_missing_group(tmp_path):
    path = tmp_path / "w.h5"
    _with_raw_attrs(path, layer_order=["conv1", "fc8_twitter", "fc9"])
    with pytest.raises(WeightsError, match="'fc9'"):
        load_weights(path)


def test_damaged_file_names_the_file(tmp_path):
    path = tmp_path / "cut.h5"
    save_weights(path, _params())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # the HDF5 signature survives, the rest not
    with pytest.raises(WeightsError, match="cut.h5: cannot be read as HDF5"):
        load_weights(path)
    with pytest.raises(WeightsError, match="is a directory"):
        load_weights(tmp_path)


@pytest.mark.parametrize("attrs, message", [
    (dict(num_classes=3), r"last layer 'fc8_twitter' has bias shape \(2,\) but the file says "
                          r"num_classes=3"),
    (dict(num_classes=2, class_names=["only one"]), r"1 class_names .* for num_classes=2"),
    # too many names is as contradictory as too few
    (dict(num_classes=2, class_names=["a", "b", "c"]), r"3 class_names \['a', 'b', 'c'\] "
                                                       r"for num_classes=2"),
    (dict(num_classes=2.5), "num_classes must be a positive integer"),
    (dict(input_size=0), "input_size must be a positive integer"),
    (dict(mean_bgr=[104.0, 117.0]), "mean_bgr must be 3 numbers"),
    (dict(num_classes=True), "num_classes must be a positive integer"),
    (dict(mean_bgr=["104", "117", "123"]), "mean_bgr must be 3 numbers"),
])
def test_contradictory_root_attributes(tmp_path, attrs, message):
    """Refused when saving (a file written must read back), and when loading a file
    written otherwise."""
    path = tmp_path / "w.h5"
    message = "w.h5: (root attribute )?" + message
    with pytest.raises(WeightsError, match=message):
        save_weights(path, _params(), **attrs)
    assert not os.listdir(tmp_path)
    _with_raw_attrs(path, **attrs)
    with pytest.raises(WeightsError, match=message):
        load_weights(path)


def test_extra_group_outside_layer_order_loads(tmp_path):
    # a group that layer_order does not list comes last, but num_classes is checked
    # against layer_order's last layer, not against whatever group happens to be last
    path = tmp_path / "w.h5"
    params = _params()
    params["aux"] = {"weight": np.ones((5, 2), np.float32), "bias": np.zeros(5, np.float32)}
    save_weights(path, params, num_classes=2, class_names=["negative", "positive"],
                 layer_order=["conv1", "fc8_twitter"])
    loaded, attrs = load_weights(path)
    assert list(loaded) == ["conv1", "fc8_twitter", "aux"]
    assert attrs["num_classes"] == 2
    np.testing.assert_array_equal(loaded["aux"]["bias"], np.zeros(5, np.float32))


def test_string_list_attribute_must_be_a_list(tmp_path):
    with pytest.raises(WeightsError, match="class_names must be a list of strings"):
        save_weights(tmp_path / "w.h5", _params(), class_names="negative")
    assert not os.listdir(tmp_path)


def test_save_rejects_extra_blobs_and_empty_params(tmp_path):
    params = _params()
    params["conv1"]["mean"] = np.zeros(5, np.float32)   # would be dropped silently
    with pytest.raises(WeightsError, match="conv1.*exactly 'weight' and 'bias'"):
        save_weights(tmp_path / "w.h5", params)
    with pytest.raises(WeightsError, match="non-empty dict"):
        save_weights(tmp_path / "w.h5", {})
    assert not os.listdir(tmp_path)


def test_layer_order_defaults_to_the_params_order(tmp_path):
    # not alphabetical: num_classes is checked against the last layer of that order
    path = tmp_path / "w.h5"
    params = _params()
    reordered = {"fc8_twitter": params["fc8_twitter"], "conv1": params["conv1"]}
    save_weights(path, reordered, num_classes=5)
    loaded, attrs = load_weights(path)
    assert list(loaded) == attrs["layer_order"] == ["fc8_twitter", "conv1"]
    np.testing.assert_array_equal(loaded["conv1"]["bias"], params["conv1"]["bias"])


def test_save_refuses_a_file_it_could_not_read_back(tmp_path):
    with pytest.raises(WeightsError, match="layer_order names 'fc9', which is not among"):
        save_weights(tmp_path / "w.h5", _params(), layer_order=["conv1", "fc9"])
    with pytest.raises(WeightsError, match=r"num_classes=3"):
        save_weights(tmp_path / "w.h5", _params(), num_classes=3)   # the last bias has 2
    assert not os.listdir(tmp_path)


def test_attributes_given_as_none_are_left_out(tmp_path):
    path = tmp_path / "w.h5"
    save_weights(path, _params(), num_classes=None, class_names=None, architecture="CaffeNet")
    _, attrs = load_weights(path)
    assert sorted(attrs) == ["architecture", "layer_order"]
