"""nn/device.py and kernels/ops.py: the device choice and the kernel op namespace."""
import argparse
import functools
import subprocess
import sys
import types

import numpy as np
import pytest

import nn.reference
from conftest import ROOT, _gpu_available
from kernels.ops import OP_FAMILIES, OP_NAMES, make_ops
from nn.caffenet import CaffeNet
from nn.device import Device, DeviceError, add_device_argument, get_device
from nn.solver import SGDSolver

GPU = _gpu_available()


def test_op_set_is_the_reference_namespace():
    assert sorted(OP_NAMES) == sorted(nn.reference.__all__)


def test_cpu_device():
    dev = get_device("cpu")
    assert dev.name == "cpu" and dev.xp is np and dev.ops is nn.reference
    assert dev.runner is None
    a = dev.asarray(np.arange(12.0).reshape(3, 4)[:, ::2])  # float64, not contiguous
    assert a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, [[0, 2], [4, 6], [8, 10]])
    assert dev.asarray([1, 2], np.int32).dtype == np.int32
    assert isinstance(dev.to_numpy(a), np.ndarray)
    dev.synchronize()
    assert get_device(dev) is dev


def test_auto_picks_cuda_only_with_a_gpu():
    assert get_device(None).name == ("cuda" if GPU else "cpu")
    assert get_device("auto").name == get_device(None).name


def test_unknown_device_name():
    with pytest.raises(ValueError, match="unknown device 'tpu'.*cuda, cpu, emu"):
        get_device("tpu")


@pytest.mark.skipif(GPU, reason="this machine has a GPU: the error path cannot be reached")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match="device 'cuda' needs.*use --device cpu or emu"):
        get_device("cuda")


def test_cuda_without_cupy_is_a_clear_error(monkeypatch):
    """No CuPy at all: the DeviceError that says so, not CupyRunner's NVRTC ImportError."""
    monkeypatch.setitem(sys.modules, "cupy", None)      # import cupy raises ImportError
    with pytest.raises(DeviceError, match="device 'cuda' needs CuPy .*failed to import"):
        get_device("cuda")


def test_cpu_device_imports_neither_cupy_nor_launchers():
    code = ("import sys; from nn.device import get_device; from nn.caffenet import CaffeNet; "
            "CaffeNet(spec=[dict(type='fc', name='fc', num_output=2)], input_size=3, "
            "device='cpu'); "
            "bad = [m for m in sys.modules if m == 'cupy' or m.startswith('kernels.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_add_device_argument():
    parser = add_device_argument(argparse.ArgumentParser())
    assert parser.parse_args([]).device == "auto"
    assert parser.parse_args(["--device", "emu"]).device == "emu"
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "gpu"])


# ------------------------------------------------------------- kernels/ops.py binding
def _fake_launchers(monkeypatch):
    """Fake kernels/<family>.py modules whose functions return (runner, op, args, kwargs)."""
    for family in set(OP_FAMILIES.values()):
        module = types.ModuleType(f"kernels.{family}")
        for op, fam in OP_FAMILIES.items():
            if fam == family:
                setattr(module, op, functools.partial(lambda op, runner, *a, **k:
                                                      (runner, op, a, k), op))
        monkeypatch.setitem(sys.modules, f"kernels.{family}", module)


def test_make_ops_binds_every_op_to_the_runner(monkeypatch):
    _fake_launchers(monkeypatch)
    runner = object()
    ops = make_ops(runner)
    assert sorted(vars(ops)) == sorted(OP_NAMES)
    assert ops.conv_forward(1, 2, 3, pad=4) == (runner, "conv_forward", (1, 2, 3), {"pad": 4})
    assert ops.sgd_update("p", "g")[:3] == (runner, "sgd_update", ("p", "g"))
    assert ops.accuracy("s", "l")[1] == "accuracy"


def test_tf32_binds_the_tensor_core_versions():
    """tf32=True: the convolutions and fc layers run their launchers' TF32_VERSION (the
    backward follows the forward's version, kept in the cache); nothing else changes."""
    from kernels import conv, gemm
    plain, tf32 = get_device("emu"), get_device("emu", tf32=True)
    assert tf32.ops.conv_forward.keywords == {"version": conv.TF32_VERSION}
    assert tf32.ops.inner_product_forward.keywords == {"version": gemm.TF32_VERSION}
    assert plain.ops.conv_forward.keywords == {}
    assert all(getattr(tf32.ops, op).keywords == {} for op in OP_NAMES
               if op not in ("conv_forward", "inner_product_forward"))
    with pytest.raises(DeviceError, match="TF32 .* is a kernel path: use --device cuda"):
        get_device("cpu", tf32=True)
    assert get_device(tf32, tf32=True) is tf32
    with pytest.raises(ValueError, match="was made without tf32"):
        get_device(plain, tf32=True)


def test_make_ops_names_a_missing_launcher(monkeypatch):
    _fake_launchers(monkeypatch)
    monkeypatch.setitem(sys.modules, "kernels.sgd", None)  # import fails
    with pytest.raises(ImportError, match="'sgd_update' needs .*kernels/sgd.py"):
        make_ops(object())
    empty = types.ModuleType("kernels.lrn")
    monkeypatch.setitem(sys.modules, "kernels.lrn", empty)
    with pytest.raises(ImportError, match="kernels/lrn.py has no function 'lrn_forward'"):
        make_ops(object())


