"""nn/caffenet.py: CaffeNet's structure, init, forward/backward, fully-conv variant, weight I/O.

The real CaffeNet (61M parameters) is too big for finite differences, so the whole-network
gradient check runs on a tiny net built from the same layer types via `spec`.
"""
import logging

import numpy as np
import pytest

from nn import reference as ref
from nn.caffenet import DEFAULT_MULT, FRESH_LAST_MULT, CaffeNet, caffenet_spec
from nn.weights import MEAN_BGR, WeightsError, load_weights, save_weights
from tests.gradcheck import check_gradients

# Caffe's bvlc_reference_caffenet blob shapes (weight) for a 1000-class last layer.
CAFFENET_SHAPES = {
    "conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
    "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3), "fc6": (4096, 9216),
    "fc7": (4096, 4096), "fc8": (1000, 4096),
}
TINY_SIZE = 13


def tiny_spec(last_layer="fc8", num_classes=3):
    """Every CaffeNet layer type at toy size: conv with stride and pad, pool (the second
    with a clipped window: 3 -> 2), LRN with a large alpha, grouped conv, fc + dropout."""
    return [
        dict(type="conv", name="conv1", num_output=4, kernel=3, stride=2, pad=1, relu=True,
             std=0.5, bias_fill=0.1),                                    # 13 -> 7
        dict(type="pool", name="pool1", kernel=3, stride=2),             # 7 -> 3
        dict(type="lrn", name="norm1", local_size=3, alpha=2.0, beta=0.75, k=1.0),
        dict(type="conv", name="conv2", num_output=6, kernel=3, pad=1, group=2, relu=True,
             std=0.5, bias_fill=0.1),                                    # 3 -> 3
        dict(type="pool", name="pool2", kernel=2, stride=2),             # 3 -> 2 (clipped)
        dict(type="fc", name="fc6", num_output=5, relu=True, std=0.5, bias_fill=0.1),
        dict(type="dropout", name="drop6", ratio=0.4),
        dict(type="fc", name=last_layer, num_output=num_classes, relu=False, std=0.5,
             bias_fill=0.0),
    ]


def tiny_net(seed=0, dtype=np.float32, fully_conv=False, **kwargs):
    spec = tiny_spec(**kwargs)
    return CaffeNet(spec=spec, input_size=TINY_SIZE, device="cpu", seed=seed, dtype=dtype,
                    fully_conv=fully_conv)


