"""The whole CaffeNet through the CUDA kernels against the NumPy reference network.

One training iteration of the real network (227x227 input, fc8_twitter with 2 classes) on
a kernel device and on the reference: scores, loss, every layer's weight and bias gradient,
and one SGDSolver step (momentum, weight decay, lr/decay multipliers, iter_size). Also the
fully convolutional net at 227x227 against the classifier's scores, and the dropout masks
of a chosen (dropout_seed, dropout_iter).

    emu   the kernels on the CPU emulator, batch 2 (the emulator needs a few seconds per
          image, so this is the one end-to-end case CI runs; marked slow, yet it runs)
    cuda  the kernels on the GPU through CuPy, batch 64 (pytest -m gpu; skipped without)

The reference is the cpu net in float64 holding the very same float32 weights (the
init draws float32 numbers, so the copy is exact) and input, so it does not depend on
any float32 summation order. Its backward takes the device's ReLU masks and pooling
argmaxes (CaffeNet.adopt_routing), which must agree with its own but for near-ties, so that a
rounding-sized difference at a ReLU's kink or between two nearly equal maxima cannot move
a whole gradient term. Every comparison is elementwise with a tolerance scaled by
the blob's magnitude, |got - want| <= 1e-4 * (|want| + max |want|): float32 kernels land
near 1e-6, while a wrong index, a lost term or a wrong multiplier is far above 1e-4.
"""
import numpy as np
import pytest

from nn.caffenet import CaffeNet, caffenet_spec
from nn.solver import SGDSolver
from tests import kernel_testing

NUM_CLASSES, LAST_LAYER = 2, "fc8_twitter"
SEED = 2017
PIXEL_STD = 50.0    # input scale of mean-subtracted BGR pixels, so LRN's term matters
RTOL = 1e-4
# Solver settings chosen so that every term of the update is visible: the weight decay is
# far larger than a real one (0.5 * |w| is about the size of CaffeNet's weight gradients
# here), the history starts non-zero (momentum counts) and iter_size=2 halves the gradient.
SOLVER = dict(base_lr=0.01, momentum=0.9, weight_decay=0.5, lr_policy="fixed", iter_size=2)
# Dropout check: a seed and an iteration far from the defaults (0, 0) the nets start at.
DROPOUT_SEED, DROPOUT_ITER = 987654321, 4242

# (layer, blob) for every parameter blob of the network, for per-blob test ids.
PARAM_LAYERS = [layer["name"] for layer in caffenet_spec(NUM_CLASSES, LAST_LAYER)
                if layer["type"] in ("conv", "fc")]
BLOBS = [(layer, blob) for layer in PARAM_LAYERS for blob in ("weight", "bias")]

# device -> batch of the end-to-end case; the marks say which run includes it.
DEVICES = [pytest.param(("emu", 2), marks=pytest.mark.slow, id="emu"),
           pytest.param(("cuda", 64), marks=pytest.mark.gpu, id="cuda")]
# The fully convolutional and dropout checks use the first images of that batch only
# (each costs extra forwards; on the emulator that is the whole batch of 2).
FEW_IMAGES = 8


def assert_close(got, want, name):
    """float32 result against the float64 reference, tolerance scaled by want's magnitude."""
    kernel_testing.assert_close(got, want, name, rtol=RTOL)


def copy_params(params):
    """A deep copy of {layer: {blob: ndarray}} (the emulator's device arrays would alias
    the arrays they are given, and the solver updates them in place)."""
    return {layer: {blob: np.array(a) for blob, a in blobs.items()}
            for layer, blobs in params.items()}


def host_weights(net):
    """The net's weights as float32 NumPy arrays ({layer: {blob: ndarray}})."""
    return {layer: {blob: a.astype(np.float32) for blob, a in blobs.items()}
            for layer, blobs in net.to_numpy_params().items()}


