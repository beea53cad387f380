"""The device and its op sets: open_device (the device, its timer, its array Library),
subject_ops (what is timed on it) and reference_ops (the float64 NumPy truth)."""
import functools
import types

from kernels.ops import OP_NAMES   # the op set of docs/design.md
from tools.bench import BenchError
from tools.bench.timers import CpuTimer, GpuTimer


class Library:
    """Moves NumPy inputs into one library's arrays and results back.

    to_lib(a) keeps integer arrays integer; to_numpy(a) handles Python floats too.
    """

    def __init__(self, name, to_lib, to_numpy):
        self.name, self.to_lib, self.to_numpy = name, to_lib, to_numpy

    def convert(self, inputs):
        return {n: self.to_lib(a) for n, a in inputs.items()}


def _numpy_matmul(a, b, trans_a=False, trans_b=False):
    """The CPU path's matrix product (NumPy's BLAS), with kernels/gemm.py's signature."""
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def subject_ops(device):
    """The op namespace to time: a copy of device.ops plus `matmul` (the gemm launcher on
    the GPU, NumPy's on the CPU). Tests replace this function to inject bugs."""
    ops = types.SimpleNamespace(**{n: getattr(device.ops, n) for n in OP_NAMES})
    ops.matmul = _numpy_matmul
    if device.runner is not None:
        try:
            from kernels.gemm import matmul
            ops.matmul = functools.partial(matmul, device.runner)
        except ImportError as exc:
            ops.matmul = _missing(f'kernels/gemm.py: {exc}')
    return ops


def reference_ops():
    """The NumPy reference op set (plus matmul): the truth every result is checked against."""
    from nn import reference
    ops = types.SimpleNamespace(**{n: getattr(reference, n) for n in OP_NAMES})
    ops.matmul = _numpy_matmul
    return ops


def _missing(why):
    """An op that is not there: calling it raises ImportError(why)."""
    def op(*args, **kwargs):
        raise ImportError(why)
    return op


def open_device(name, tf32=False):
    """(Device, timer, array Library) for 'cpu', 'emu', 'cuda' or 'auto' (nn/device.py's
    choice); BenchError when impossible. On emu/cuda a missing kernel launcher fails only
    the cases that call it: the kernels that exist are still timed. tf32: the device's
    convolutions and fully connected layers on tensor cores (nn/device.py)."""
    from nn.device import DeviceError, get_device
    try:
        device = get_device(name, partial=True, tf32=tf32)
    except DeviceError as exc:
        if tf32:
            raise BenchError(f'--tf32: {exc}') from exc
        raise BenchError(f'--device {name}: {exc}') from exc   # (it says what to use)
    # cpu, or emu (the CUDA kernels on the CPU emulator: checks the kernel path) time on
    # the CPU clock.
    timer = GpuTimer('cupy', device.xp) if device.name == 'cuda' else CpuTimer()
    lib = Library(device.name, lambda a: device.asarray(a, a.dtype), device.to_numpy)
    return device, timer, lib