def random_input(n, size, dtype=np.float32, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(dtype)


@pytest.fixture(scope="module")
def caffenet():
    """One full-size 1000-class CaffeNet with Caffe's init (building it takes ~1 s)."""
    return CaffeNet(device="cpu", seed=3)


# ------------------------------------------------------------------ structure and init
def test_layer_names_and_blob_shapes(caffenet):
    assert [layer["name"] for layer in caffenet.spec] == [
        "conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4", "conv5",
        "pool5", "fc6", "drop6", "fc7", "drop7", "fc8"]
    assert caffenet.param_layers == list(CAFFENET_SHAPES)
    for name, shape in CAFFENET_SHAPES.items():
        assert caffenet.params[name]["weight"].shape == shape
        assert caffenet.params[name]["bias"].shape == shape[:1]
        assert caffenet.params[name]["weight"].dtype == np.float32


def test_caffe_init_statistics(caffenet):
    std = {"conv1": 0.01, "conv2": 0.01, "conv3": 0.01, "conv4": 0.01, "conv5": 0.01,
           "fc6": 0.005, "fc7": 0.005, "fc8": 0.01}
    bias = {"conv1": 0, "conv2": 1, "conv3": 0, "conv4": 1, "conv5": 1, "fc6": 1, "fc7": 1,
            "fc8": 0}
    for name in CAFFENET_SHAPES:
        w = caffenet.params[name]["weight"]
        # >= 34848 samples: the sample std is within ~1% of the true one.
        assert abs(w.std() / std[name] - 1) < 0.03, name
        assert abs(w.mean()) < 0.05 * std[name], name
        np.testing.assert_array_equal(caffenet.params[name]["bias"], bias[name])


def test_xavier_init_statistics():
    net = CaffeNet(spec=tiny_spec(), input_size=TINY_SIZE, device="cpu", seed=2, init="xavier")
    for name in net.param_layers:
        w = net.to_numpy_params()[name]["weight"]
        fan_in = np.prod(w.shape[1:])
        bound = np.sqrt(3.0 / fan_in)       # Caffe's xavier: U(-a, a), a = sqrt(3 / fan_in)
        assert np.abs(w).max() <= bound * (1 + 1e-6), name
        assert np.abs(w).max() > 0.9 * bound, name
        if w.size >= 500:                    # std of U(-a, a) is a / sqrt(3) = 1 / sqrt(fan_in)
            assert abs(w.std() * np.sqrt(fan_in) - 1) < 0.1, name
        np.testing.assert_array_equal(net.to_numpy_params()[name]["bias"], 0)


def test_init_is_seeded_per_layer():
    a = tiny_net(seed=5)
    b = tiny_net(seed=5, last_layer="fc8_twitter", num_classes=2)
    c = tiny_net(seed=6)
    for name in ("conv1", "conv2", "fc6"):
        np.testing.assert_array_equal(a.params[name]["weight"], b.params[name]["weight"])
        assert not np.array_equal(a.params[name]["weight"], c.params[name]["weight"])


def test_param_multipliers():
    plain = CaffeNet(device="cpu", init="zeros")
    assert plain.param_multipliers() == {
        name: {"weight": (1.0, 1.0), "bias": (2.0, 0.0)} for name in CAFFENET_SHAPES}
    twitter = CaffeNet(num_classes=2, last_layer="fc8_twitter", device="cpu", init="zeros")
    mults = twitter.param_multipliers()
    assert mults["fc8_twitter"] == {"weight": (10.0, 1.0), "bias": (20.0, 0.0)}
    assert mults["fc7"] == {"weight": DEFAULT_MULT[0], "bias": DEFAULT_MULT[1]}
    twitter.set_param_multipliers("conv1", weight=(0, 0), bias=(0, 0))
    assert twitter.param_multipliers()["conv1"] == {"weight": (0.0, 0.0), "bias": (0.0, 0.0)}
    assert FRESH_LAST_MULT == ((10.0, 1.0), (20.0, 0.0))
    with pytest.raises(KeyError, match="pool1"):
        twitter.set_param_multipliers("pool1", weight=(1, 1))


# ------------------------------------------------------------------------- forward
def test_forward_matches_caffenet_prototxt_by_hand(caffenet):
    """The net against the layer sequence written out from bvlc_reference_caffenet's
    deploy.prototxt (pool before norm), calling the reference layers directly."""
    x = random_input(1, 227) * 50
    p = {name: (b["weight"], b["bias"]) for name, b in caffenet.params.items()}
    h = ref.conv_forward(x, *p["conv1"], stride=4, relu=True)[0]
    h = ref.lrn_forward(ref.max_pool_forward(h, 3, 2)[0], 5, 1e-4, 0.75)[0]
    h = ref.conv_forward(h, *p["conv2"], pad=2, group=2, relu=True)[0]
    h = ref.lrn_forward(ref.max_pool_forward(h, 3, 2)[0], 5, 1e-4, 0.75)[0]
    h = ref.conv_forward(h, *p["conv3"], pad=1, relu=True)[0]
    h = ref.conv_forward(h, *p["conv4"], pad=1, group=2, relu=True)[0]
    h = ref.conv_forward(h, *p["conv5"], pad=1, group=2, relu=True)[0]
    h = ref.max_pool_forward(h, 3, 2)[0]
    assert h.shape == (1, 256, 6, 6)
    h = ref.inner_product_forward(h, *p["fc6"], relu=True)[0]
    h = ref.inner_product_forward(h, *p["fc7"], relu=True)[0]
    expected = ref.inner_product_forward(h, *p["fc8"])[0]
    scores = caffenet.forward(x)
    assert scores.shape == (1, 1000)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    probs = caffenet.predict(x)
    np.testing.assert_allclose(probs, ref.softmax(expected.astype(np.float64)), rtol=1e-4)


def test_fully_conv_equals_classifier_at_227_and_maps_at_451(caffenet):
    fc = CaffeNet(device="cpu", fully_conv=True, init="zeros")
    report = fc.load_params(caffenet.to_numpy_params())  # classifier blob shapes -> 4-D
    assert report["fresh"] == [] and report["copied"] == list(CAFFENET_SHAPES)
    assert fc.params["fc6"]["weight"].shape == (4096, 256, 6, 6)
    assert fc.params["fc7"]["weight"].shape == (4096, 4096, 1, 1)
    assert fc.params["fc8"]["weight"].shape == (1000, 4096, 1, 1)
    x = random_input(2, 227, seed=4) * 50
    expected = caffenet.forward(x)
    scores = fc.forward(x)
    assert scores.shape == (2, 1000, 1, 1)
    np.testing.assert_allclose(scores[:, :, 0, 0], expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    big = fc.predict(random_input(1, 451, seed=5) * 50)
    assert big.shape == (1, 1000, 8, 8)
    np.testing.assert_allclose(big.sum(axis=1), 1.0, rtol=1e-5)
    assert np.ptp(big[0, 0]) > 0  # the map varies with position


def test_fully_conv_tiny_map_size_by_hand():
    net = tiny_net(fully_conv=True)
    # 21: conv1 (21+2-3)//2+1 = 11, pool1 ceil(8/2)+1 = 5, conv2 5, pool2 ceil(3/2)+1 = 3,
    # fc6 as a 2x2 convolution -> 2.
    assert net.forward(random_input(1, 21)).shape == (1, 3, 2, 2)


def test_forward_without_caches_is_the_same_forward():
    # for_backward=False (predict) skips pooling's argmax and keeps no caches: the same
    # scores, and backward then says why it cannot run.
    net = tiny_net()
    x = random_input(2, TINY_SIZE, seed=3)
    scores = net.forward(x)
    np.testing.assert_array_equal(net.forward(x, for_backward=False), scores)
    with pytest.raises(RuntimeError, match="for_backward=True"):
        net.backward(np.ones_like(scores))


def test_adopt_routing_takes_the_other_nets_masks_and_argmaxes():
    net32 = tiny_net()
    net64 = tiny_net(dtype=np.float64)
    net64.load_params(net32.to_numpy_params(), strict=True)
    x, labels = random_input(2, TINY_SIZE), np.array([0, 2])
    _, grads, _ = net64.loss_and_grads(x.astype(np.float64), labels)
    net64.dropout_iter = 0                       # the same dropout masks again
    net32.forward_loss(x, labels)
    _, dscores, _ = net64.forward_loss(x.astype(np.float64), labels)
    changes = net64.adopt_routing(net32)
    assert changes == {"conv1": (0, 2 * 4 * 7 * 7), "pool1": (0, 2 * 4 * 3 * 3),
                       "conv2": (0, 2 * 6 * 3 * 3), "pool2": (0, 2 * 6 * 2 * 2),
                       "fc6": (0, 2 * 5)}
    routed = net64.backward(dscores)             # the same routes: the same gradients
    for name in grads:
        np.testing.assert_array_equal(routed[name]["weight"], grads[name]["weight"])
    # One ReLU output and one argmax of the other net changed: adopted and counted.
    y2 = net32._caches[3]["y"]
    y2.flat[np.flatnonzero(y2 > 0)[0]] = 0
    argmax = net32._caches[1]["argmax"]
    argmax.flat[0] = (argmax.flat[0] + 1) % (7 * 7)
    changes = net64.adopt_routing(net32)
    assert changes["conv2"][0] == 1 and changes["pool1"][0] == 1
    assert sum(c for c, _ in changes.values()) == 2
    rerouted = net64.backward(dscores)
    assert not np.allclose(rerouted["conv2"]["weight"], grads["conv2"]["weight"])
    assert not np.allclose(rerouted["conv1"]["weight"], grads["conv1"]["weight"])
    np.testing.assert_array_equal(rerouted["fc6"]["weight"], grads["fc6"]["weight"])


def test_adopt_routing_of_a_stand_alone_relu_and_of_pooling_alone():
    # conv1 without its fused ReLU, then a ReLU layer (whose cache is its output).
    spec = tiny_spec()
    spec[0] = dict(spec[0], relu=False)
    spec.insert(1, dict(type="relu", name="relu1"))
    nets = [CaffeNet(spec=spec, input_size=TINY_SIZE, device="cpu", seed=0, dtype=dtype)
            for dtype in (np.float32, np.float64)]
    nets[1].load_params(nets[0].to_numpy_params(), strict=True)
    x, labels = random_input(2, TINY_SIZE), np.array([0, 2])
    other, net = nets
    other.forward_loss(x, labels)
    _, dscores, _ = net.forward_loss(x.astype(np.float64), labels)
    assert net.adopt_routing(other) == {"relu1": (0, 2 * 4 * 7 * 7), "pool1": (0, 2 * 4 * 3 * 3),
                                        "conv2": (0, 2 * 6 * 3 * 3),
                                        "pool2": (0, 2 * 6 * 2 * 2), "fc6": (0, 2 * 5)}
    before = net.backward(dscores)
    relu_out = other._caches[1]
    relu_out.flat[np.flatnonzero(relu_out > 0)[0]] = 0
    assert net.adopt_routing(other)["relu1"][0] == 1
    np.testing.assert_array_equal(net._caches[1], relu_out)
    # Only an argmax of pool2 changed: the gradients below it move, fc6's do not.
    net.adopt_routing(other)
    argmax = other._caches[5]["argmax"]
    argmax.flat[0] = 1 - argmax.flat[0] if argmax.flat[0] in (0, 1) else 0
    changes = net.adopt_routing(other)
    assert changes["pool2"][0] == 1 and sum(c for c, _ in changes.values()) == 1
    after = net.backward(dscores)
    assert not np.allclose(after["conv2"]["weight"], before["conv2"]["weight"])
    np.testing.assert_array_equal(after["fc6"]["weight"], before["fc6"]["weight"])


def test_adopt_routing_needs_the_same_net_on_the_same_input():
    a, b = tiny_net(), tiny_net()
    with pytest.raises(RuntimeError, match="needs a forward"):
        a.adopt_routing(b)
    a.forward(random_input(2, TINY_SIZE))
    b.forward(random_input(3, TINY_SIZE))
    with pytest.raises(ValueError, match=r"conv1's routes have shape \(3, 4, 7, 7\) in the "
                                         r"other net, \(2, 4, 7, 7\) here"):
        a.adopt_routing(b)
    c = tiny_net(fully_conv=True)
    c.forward(random_input(2, TINY_SIZE))
    with pytest.raises(ValueError, match="same layers .* fully_conv"):
        a.adopt_routing(c)


def test_dropout_masks_fresh_per_iteration_and_reproducible():
    net = tiny_net()
    x = random_input(2, TINY_SIZE)
    test_scores = net.forward(x)
    assert net.dropout_iter == 0  # test mode does not count
    first = net.forward(x, train=True)
    second = net.forward(x, train=True)
    assert net.dropout_iter == 2
    assert not np.allclose(first, test_scores)  # dropout acted
    assert not np.allclose(first, second)  # a fresh mask each iteration
    net.dropout_iter = 1
    np.testing.assert_array_equal(net.forward(x, train=True), second)
    other_seed = CaffeNet(spec=tiny_spec(), input_size=TINY_SIZE, device="cpu",
                          dropout_seed=1)
    other_seed.dropout_iter = 1
    assert not np.allclose(other_seed.forward(x, train=True), second)


def test_loss_matches_softmax_of_scores():
    net = tiny_net()
    x, labels = random_input(3, TINY_SIZE), np.array([2, 0, 1])
    loss, grads, scores = net.loss_and_grads(x, labels)
    s = scores.astype(np.float64)
    logp = s - s.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-logp[np.arange(3), labels].mean(), rel=1e-5)
    assert list(grads) == net.param_layers
    for name, blobs in grads.items():
        assert blobs["weight"].shape == net.params[name]["weight"].shape
        assert blobs["bias"].shape == net.params[name]["bias"].shape


# --------------------------------------------------------------- whole-net gradients
@pytest.mark.parametrize("fully_conv", [False, True])
def test_whole_network_gradient_float64(fully_conv):
    """Central differences of the train-mode loss (dropout with a fixed mask) w.r.t.
    random entries of every weight and bias."""
    net = tiny_net(seed=2, dtype=np.float64, fully_conv=fully_conv)
    x = random_input(2, TINY_SIZE, np.float64, seed=7)
    labels = np.array([1, 2])

    def loss():
        net.dropout_iter = 0  # the same dropout mask for every evaluation
        scores = net.forward(x, train=True).reshape(2, -1)
        return ref.softmax_loss_forward(scores, labels)[0]

    net.dropout_iter = 0
    _, grads, _ = net.loss_and_grads(x, labels)
    arrays = {f"{n}/{b}": net.params[n][b] for n in net.param_layers for b in ("weight", "bias")}
    analytic = {f"{n}/{b}": grads[n][b] for n in net.param_layers for b in ("weight", "bias")}
    assert all(np.abs(g).max() > 0 for g in analytic.values())
    check_gradients(loss, arrays, analytic, max_checks=12, seed=3)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape, dtype", [
    ((1, 3, 226, 227), np.float32), ((1, 4, 13, 13), np.float32), ((3, 13, 13), np.float32),
    ((1, 3, 13, 13), np.float64)])