def make_net(device, weights, fully_conv=False, dtype=np.float32):
    """A net on `device` holding exactly `weights` (float32; a float64 net holds the same
    numbers, converted exactly)."""
    net = CaffeNet(NUM_CLASSES, LAST_LAYER, device=device, fully_conv=fully_conv,
                   init="zeros", dtype=dtype)
    net.load_params(copy_params(weights), strict=True, source="test weights")
    return net


def reference_net(weights):
    """The float64 cpu classifier holding `weights`."""
    return make_net("cpu", weights, dtype=np.float64)


def random_batch(n):
    """x (n, 3, 227, 227) float32 with no zeros and labels (n,) of both classes."""
    rng = np.random.default_rng(SEED)
    x = (rng.standard_normal((n, 3, 227, 227)) * PIXEL_STD).astype(np.float32)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int32)
    return x, labels


def random_history(grads, net):
    """A starting momentum history per blob, as large as the blob's own gradient term
    (lr * lr_mult * rms of its gradient), so that momentum visibly shapes the update."""
    rng = np.random.default_rng(SEED + 1)
    mults = net.param_multipliers()
    history = {}
    for layer, blobs in grads.items():
        history[layer] = {}
        for blob, g in blobs.items():
            scale = SOLVER["base_lr"] * mults[layer][blob][0] * np.sqrt(np.mean(g ** 2))
            signs = rng.choice([-1.0, 1.0], size=g.shape)
            h = scale * signs * rng.uniform(0.1, 1.0, size=g.shape)
            history[layer][blob] = h.astype(np.float32)  # the same numbers on both sides
    return history


def training_step(device, batch):
    """One training iteration on `device` and on the float64 reference.

    Returns a dict of NumPy results: x, labels, weights (before the step, float32), the
    loss, train-mode scores and gradients of both ('dev_*' and 'ref_*'), the new SGD
    history of both and the device's params after the step ('dev_params'); plus the
    device name and the two nets ('net', 'reference'; both after the step)."""
    weights = host_weights(CaffeNet(NUM_CLASSES, LAST_LAYER, device="cpu", seed=SEED))
    reference, net = reference_net(weights), make_net(device, weights)
    x, labels = random_batch(batch)
    to_numpy = net.device.to_numpy
    out = {"device": device, "x": x, "labels": labels, "weights": weights,
           "reference": reference, "net": net}

    loss, grads, scores = net.loss_and_grads(net.device.asarray(x), labels)
    out["dev_loss"], out["dev_scores"] = loss, to_numpy(scores)
    out["dev_grads"] = {layer: {blob: np.array(to_numpy(g)) for blob, g in blobs.items()}
                        for layer, blobs in grads.items()}
    # The reference's iteration, its backward routed as the device's (adopt_routing).
    out["ref_loss"], dscores, out["ref_scores"] = reference.forward_loss(
        x.astype(np.float64), labels)
    out["routing_changes"] = reference.adopt_routing(net)
    ref_grads = reference.backward(dscores)
    out["ref_grads"] = ref_grads

    # One step from the same history with the same gradients (the reference's, as float32
    # on the device), so that a gradient error is not reported again as an SGD error.
    history = random_history(ref_grads, reference)
    dev_step_grads = {layer: {blob: net.device.asarray(g, np.float32)
                              for blob, g in blobs.items()}
                      for layer, blobs in ref_grads.items()}
    solvers = {"ref": (SGDSolver(reference, **SOLVER), ref_grads),
               "dev": (SGDSolver(net, **SOLVER), dev_step_grads)}
    for side, (solver, side_grads) in solvers.items():
        solver.load_state_dict({"iter": 0, "history": history})
        solver.step(side_grads)
        out[f"{side}_history"] = solver.state_dict()["history"]
    out["dev_params"] = copy_params(net.to_numpy_params())
    return out


@pytest.fixture(scope="module", params=DEVICES)
def step(request):
    """The end-to-end iteration, run once per device for all tests of this module."""
    device, batch = request.param
    return training_step(device, batch)


