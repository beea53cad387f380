"""A stand-in for CuPy whose compiled functions run on the emulator, so that the code only
a GPU would run (kernels/runner.py's CupyRunner, bench.py's GPU path) runs in CI.

Its arrays are NumPy's (`ndarray` is numpy.ndarray, everything it does not define is
NumPy's), `RawModule` compiles nothing and answers `get_function` with a function that
runs the named kernel on the emulator, and CUDA events read the CPU clock. Use
`install(monkeypatch)`: nn.device then finds this "GPU".
"""
import os
import re
import time
import types

import numpy as np

import nn.device
from kernels import runner as runner_module
from kernels.runner import CupyRunner, EmuRunner, resolve_source

FAKE_REGISTERS, FAKE_LOCAL_BYTES = 40, 8   # what the stand-in reports for every kernel


class FakeCompileError(Exception):
    """Plays cupy.cuda.compiler.CompileException."""


class FakeFunction:
    """Plays the function RawModule.get_function returns: `attributes` and a call."""

    def __init__(self, info, run, calls):
        self.attributes = {'shared_size_bytes': info.static_shared,
                           'max_threads_per_block': 1024, 'num_regs': FAKE_REGISTERS,
                           'local_size_bytes': FAKE_LOCAL_BYTES}
        self._run, self._calls, self._info = run, calls, info

    def __call__(self, grid, block, args, shared_mem=0):
        info = self._info
        self._calls.append((info.name, grid, block, shared_mem))
        # A GPU refuses a bad launch; the emulator would crash the process on one.
        runner_module.check_launch(info.name, grid, block, shared_mem, info.static_shared,
                                   info.max_threads)
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


class FakeEvent:
    """Plays cupy.cuda.Event: records the CPU clock (the emulator runs synchronously)."""
    time = None

    def record(self):
        self.time = time.perf_counter()

    def synchronize(self):
        pass


class FakeCupy(types.ModuleType):
    """Plays the cupy module: what CupyRunner, the launchers and bench.py use, the rest
    NumPy's."""
    __version__ = 'stand-in'

    def __init__(self):
        super().__init__('cupy')
        self.ndarray = np.ndarray
        self.RawModule = FakeRawModule
        self.asnumpy = np.asarray
        device = types.SimpleNamespace(compute_capability='90', id=0)
        runtime = types.SimpleNamespace(
            getDeviceProperties=lambda i: {'name': b'stand-in GPU (the emulator)',
                                           'l2CacheSize': 1 << 20},
            driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 13000)
        self.cuda = types.SimpleNamespace(
            Device=lambda: device, runtime=runtime, Event=FakeEvent,
            get_elapsed_time=lambda start, end: (end.time - start.time) * 1e3,
            nvrtc=types.SimpleNamespace(getVersion=lambda: (13, 0)),
            compiler=types.SimpleNamespace(CompileException=FakeCompileError),
            get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None))
        self.get_default_memory_pool = lambda: types.SimpleNamespace(
            free_all_blocks=lambda: None)

    def __getattr__(self, name):
        return getattr(np, name)


def install(monkeypatch):
    """Make nn.device's CuPy import return the stand-in (and CupyRunner need no NVRTC),
    with CupyRunner's module cache emptied for the test: the class keeps one for the
    process, which a real GPU run must not inherit. Returns a fresh CupyRunner."""
    monkeypatch.setattr(nn.device, 'import_cupy_with_gpu', FakeCupy)
    monkeypatch.setattr(runner_module, 'load_nvrtc', lambda: None)
    monkeypatch.setattr(CupyRunner, '_modules', {})
    FakeRawModule.compiled.clear()
    FakeRawModule.calls.clear()
    return CupyRunner()