def test_bad_input_names_expected_shape(shape, dtype):
    net = tiny_net()
    with pytest.raises(ValueError, match=r"CaffeNet input: expected a float32 array of "
                                         r"shape \(N, 3, 13, 13\)"):
        net.forward(np.ones(shape, dtype))


def test_fully_conv_input_too_small():
    with pytest.raises(ValueError, match=r"\(N, 3, >=13, >=13\)"):
        tiny_net(fully_conv=True).forward(np.ones((1, 3, 12, 20), np.float32))


def test_bad_labels():
    net = tiny_net()
    x = random_input(2, TINY_SIZE)
    for labels in (np.array([0, 3]), np.array([0]), np.array([0.0, 1.0])):
        with pytest.raises(ValueError, match=r"labels: expected integers of shape \(2,\) "
                                             r"in \[0, 3\)"):
            net.loss_and_grads(x, labels)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="forward"):
        tiny_net().backward(np.ones((1, 3), np.float32))


def test_bad_spec_and_class_names():
    with pytest.raises(ValueError, match="unknown layer type"):
        CaffeNet(spec=[dict(type="softmax", name="s")], device="cpu")
    with pytest.raises(ValueError, match="used twice"):
        CaffeNet(spec=tiny_spec(last_layer="fc6"), input_size=TINY_SIZE, device="cpu")
    with pytest.raises(ValueError, match="2 class_names for 3 classes"):
        CaffeNet(spec=tiny_spec(), input_size=TINY_SIZE, device="cpu", class_names=["a", "b"])


