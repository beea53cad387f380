"""Where the network runs: one `Device` per backend, all exposing the same op set.

    cpu   NumPy arrays, the NumPy reference layers (nn/reference.py)
    emu   NumPy arrays, the CUDA kernels run by the CPU emulator (slow; tests, debugging)
    cuda  CuPy arrays, the CUDA kernels on the GPU

`get_device(None)` (or 'auto') picks cuda when CuPy imports and sees a GPU, else cpu.
CuPy and the kernel launchers are imported only when a device needs them.
"""
import os
import sys

import numpy as np

DEVICE_NAMES = ("cuda", "cpu", "emu")


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide."""


class Device:
    """A backend: `name`, array module `xp`, op namespace `ops` and array helpers.

    runner is the KernelRunner behind `ops` for emu/cuda, None for cpu; tf32 says whether
    the ops run convolutions and fc layers on tensor cores (get_device's tf32).
    """

    def __init__(self, name, xp, ops, runner=None, tf32=False):
        self.name = name
        self.xp = xp
        self.ops = ops
        self.runner = runner
        self.tf32 = tf32

    def asarray(self, a, dtype=np.float32):
        """`a` (NumPy, CuPy or a list) as a C-contiguous array of `dtype` on this device."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_numpy(self, a):
        """A device array (or a scalar) as a NumPy array on the host."""
        if self.name == "cuda":
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def synchronize(self):
        """Wait for queued GPU work (a no-op on the CPU devices), e.g. before timing."""
        if self.name == "cuda":
            self.xp.cuda.get_current_stream().synchronize()

    def with_ops(self, ops):
        """This device (same name, arrays and runner) running another op namespace."""
        return Device(self.name, self.xp, ops, self.runner, self.tf32)

    def __repr__(self):
        return f"Device({self.name!r})"


def import_cupy_with_gpu():
    """CuPy if it imports and sees at least one GPU, else raise DeviceError saying why."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library failing to load
        raise DeviceError(f"device 'cuda' needs CuPy (pip install cupy-cuda12x; "
                          f"cupy-cuda13x with a CUDA 13 driver, never both), which "
                          f"failed to import: {exc}; use --device cpu or emu") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver: CUDARuntimeError
        raise DeviceError(f"device 'cuda' needs an NVIDIA GPU and driver, and CuPy sees "
                          f"none ({exc}); use --device cpu or emu") from exc
    if count < 1:
        raise DeviceError("device 'cuda' needs an NVIDIA GPU, and CuPy sees none; "
                          "use --device cpu or emu")
    return cupy


def _no_nvidia_driver():
    """True when this is Linux and no NVIDIA driver node exists (/dev/nvidiactl, or WSL2's
    /dev/dxg): then there is surely no GPU, and importing CuPy (a noticeable part of a
    command's start-up) to find that out can be skipped."""
    return sys.platform.startswith("linux") and not any(
        os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/dxg"))


def cuda_available():
    """True when CuPy imports and sees a GPU (what get_device(None) uses)."""
    if _no_nvidia_driver():
        return False
    try:
        import_cupy_with_gpu()
        return True
    except DeviceError:
        return False


def _kernel_device(name, partial=False, tf32=False):
    """emu or cuda: the kernel op namespace on that backend's runner (kernels/ops.py's
    make_ops, `partial` and `tf32` as there), with the runner's array module (CuPy; for
    the emulator NumPy with poisoned `empty`, kernels/runner.py's poisoned_numpy)."""
    from kernels.ops import make_ops
    from kernels.runner import get_runner
    runner = get_runner(name)   # cuda: a DeviceError saying why when there is no GPU
    return Device(name, runner.xp, make_ops(runner, partial, tf32), runner, tf32)


def get_device(name=None, partial=False, tf32=False):
    """The Device called `name` ('cpu', 'emu', 'cuda'; None or 'auto' picks one).

    A Device passed in is returned unchanged, so functions can take either.
    partial=True: on emu/cuda an op whose launcher is missing raises ImportError only when
    called, instead of get_device raising it (kernels/ops.py's make_ops).
    tf32=True: convolutions and fully connected layers on tensor cores in TF32 (emu, cuda).
    Raises DeviceError for 'cuda' without CuPy or a GPU, or for tf32 on the cpu device;
    ValueError for unknown names.
    """
    if isinstance(name, Device):
        if tf32 and not name.tf32:
            raise ValueError(f"get_device: {name!r} was made without tf32; ask for "
                             "get_device(name, tf32=True)")
        return name
    if name is None or name == "auto":
        name = "cuda" if cuda_available() else "cpu"
    if tf32 and name == "cpu":
        raise DeviceError("TF32 (tensor cores) is a kernel path: use --device cuda (or emu "
                          "to check it on the CPU emulator)")
    if name == "cpu":
        from nn import reference
        from nn.memory import keep_freed_memory
        keep_freed_memory()   # the NumPy layers reuse large buffers without page faults
        return Device("cpu", np, reference)
    if name in ("emu", "cuda"):
        return _kernel_device(name, partial, tf32)
    raise ValueError(f"unknown device {name!r}: expected one of {', '.join(DEVICE_NAMES)} "
                     "or None/'auto'")


def add_device_argument(parser):
    """Add the shared `--device {auto,cuda,cpu,emu}` and `--tf32` options to an argparse
    parser. The parsed values go straight to get_device(args.device, tf32=args.tf32)
    (auto: cuda when a GPU is usable, else cpu)."""
    parser.add_argument(
        "--device", choices=("auto",) + DEVICE_NAMES, default="auto",
        help="where to run: cuda (GPU kernels via CuPy), cpu (NumPy reference), "
             "emu (the CUDA kernels on the CPU emulator, slow); default auto = cuda "
             "when a GPU is usable, else cpu")
    parser.add_argument(
        "--tf32", action="store_true",
        help="convolutions and fully connected layers on the GPU's tensor cores in TF32 "
             "(10-bit mantissas, about 5e-4 relative error; cuda with compute capability "
             ">= 8.0, or emu)")
    return parser
