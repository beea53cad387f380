"""nn/solver.py: Caffe's SGD on hand-computed values, step policy, iter_size, state I/O."""
import h5py
import numpy as np
import pytest

from nn.caffenet import CaffeNet
from nn.device import get_device
from nn.solver import SGDSolver, accumulate


class TwoBlobNet:
    """The least a solver needs: params, param_multipliers(), device, dropout_iter."""

    def __init__(self):
        self.device = get_device("cpu")
        self.params = {"a": {"weight": np.array([1.0, -2.0]), "bias": np.array([0.5])}}
        self.dropout_iter = 0

    def param_multipliers(self):
        return {"a": {"weight": (1.0, 1.0), "bias": (2.0, 0.0)}}


def constant_grads():
    return {"a": {"weight": np.array([0.2, 0.4]), "bias": np.array([1.0])}}


def test_three_steps_by_hand():
    """base_lr 0.1, momentum 0.9, weight_decay 0.01, step policy gamma 0.5 stepsize 2; the
    bias has lr_mult 2 and decay_mult 0. Worked by hand:

    step 0 (lr 0.1):  v_w = 0.1 * ([0.2, 0.4] + 0.01 * [1, -2]) = [0.021, 0.038]
                      w = [0.979, -2.038];  v_b = 0.2 * 1 = 0.2, b = 0.3
    step 1 (lr 0.1):  v_w = 0.9 v_w + 0.1 * ([0.2, 0.4] + 0.01 w) = [0.039879, 0.072162]
                      w = [0.939121, -2.110162];  v_b = 0.18 + 0.2 = 0.38, b = -0.08
    step 2 (lr 0.05): v_w = 0.9 v_w + 0.05 * ([0.2, 0.4] + 0.01 w)
                        = [0.0463606605, 0.083890719], w = [0.8927603395, -2.194052719]
                      v_b = 0.342 + 0.1 = 0.442, b = -0.522
    """
    net = TwoBlobNet()
    solver = SGDSolver(net, base_lr=0.1, momentum=0.9, weight_decay=0.01, gamma=0.5,
                       stepsize=2)
    expected_w = [[0.979, -2.038], [0.939121, -2.110162], [0.8927603395, -2.194052719]]
    expected_b = [0.3, -0.08, -0.522]
    for i in range(3):
        solver.step(constant_grads())
        np.testing.assert_allclose(net.params["a"]["weight"], expected_w[i], rtol=1e-12)
        np.testing.assert_allclose(net.params["a"]["bias"], [expected_b[i]], rtol=1e-12)
    np.testing.assert_allclose(solver.history["a"]["weight"], [0.0463606605, 0.083890719],
                               rtol=1e-12)
    assert solver.iter == 3


def test_step_policy_boundaries():
    solver = SGDSolver(TwoBlobNet(), base_lr=0.01, gamma=0.1, stepsize=3)
    lrs = [solver.lr_at(i) for i in range(8)]
    np.testing.assert_allclose(lrs, [0.01] * 3 + [0.001] * 3 + [0.0001] * 2, rtol=1e-12)
    fixed = SGDSolver(TwoBlobNet(), base_lr=0.01, lr_policy="fixed")
    assert [fixed.lr_at(i) for i in (0, 10, 10 ** 6)] == [0.01] * 3
    # The step that crosses a boundary uses the new rate.
    solver.iter = 3
    assert solver.lr == pytest.approx(0.001)


def test_bad_solver_arguments():
    with pytest.raises(ValueError, match="stepsize"):
        SGDSolver(TwoBlobNet(), base_lr=0.1)
    with pytest.raises(ValueError, match="lr_policy"):
        SGDSolver(TwoBlobNet(), base_lr=0.1, lr_policy="poly")
    with pytest.raises(ValueError, match="iter_size"):
        SGDSolver(TwoBlobNet(), base_lr=0.1, lr_policy="fixed", iter_size=0)
    solver = SGDSolver(TwoBlobNet(), base_lr=0.1, lr_policy="fixed")
    with pytest.raises(KeyError, match="'a'"):
        solver.step({})
    with pytest.raises(KeyError, match="no bias gradient for layer 'a'"):
        solver.step({"a": {"weight": np.ones(2)}})
    assert solver.iter == 0
    with pytest.raises(ValueError, match=r"'a' bias gradient has shape \(2,\), expected \(1,\)"):
        solver.step({"a": {"weight": np.ones(2), "bias": np.ones(2)}})


def test_bad_gradient_leaves_no_half_step():
    """A gradient missing for a later layer is found before any blob is updated."""
    net = small_net()
    before = net.to_numpy_params()
    _, grads, _ = net.loss_and_grads(np.random.default_rng(3).standard_normal((2, 3, 11, 11)),
                                     np.array([2, 0]))
    del grads["fc8_twitter"]["bias"]
    solver = SGDSolver(net, base_lr=0.1, lr_policy="fixed")
    with pytest.raises(KeyError, match="no bias gradient for layer 'fc8_twitter'"):
        solver.step(grads)
    assert solver.iter == 0
    for name, blobs in before.items():
        for blob, a in blobs.items():
            np.testing.assert_array_equal(net.params[name][blob], a)