# ---------------------------------------------------------------------- weight files
def test_save_load_round_trip(tmp_path):
    path = tmp_path / "tiny.h5"
    a = CaffeNet(spec=tiny_spec(), input_size=TINY_SIZE, device="cpu", seed=1,
                 class_names=["neg", "neu", "pos"])
    a.save(path)
    params, attrs = load_weights(path)
    assert attrs["architecture"] == "CaffeNet" and attrs["num_classes"] == 3
    assert attrs["class_names"] == ["neg", "neu", "pos"]
    assert attrs["input_size"] == TINY_SIZE and attrs["layer_order"] == a.param_layers
    np.testing.assert_allclose(attrs["mean_bgr"], MEAN_BGR)
    assert params["fc6"]["weight"].shape == (5, 24)  # Caffe's blob shape
    copy = a.to_numpy_params()
    copy["conv1"]["weight"][...] = 0  # a copy: the net is untouched
    assert np.abs(a.params["conv1"]["weight"]).min() > 0
    b = tiny_net(seed=2)
    assert not np.array_equal(a.params["conv1"]["weight"], b.params["conv1"]["weight"])
    report = b.load(path)
    assert report == {"copied": a.param_layers, "fresh": [], "ignored": []}
    assert b.class_names == ["neg", "neu", "pos"]
    for name in a.param_layers:
        for blob in ("weight", "bias"):
            np.testing.assert_array_equal(b.params[name][blob], a.params[name][blob])
    x = random_input(2, TINY_SIZE)
    np.testing.assert_array_equal(b.predict(x), a.predict(x))
    # The fully convolutional net reads the same file, reshaping fc6 to 4-D.
    fc = tiny_net(fully_conv=True)
    fc.load(path)
    np.testing.assert_array_equal(fc.params["fc6"]["weight"].reshape(5, 24),
                                  a.params["fc6"]["weight"])
    fc.save(tmp_path / "fc.h5")  # and writes Caffe's blob shapes back
    assert load_weights(tmp_path / "fc.h5")[0]["fc6"]["weight"].shape == (5, 24)


