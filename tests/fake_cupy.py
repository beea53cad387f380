"""A stand-in for CuPy whose compiled functions run on the emulator, so that the code only
a GPU would run (kernels/runner.py's CupyRunner, bench.py's GPU path) runs in CI.

Its arrays are "device arrays" (`DeviceArray`, NumPy arrays underneath) that keep CuPy's
boundary between host and device: `cupy.asarray` copies host data in, `.get()` and
`cupy.asnumpy` copy it out, and mixing a device array with a NumPy array in an operation
or a cupy function raises TypeError, as CuPy does, so code that forgets a copy fails here
and not first on a GPU. Every other cupy function is NumPy's, on device arrays.
`RawModule` compiles the source with the emulator's g++ build (a compile error is
reported in NVRTC's form) and answers `get_function` with a function that runs the named
kernel on the emulator, and CUDA events read the CPU clock. Use
`install(monkeypatch)`: nn.device then finds this "GPU".
"""
import os
import re
import time
import types

import numpy as np

import nn.device
from kernels import runner as runner_module
from kernels import emulator
from kernels.runner import (CupyRunner, EmuRunner, KernelCompileError, poison,
                            resolve_source)

FAKE_REGISTERS, FAKE_LOCAL_BYTES = 40, 8   # what the stand-in reports for every kernel


def _is_host_array(a):
    """A NumPy array (not a 0-d one: CuPy takes NumPy scalars) that is not a device array."""
    return isinstance(a, np.ndarray) and not isinstance(a, DeviceArray) and a.ndim > 0


def _refuse_host_arrays(what, values):
    for a in values:
        if _is_host_array(a):
            raise TypeError(f"stand-in for CuPy: {what} given a numpy.ndarray of shape "
                            f"{a.shape} (CuPy: Unsupported type <class 'numpy.ndarray'>; "
                            f"copy it to the device with cupy.asarray first)")


def _host(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _device(a):
    return a.view(DeviceArray) if type(a) is np.ndarray else a


class DeviceArray(np.ndarray):
    """Plays cupy.ndarray: NumPy's array, but it does not mix with NumPy's arrays."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host_arrays(f"{ufunc.__name__}.{method}", inputs + (out or ()))
        if out is not None:
            kwargs['out'] = tuple(_host(o) for o in out)
        result = getattr(ufunc, method)(*(_host(a) for a in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return tuple(map(_device, result)) if isinstance(result, tuple) else _device(result)

    def get(self, stream=None, order='C', out=None):
        """A host copy (cupy.ndarray.get)."""
        host = np.array(self.view(np.ndarray), order=order)
        if out is None:
            return host
        out[...] = host
        return out


def _cupy_function(name, fn):
    """cupy.<name>: NumPy's function on device arrays, refusing host arrays."""
    def on_device(*args, **kwargs):
        _refuse_host_arrays(f"cupy.{name}", list(args) + list(kwargs.values()))
        result = fn(*(_host(a) for a in args), **{k: _host(v) for k, v in kwargs.items()})
        return _device(result)
    return on_device


def _no_implicit_copy(name, fn):
    """np.<name> refusing a device array, as CuPy does (its arrays convert only through
    .get() or cupy.asnumpy)."""
    def host_only(a, *args, **kwargs):
        if isinstance(a, DeviceArray):
            raise TypeError(f"stand-in for CuPy: np.{name} given a cupy array (CuPy: "
                            f"Implicit conversion to a NumPy array is not allowed; use "
                            f"cupy.asnumpy or .get())")
        return fn(a, *args, **kwargs)
    return host_only


def _to_device(a, dtype=None, order='K'):
    """cupy.asarray of host data (always a copy; a device array of the right dtype as is)."""
    if isinstance(a, DeviceArray) and (dtype is None or a.dtype == dtype):
        return a
    return np.array(_host(a), dtype=dtype, order=order).view(DeviceArray)


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
        # (the launcher has checked that the arrays are device arrays)
        self._run(grid, block, tuple(_host(a) for a in args), shared_mem)


class FakeRawModule:
    """Plays cupy.RawModule: compiled once (by the emulator's g++ build, so a source that
    does not compile fails as it would in NVRTC); its functions run on the emulator."""
    emu = EmuRunner()
    compiled, calls = [], []

    def __init__(self, code, options):
        # The assembled source names its file in a '#line 1 "<file>"' directive: a project
        # file relative to the repository (found in kernels/), a test's own by its path.
        display = re.findall(r'#line 1 "([^"]+)"', code)[-1]
        self.path, self.display = resolve_source(
            display if os.path.isabs(display) else os.path.basename(display))
        self.options = options

    def compile(self):
        try:
            emulator.load_module(self.path, self.display)
        except KernelCompileError as e:   # g++'s "f:3:5: error:" in NVRTC's form "f(3): error:"
            nvrtc_log = re.sub(r'^(.+?):(\d+):\d+: error:', r'\1(\2): error:', e.log, flags=re.M)
            raise FakeCompileError(nvrtc_log) from None
        FakeRawModule.compiled.append(os.path.basename(self.display))

    def get_function(self, name):
        info, run = self.emu._load(self.path, self.display, name)
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
        self.ndarray = DeviceArray
        self.RawModule = FakeRawModule
        self.asarray = self.array = _to_device
        # cupy.empty hands out the memory pool's leftovers: poisoned here, as on the emulator.
        self.empty = lambda *a, **k: poison(_cupy_function('empty', np.empty)(*a, **k))
        self.empty_like = lambda *a, **k: poison(
            _cupy_function('empty_like', np.empty_like)(*a, **k))
        self.asnumpy = lambda a, stream=None, order='C': (
            a.get(order=order) if isinstance(a, DeviceArray) else np.asarray(a, order=order))
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
        value = getattr(np, name)
        if callable(value) and not isinstance(value, type):   # (dtypes stay NumPy's)
            return _cupy_function(name, value)
        return value


def install(monkeypatch):
    """Make nn.device's CuPy import return the stand-in (and CupyRunner need no NVRTC),
    with CupyRunner's module cache emptied for the test: the class keeps one for the
    process, which a real GPU run must not inherit. Returns a fresh CupyRunner."""
    monkeypatch.setattr(nn.device, 'import_cupy_with_gpu', FakeCupy)
    monkeypatch.setattr(runner_module, 'load_nvrtc', lambda: None)
    monkeypatch.setattr(CupyRunner, '_modules', {})
    for name in ('array', 'asarray', 'asanyarray', 'ascontiguousarray'):
        monkeypatch.setattr(np, name, _no_implicit_copy(name, getattr(np, name)))
    FakeRawModule.compiled.clear()
    FakeRawModule.calls.clear()
    return CupyRunner()