# ------------------------------------------------------------------------- the tests
def test_scores_and_loss(step):
    assert step["dev_scores"].shape == (len(step["x"]), NUM_CLASSES)
    assert_close(step["dev_scores"], step["ref_scores"], "train-mode scores")
    assert step["dev_loss"] == pytest.approx(step["ref_loss"], rel=RTOL)


def test_routing_agrees(step):
    """The device's ReLU masks and pooling argmaxes are the reference's but for near-ties
    (at most one element in 100,000), and every ReLU and pooling layer was compared."""
    changes = step["routing_changes"]
    assert sorted(changes) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7",
                               "pool1", "pool2", "pool5"]
    for name, (changed, size) in changes.items():
        assert changed <= 1e-5 * size, f"{name}: {changed} of {size} routes differ"


@pytest.mark.parametrize("layer,blob", BLOBS, ids=[f"{l}.{b}" for l, b in BLOBS])
def test_gradient(step, layer, blob):
    got, want = step["dev_grads"][layer][blob], step["ref_grads"][layer][blob]
    assert got.shape == want.shape, f"{layer} {blob} gradient shape"
    assert_close(got, want, f"{layer} {blob} gradient")


@pytest.mark.parametrize("layer,blob", BLOBS, ids=[f"{l}.{b}" for l, b in BLOBS])
def test_sgd_step(step, layer, blob):
    """From the same gradients and history, the update (the new history) matches the
    reference's, and the device subtracted it from its float32 weights in place (one
    float32 subtraction: equal to within one unit in the last place)."""
    history = step["dev_history"][layer][blob]
    assert_close(history, step["ref_history"][layer][blob], f"{layer} {blob} SGD update")
    before, after = step["weights"][layer][blob], step["dev_params"][layer][blob]
    np.testing.assert_array_max_ulp(after, before - history, maxulp=1)


def test_fully_conv_equals_classifier(step):
    """At 227x227 the fully convolutional net (fc layers as convolutions, their weights
    reshaped) gives the classifier's test-mode scores, as a 1x1 map."""
    x = step["x"][:FEW_IMAGES]
    net = make_net(step["device"], step["weights"], fully_conv=True)
    got = net.device.to_numpy(net.forward(net.device.asarray(x), train=False))
    assert got.shape == (len(x), NUM_CLASSES, 1, 1)
    want = reference_net(step["weights"]).forward(x.astype(np.float64), train=False)
    assert_close(got[:, :, 0, 0], want, "fully convolutional scores")


def test_dropout_masks_match_reference(step):
    """With the same dropout_seed and dropout_iter the device draws the reference's masks:
    the same train-mode scores and loss. (Reuses the module's nets: loads identical
    weights into both and moves their dropout counters.)"""
    x, labels = step["x"][:FEW_IMAGES], step["labels"][:FEW_IMAGES]
    results = {}
    for side in ("net", "reference"):
        net = step[side]  # back to the weights before the SGD step
        net.load_params(copy_params(step["weights"]), strict=True, source="test weights")
        net.dropout_seed, net.dropout_iter = DROPOUT_SEED, DROPOUT_ITER
        scores = net.forward(net.device.asarray(x, net.dtype), train=True)
        loss, _ = net.ops.softmax_loss_forward(scores, net.device.asarray(labels, np.int32))
        results[side] = (net.device.to_numpy(scores), loss)
    (got_scores, got_loss), (want_scores, want_loss) = results["net"], results["reference"]
    assert_close(got_scores, want_scores, "train-mode scores with the chosen masks")
    assert got_loss == pytest.approx(want_loss, rel=RTOL)
    # The check can fail: the next iteration's masks give a clearly different loss.
    reference = step["reference"]
    scores = reference.forward(x.astype(np.float64), train=True)
    other_loss, _ = reference.ops.softmax_loss_forward(scores, labels)
    assert abs(other_loss - want_loss) > 100 * RTOL * abs(want_loss)