def test_load_wrong_shape_names_layer_and_both_shapes(tmp_path):
    path = tmp_path / "tiny.h5"
    tiny_net(num_classes=3).save(path)
    net = tiny_net(num_classes=2)
    before = net.to_numpy_params()
    with pytest.raises(WeightsError, match=r"tiny.h5: layer 'fc8' weight has shape \(3, 5\), "
                                           r"but the network expects \(2, 5\)"):
        net.load(path)
    # Nothing was copied before the error.
    np.testing.assert_array_equal(net.params["conv1"]["weight"], before["conv1"]["weight"])


def test_load_missing_layer_is_fresh(tmp_path):
    path = tmp_path / "partial.h5"
    source = tiny_net(seed=1).to_numpy_params()
    del source["fc6"]
    save_weights(path, source)
    net = tiny_net(seed=2)
    fresh_fc6 = net.params["fc6"]["weight"].copy()
    report = net.load(path)
    assert report["fresh"] == ["fc6"]
    np.testing.assert_array_equal(net.params["fc6"]["weight"], fresh_fc6)
    np.testing.assert_array_equal(net.params["conv2"]["weight"], source["conv2"]["weight"])
    with pytest.raises(WeightsError, match=r"strict load.*\['fc6'\]"):
        tiny_net().load(path, strict=True)