def test_make_ops_partial_defers_a_missing_launcher(monkeypatch):
    _fake_launchers(monkeypatch)
    monkeypatch.setitem(sys.modules, "kernels.sgd", None)  # import fails
    runner = object()
    ops = make_ops(runner, partial=True)
    assert sorted(vars(ops)) == sorted(OP_NAMES)
    assert ops.relu_forward("x")[:3] == (runner, "relu_forward", ("x",))
    with pytest.raises(ImportError, match="'sgd_update' needs .*kernels/sgd.py"):
        ops.sgd_update("p", "g")


# ------------------------------------------------------- the network on the kernels
def _kernel_device(name):
    try:
        return get_device(name)
    except ImportError as exc:  # a launcher or the runner has not landed yet
        pytest.skip(f"{name} device unavailable: {exc}")


def _run_tiny(device):
    """Forward, backward and one SGD step of the tiny test net; NumPy results."""
    from tests.test_caffenet import TINY_SIZE, random_input, tiny_spec
    net = CaffeNet(spec=tiny_spec(), input_size=TINY_SIZE, device=device, seed=2,
                   dropout_seed=5)
    x, labels = random_input(3, TINY_SIZE, seed=8), np.array([2, 0, 1])
    probs = net.predict(x)
    loss, grads, scores = net.loss_and_grads(x, labels)
    SGDSolver(net, base_lr=0.01, stepsize=10).step(grads)
    to_np = net.device.to_numpy
    return dict(probs=probs, loss=loss, scores=to_np(scores),
                grads={n: {b: to_np(g) for b, g in bl.items()} for n, bl in grads.items()},
                params=net.to_numpy_params())


def _assert_same_run(got, want):
    np.testing.assert_allclose(got["probs"], want["probs"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-4, atol=1e-5)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    for name, blobs in want["grads"].items():
        for blob in blobs:
            scale = np.abs(want["grads"][name][blob]).max()
            np.testing.assert_allclose(got["grads"][name][blob], want["grads"][name][blob],
                                       rtol=1e-4, atol=1e-5 * scale, err_msg=f"{name} {blob}")
            np.testing.assert_allclose(got["params"][name][blob], want["params"][name][blob],
                                       rtol=1e-4, atol=1e-6, err_msg=f"{name} {blob}")


def test_emu_device_runs_the_net_like_the_reference():
    dev = _kernel_device("emu")
    assert dev.name == "emu" and dev.xp is dev.runner.xp and dev.xp.ndarray is np.ndarray
    assert np.isnan(dev.xp.empty(3, np.float32)).all()   # poisoned, as cupy.empty's leftovers
    assert sorted(vars(dev.ops)) == sorted(OP_NAMES)
    with pytest.raises(ValueError, match="float32 only"):
        CaffeNet(spec=[dict(type="fc", name="fc", num_output=2)], input_size=3, device=dev,
                 dtype=np.float64)
    _assert_same_run(_run_tiny(dev), _run_tiny("cpu"))


@pytest.mark.gpu
def test_cuda_device_runs_the_net_like_the_reference():
    dev = get_device("cuda")
    assert isinstance(dev, Device) and dev.xp.__name__ == "cupy"
    _assert_same_run(_run_tiny(dev), _run_tiny("cpu"))


def _assert_close_to_tf32(got, want, tol=2e-2):
    """The tiny net's run on tensor cores against the float32 reference: every result
    within `tol` of its largest value (TF32 keeps 10 mantissa bits; a wrong index or a
    lost term would be off by far more)."""
    def close(a, b, what):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(), err_msg=what)
    close(got["probs"], want["probs"], "probs")
    close(got["scores"], want["scores"], "scores")
    assert got["loss"] == pytest.approx(want["loss"], rel=tol)
    for name, blobs in want["grads"].items():
        for blob in blobs:
            close(got["grads"][name][blob], want["grads"][name][blob], f"grad {name} {blob}")
            close(got["params"][name][blob], want["params"][name][blob], f"{name} {blob}")


def test_emu_tf32_device_runs_the_net_close_to_the_reference():
    got, want = _run_tiny(get_device("emu", tf32=True)), _run_tiny("cpu")
    _assert_close_to_tf32(got, want)
    # ... and really in TF32: the scores differ from float32's by more than rounding.
    assert np.abs(got["scores"] - want["scores"]).max() > 1e-5 * np.abs(want["scores"]).max()


@pytest.mark.gpu
def test_cuda_tf32_device_runs_the_net_close_to_the_reference():
    _assert_close_to_tf32(_run_tiny(get_device("cuda", tf32=True)), _run_tiny("cpu"))


def test_auto_device_without_driver_does_not_import_cupy(monkeypatch):
    """No /dev/nvidiactl (nor WSL2's /dev/dxg) on Linux: no GPU, and CuPy is not imported."""
    import builtins
    import sys as _sys
    from nn import device

    real_import = builtins.__import__
    tried = []

    def no_cupy(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            tried.append(name)
            raise ImportError("no cupy in this test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(_sys, "platform", "linux")
    monkeypatch.setattr(device.os.path, "exists", lambda p: False)
    monkeypatch.setattr(builtins, "__import__", no_cupy)
    assert device.cuda_available() is False
    assert device.get_device("auto").name == "cpu"
    assert tried == []
    # with a driver node it does ask CuPy (whose import fails here: still no GPU)
    monkeypatch.setattr(device.os.path, "exists", lambda p: p == "/dev/nvidiactl")
    assert device.cuda_available() is False
    assert tried == ["cupy"]
