"""CupyRunner's glue, without a GPU, on tests/fake_cupy.py's stand-in for CuPy (its
compiled functions run on the emulator).

CupyRunner's own code (compiling each file once with RawModule, reading a function's
attributes into KernelInfo, the checks before a launch, passing grid, block, arguments and
shared memory to the function) otherwise runs only on a GPU, where time is scarce; the
tiny network going through it must compute what the reference computes.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from kernels import runner as runner_module
from nn.device import Device
from tests import fake_cupy
from tests.fake_cupy import FAKE_LOCAL_BYTES, FAKE_REGISTERS, FakeRawModule
from tests.test_device import _assert_same_run, _run_tiny


@pytest.fixture
def fake_runner(monkeypatch):
    """A CupyRunner on the stand-in for CuPy."""
    return fake_cupy.install(monkeypatch)


def test_the_tiny_net_through_cupy_runner_matches_the_reference(fake_runner):
    from kernels.ops import make_ops
    device = Device('cuda', fake_runner.xp, make_ops(fake_runner), fake_runner)
    _assert_same_run(_run_tiny(device), _run_tiny('cpu'))
    # Each file compiled once, whatever the number of kernels and launches taken from it.
    assert len(FakeRawModule.compiled) == len(set(FakeRawModule.compiled))
    assert {'conv.cu', 'gemm.cu', 'pool.cu', 'lrn.cu', 'sgd.cu'} <= set(FakeRawModule.compiled)
    assert len(FakeRawModule.calls) > len(fake_runner.loaded_kernels())
    assert all(len(grid) == 3 and len(block) == 3 and isinstance(shared, int)
               for _, grid, block, shared in FakeRawModule.calls)
    assert fake_runner.compute_capability == 90


def test_kernel_info_reads_the_function_attributes(fake_runner):
    launch = fake_runner.kernel('relu.cu', 'relu_forward_v1')
    info = launch.kernel
    assert (info.registers, info.local_bytes, info.max_threads) == (
        FAKE_REGISTERS, FAKE_LOCAL_BYTES, 1024)
    assert fake_runner.loaded_kernels() == [info]
    cupy = fake_runner.xp
    x_host = np.linspace(-1, 1, 37, dtype=np.float32)
    x = cupy.asarray(x_host)
    y = cupy.empty_like(x)
    launch((1, 1, 1), (64, 1, 1), (x, y, np.int32(x.size)))
    np.testing.assert_array_equal(y.get(), np.maximum(x_host, 0))
    # The checks before a launch hold on this runner too: a Python int for an int, and a
    # host (NumPy) array where the kernel needs a device one.
    with pytest.raises(runner_module.KernelLaunchError, match='int'):
        launch((1, 1, 1), (64, 1, 1), (x, y, x.size))
    with pytest.raises(runner_module.KernelLaunchError,
                       match="argument 0 'x' .*expected a cupy array .* got numpy.ndarray"):
        launch((1, 1, 1), (64, 1, 1), (x_host, y, np.int32(x.size)))


def test_the_stand_in_keeps_host_and_device_apart(fake_runner):
    """Like CuPy, the stand-in refuses to mix host and device arrays: code that forgets a
    copy fails in CI, not first on a GPU."""
    cupy = fake_runner.xp
    host = np.arange(5, dtype=np.float32)
    dev = cupy.asarray(host)
    assert isinstance(dev, cupy.ndarray) and not isinstance(host, cupy.ndarray)
    dev[0] = 7                                   # a copy: the host array is untouched
    assert host[0] == 0 and cupy.asnumpy(dev)[0] == 7
    assert isinstance(dev + 1, cupy.ndarray) and isinstance(cupy.zeros(3), cupy.ndarray)
    for mixed in (lambda: dev + host, lambda: np.maximum(host, dev),
                  lambda: cupy.matmul(dev, host), lambda: cupy.copyto(dev, host)):
        with pytest.raises(TypeError, match="numpy.ndarray of shape"):
            mixed()
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(dev)
    assert type(dev.get()) is np.ndarray and type(cupy.asnumpy(dev)) is np.ndarray


def test_a_compile_error_names_the_file_and_line(fake_runner, tmp_path):
    """CupyRunner turns CuPy's CompileException (NVRTC's log) into KernelCompileError."""
    path = tmp_path / "broken.cu"
    path.write_text('extern "C" __global__ void broken(float* y) {\n'
                    '    y[0] = 1.0f;\n'
                    '    y[1] = undefined_name;\n'
                    '}\n')
    with pytest.raises(runner_module.KernelCompileError) as info:
        fake_runner.kernel(str(path), 'broken')
    assert info.value.file == str(path) and info.value.line == 3
    assert str(info.value).startswith(f'NVRTC failed to compile {path}:3')
    assert 'undefined_name' in str(info.value) and f'{path}(3): error:' in info.value.log
    assert not FakeRawModule.compiled


def test_the_gpu_tests_run_on_the_stand_in_with_its_plugin():
    """tests/stand_in_gpu.py makes `pytest -m gpu` run (not skip) on the stand-in."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.stand_in_gpu",
                          "-m", "gpu", "-p", "no:cacheprovider",
                          "tests/test_relu_kernels.py::test_relu_gpu_caffenet_shapes[1-1]"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout and "skipped" not in run.stdout

