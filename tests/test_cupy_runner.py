"""CupyRunner's glue, without a GPU: a stand-in for CuPy whose compiled functions run on
the emulator.

CupyRunner's own code (compiling each file once with RawModule, reading a function's
attributes into KernelInfo, the checks before a launch, passing grid, block, arguments and
shared memory to the function) otherwise runs only on a GPU, where time is scarce. The
stand-in keeps NumPy arrays (its `ndarray` is NumPy's) and answers `RawModule` with
functions that run the named kernel on the emulator, so the tiny network going through
CupyRunner must compute what the reference computes.
"""
import os
import re
import types

import numpy as np
import pytest

import nn.device
from kernels import runner as runner_module
from kernels.runner import CupyRunner, EmuRunner, resolve_source
from nn.device import Device
from tests.test_device import _assert_same_run, _run_tiny

FAKE_REGISTERS, FAKE_LOCAL_BYTES = 40, 8   # what the stand-in reports for every kernel


class FakeCompileError(Exception):
    """Plays cupy.cuda.compiler.CompileException."""


class FakeFunction:
    """Plays the function RawModule.get_function returns: `attributes` and a call."""

    def __init__(self, info, run, calls):
        self.attributes = {'shared_size_bytes': info.static_shared,
                           'max_threads_per_block': 1024, 'num_regs': FAKE_REGISTERS,
                           'local_size_bytes': FAKE_LOCAL_BYTES}
        self._run, self._calls, self._name = run, calls, info.name

    def __call__(self, grid, block, args, shared_mem=0):
        self._calls.append((self._name, grid, block, shared_mem))
        self._run(grid, block, args, shared_mem)


class FakeRawModule:
    """Plays cupy.RawModule: compiled once; its functions run on the emulator."""
    emu = EmuRunner()
    compiled, calls = [], []

    def __init__(self, code, options):
        # The assembled source names its file in a '#line 1 "<file>"' directive.
        self.display = re.findall(r'#line 1 "([^"]+)"', code)[-1]
        self.options = options

    def compile(self):
        if 'broken' in self.display:
            raise FakeCompileError(f'{self.display}(3): error: expected a ";"')
        FakeRawModule.compiled.append(os.path.basename(self.display))

    def get_function(self, name):
        path, display = resolve_source(os.path.basename(self.display))   # kernels/<file>
        info, run = self.emu._load(path, display, name)
        return FakeFunction(info, run, FakeRawModule.calls)


class FakeCupy(types.ModuleType):
    """Plays the cupy module: what CupyRunner and the launchers use, the rest NumPy's."""

    def __init__(self):
        super().__init__('cupy')
        self.ndarray = np.ndarray
        self.RawModule = FakeRawModule
        self.asnumpy = np.asarray
        self.cuda = types.SimpleNamespace(
            Device=lambda: types.SimpleNamespace(compute_capability='90'),
            compiler=types.SimpleNamespace(CompileException=FakeCompileError),
            get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None))

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture
def fake_runner(monkeypatch):
    """A CupyRunner on the stand-in, with its own module cache (the class keeps one for
    the process, which a real GPU run must not inherit)."""
    monkeypatch.setattr(nn.device, 'import_cupy_with_gpu', FakeCupy)
    monkeypatch.setattr(runner_module, 'load_nvrtc', lambda: None)
    monkeypatch.setattr(CupyRunner, '_modules', {})
    FakeRawModule.compiled.clear()
    FakeRawModule.calls.clear()
    return CupyRunner()


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
    x = np.linspace(-1, 1, 37, dtype=np.float32)
    y = np.empty_like(x)
    launch((1, 1, 1), (64, 1, 1), (x, y, np.int32(x.size)))
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    # The checks before a launch hold on this runner too: a Python int for an int.
    with pytest.raises(runner_module.KernelLaunchError, match='int'):
        launch((1, 1, 1), (64, 1, 1), (x, y, x.size))


def test_a_compile_error_names_the_file(fake_runner, monkeypatch):
    monkeypatch.setattr(runner_module, 'resolve_source',
                        lambda file: ('/nowhere/broken.cu', 'broken.cu'))
    monkeypatch.setattr(runner_module, 'read_text', lambda path: '')
    monkeypatch.setattr(runner_module, 'assemble_source',
                        lambda path, display: '#line 1 "broken.cu"\n')
    with pytest.raises(runner_module.KernelCompileError, match=r'NVRTC failed to compile broken.cu:3'):
        fake_runner.kernel('broken.cu', 'anything')