def test_renamed_last_layer_copies_the_rest(tmp_path, caplog):
    path = tmp_path / "imagenet_like.h5"
    imagenet = tiny_net(seed=1, last_layer="fc8", num_classes=3)
    imagenet.save(path)
    twitter = tiny_net(seed=2, last_layer="fc8_twitter", num_classes=2)
    fresh = twitter.params["fc8_twitter"]["weight"].copy()
    with caplog.at_level(logging.INFO, logger="nn.caffenet"):
        report = twitter.load(path)
    assert report == {"copied": ["conv1", "conv2", "fc6"], "fresh": ["fc8_twitter"],
                      "ignored": ["fc8"]}
    assert "fc8_twitter not found in" in caplog.text and "initialising fresh" in caplog.text
    assert "Copying conv1" in caplog.text
    np.testing.assert_array_equal(twitter.params["fc8_twitter"]["weight"], fresh)
    np.testing.assert_array_equal(twitter.params["fc6"]["weight"],
                                  imagenet.params["fc6"]["weight"])
    assert twitter.class_names is None  # the file's 3 names are not the new classes


def test_loaded_params_are_copies():
    """The solver updates params in place: it must never write into the caller's arrays."""
    source = tiny_net(seed=3).to_numpy_params()
    before = {name: {blob: a.copy() for blob, a in blobs.items()} for name, blobs in source.items()}
    net = tiny_net(seed=4)
    net.load_params(source)
    for blobs in net.params.values():
        for a in blobs.values():
            a += 1.0
    for name, blobs in source.items():
        for blob, a in blobs.items():
            np.testing.assert_array_equal(a, before[name][blob])


@pytest.mark.parametrize("attr, value, message", [
    ("architecture", "VGG16", r"architecture is 'VGG16', expected 'CaffeNet'"),
    ("input_size", 227, r"input_size is 227, this network's input is 13"),
    ("mean_bgr", [103.0, 116.6688, 122.6789], r"mean_bgr is \[103.0, .*preprocessing subtracts"),
])
def test_load_refuses_a_file_made_for_another_network(tmp_path, attr, value, message):
    """Root attributes say what a file is: a wrong one is an error, nothing is copied."""
    import h5py
    path = tmp_path / "tiny.h5"
    tiny_net(seed=1).save(path)
    with h5py.File(path, "a") as f:
        f.attrs[attr] = value
    net = tiny_net(seed=2)
    before = net.to_numpy_params()
    with pytest.raises(WeightsError, match="tiny.h5: root attribute " + message):
        net.load(path)
    np.testing.assert_array_equal(net.params["conv1"]["weight"], before["conv1"]["weight"])


def test_load_hand_written_file(tmp_path):
    """A file written with h5py by hand: float64 blobs become the net's float32, no root
    attributes are needed, and a missing dataset names the layer."""
    import h5py
    source = {name: {blob: a.astype(np.float64) + 0.25 for blob, a in blobs.items()}
              for name, blobs in tiny_net(seed=1).to_numpy_params().items()}
    path = tmp_path / "by_hand.h5"
    with h5py.File(path, "w") as f:
        for name, blobs in source.items():
            for blob, a in blobs.items():
                f.create_dataset(f"{name}/{blob}", data=a)
    net = tiny_net(seed=2)
    assert net.load(path)["copied"] == net.param_layers
    for name, blobs in source.items():
        for blob, a in blobs.items():
            assert net.params[name][blob].dtype == np.float32
            np.testing.assert_array_equal(net.params[name][blob], a.astype(np.float32))
    with h5py.File(path, "a") as f:
        del f["conv2/bias"]
    with pytest.raises(WeightsError, match=r"by_hand.h5: layer 'conv2' has no 'bias' dataset"):
        tiny_net().load(path)