def test_accumulate_sums_without_aliasing():
    g1, g2 = constant_grads(), constant_grads()
    acc = accumulate(None, g1)
    assert acc["a"]["weight"] is not g1["a"]["weight"]
    acc = accumulate(acc, g2)
    np.testing.assert_array_equal(acc["a"]["weight"], [0.4, 0.8])
    np.testing.assert_array_equal(g1["a"]["weight"], [0.2, 0.4])


# A small net without dropout, so two half batches and the full batch see the same function.
SPEC = [
    dict(type="conv", name="conv1", num_output=4, kernel=3, stride=2, relu=True, std=0.5,
         bias_fill=0.1),
    dict(type="pool", name="pool1", kernel=3, stride=2),
    dict(type="fc", name="fc8_twitter", num_output=3, relu=False, std=0.5, bias_fill=0.0,
         mult=((10.0, 1.0), (20.0, 0.0))),
]


def small_net():
    return CaffeNet(spec=SPEC, input_size=11, device="cpu", seed=4, dtype=np.float64)


def test_iter_size_two_half_batches_equal_one_full_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 11, 11))
    labels = np.array([0, 2, 1, 2])
    full, halves = small_net(), small_net()
    kwargs = dict(base_lr=0.05, momentum=0.9, weight_decay=0.01, gamma=0.5, stepsize=1)
    full_solver = SGDSolver(full, iter_size=1, **kwargs)
    half_solver = SGDSolver(halves, iter_size=2, **kwargs)
    for _ in range(2):  # two steps, so the momentum history is compared too
        full_solver.step(full.loss_and_grads(x, labels)[1])
        acc = None
        for part in (slice(0, 2), slice(2, 4)):
            acc = accumulate(acc, halves.loss_and_grads(x[part], labels[part])[1])
        half_solver.step(acc)
    moved = False
    for name in full.param_layers:
        for blob in ("weight", "bias"):
            np.testing.assert_allclose(halves.params[name][blob], full.params[name][blob],
                                       rtol=1e-10, atol=1e-12)
            moved |= not np.allclose(full.params[name][blob], small_net().params[name][blob])
    assert moved


def test_multipliers_reach_the_update():
    """One step from zero history: delta = lr * lr_mult * (g + wd * decay_mult * w)."""
    net = small_net()
    net.set_param_multipliers("conv1", weight=(0.0, 0.0), bias=(0.0, 0.0))  # frozen
    before = net.to_numpy_params()
    _, grads, _ = net.loss_and_grads(np.random.default_rng(1).standard_normal((2, 3, 11, 11)),
                                     np.array([1, 0]))
    SGDSolver(net, base_lr=0.01, weight_decay=0.1, lr_policy="fixed").step(grads)
    np.testing.assert_array_equal(net.params["conv1"]["weight"], before["conv1"]["weight"])
    w, g = before["fc8_twitter"]["weight"], grads["fc8_twitter"]["weight"]
    np.testing.assert_allclose(net.params["fc8_twitter"]["weight"],
                               w - 0.01 * 10 * (g + 0.1 * 1 * w), rtol=1e-12)
    b, gb = before["fc8_twitter"]["bias"], grads["fc8_twitter"]["bias"]
    np.testing.assert_allclose(net.params["fc8_twitter"]["bias"], b - 0.01 * 20 * gb,
                               rtol=1e-12)


def test_state_round_trip_through_hdf5(tmp_path):
    """Resuming from a checkpoint (weights + solver group) continues exactly, dropout
    masks included."""
    from tests.test_caffenet import TINY_SIZE, tiny_spec  # a net with dropout
    x = np.random.default_rng(2).standard_normal((2, 3, TINY_SIZE, TINY_SIZE))
    labels = np.array([0, 2])

    def make():
        return CaffeNet(spec=tiny_spec(), input_size=TINY_SIZE, device="cpu",
                        dtype=np.float64, dropout_seed=9)

    net = make()
    solver = SGDSolver(net, base_lr=0.01, gamma=0.5, stepsize=2)
    for _ in range(3):
        solver.step(net.loss_and_grads(x, labels)[1])
    net.save(tmp_path / "w.h5")
    with h5py.File(tmp_path / "s.h5", "w") as f:
        solver.save_to_h5(f.create_group("solver"))

    resumed = make()
    resumed.load(tmp_path / "w.h5")
    resumed_solver = SGDSolver(resumed, base_lr=0.01, gamma=0.5, stepsize=2)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        resumed_solver.load_from_h5(f["solver"])
    assert resumed_solver.iter == 3 and resumed.dropout_iter == 3
    for n in (net, resumed):  # one more step each: same lr, history and dropout mask
        (solver if n is net else resumed_solver).step(n.loss_and_grads(x, labels)[1])
    for name in net.param_layers:
        for blob in ("weight", "bias"):
            # The weight file is float32, so the resumed run differs by that rounding.
            np.testing.assert_allclose(resumed.params[name][blob], net.params[name][blob],
                                       rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(resumed_solver.history["fc6"]["weight"],
                               solver.history["fc6"]["weight"], rtol=1e-5, atol=1e-8)


def test_load_state_dict_checks_shapes():
    solver = SGDSolver(TwoBlobNet(), base_lr=0.1, lr_policy="fixed")
    state = solver.state_dict()
    state["history"]["a"]["weight"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"'a' weight history has shape \(3,\), expected \(2,\)"):
        solver.load_state_dict(state)
    del state["history"]["a"]
    with pytest.raises(ValueError, match="no history for layer 'a'"):
        solver.load_state_dict(state)


def test_checkpoint_keeps_a_float64_net_bit_exact(tmp_path):
    """A checkpoint stores the net in its own dtype (unlike a float32 weight file), so a
    float64 run resumes with exactly the parameters and history it stopped with."""
    from nn.checkpoint import load_checkpoint, save_checkpoint
    rng = np.random.default_rng()
    x, labels = rng.standard_normal((3, 3, 11, 11)), rng.integers(0, 3, size=3)
    net = small_net()
    solver = SGDSolver(net, base_lr=0.01, momentum=0.9, lr_policy="fixed")
    for _ in range(2):
        solver.step(net.loss_and_grads(x, labels)[1])
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, net, solver, {"epoch": 1, "position": 2}, {"seed": 4}, {"k": 1})
    with h5py.File(path, "r") as f:
        for name in net.param_layers:
            for blob in ("weight", "bias"):
                assert f["weights"][name][blob].dtype == np.float64, (name, blob)
    resumed = CaffeNet(spec=SPEC, input_size=11, device="cpu", seed=5, dtype=np.float64)
    resumed_solver = SGDSolver(resumed, base_lr=0.01, momentum=0.9, lr_policy="fixed")
    state, extra = load_checkpoint(path, resumed, resumed_solver, {"seed": 4}, ("seed",))
    assert state == {"epoch": 1, "position": 2} and extra == {"k": 1}
    assert resumed_solver.iter == 2
    for name in net.param_layers:
        for blob in ("weight", "bias"):
            assert resumed.params[name][blob].dtype == np.float64
            np.testing.assert_array_equal(resumed.params[name][blob], net.params[name][blob])
            np.testing.assert_array_equal(resumed_solver.history[name][blob],
                                          solver.history[name][blob])


def _checkpoint(tmp_path, settings):
    from nn.checkpoint import save_checkpoint
    net = small_net()
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, net, SGDSolver(net, base_lr=0.01, lr_policy="fixed"),
                    {"epoch": 0, "position": 0}, settings)
    return path


def test_resume_is_refused_when_any_setting_differs(tmp_path):
    """Every key of must_match is compared, the last as much as the first, and a setting
    the checkpoint does not record counts as different; the net is left untouched."""
    from nn.checkpoint import CheckpointError, load_checkpoint
    path = _checkpoint(tmp_path, {"seed": 4, "lr": 0.01, "batch_size": 8})
    net = CaffeNet(spec=SPEC, input_size=11, device="cpu", seed=5, dtype=np.float64)
    before = {n: {b: a.copy() for b, a in blobs.items()} for n, blobs in net.params.items()}
    keys = ("seed", "lr", "batch_size", "tf32")
    for settings, named in (
            ({"seed": 4, "lr": 0.01, "batch_size": 16}, "batch_size: checkpoint 8, now 16"),
            ({"seed": 4, "lr": 0.01, "batch_size": 8, "tf32": True},
             "tf32: checkpoint None, now True")):
        with pytest.raises(CheckpointError, match=named):
            load_checkpoint(path, net, SGDSolver(net, base_lr=0.01, lr_policy="fixed"),
                            settings, keys)
    for name, blobs in before.items():
        for blob, array in blobs.items():
            np.testing.assert_array_equal(net.params[name][blob], array)


def test_checkpoint_missing_a_layer_is_refused(tmp_path):
    from nn.checkpoint import CheckpointError, load_checkpoint
    path = _checkpoint(tmp_path, {"seed": 4})
    with h5py.File(path, "a") as f:
        del f["weights"][list(f["weights"])[-1]]
    net = small_net()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path, net, SGDSolver(net, base_lr=0.01, lr_policy="fixed"),
                        {"seed": 4}, ("seed",))
