"""A pytest plugin that runs the `gpu` tests on tests/fake_cupy.py's stand-in for CuPy,
here, without a GPU: a dry run that finds a Python mistake in them (a wrong argument, a
forgotten copy between host and device) before a GPU's scarce time is spent on it.

    python -m pytest -p tests.stand_in_gpu -m gpu tests/test_relu_kernels.py

The kernels then run on the emulator, thousands of times slower than a GPU: the tests at
batch 1 take seconds, those at batch 64 minutes (the convolutions and fc6 longer); give
a few files or tests at a time. Passing here says nothing of a GPU's results.
"""
import sys

import pytest

from tests import fake_cupy

_patch = pytest.MonkeyPatch()


def pytest_configure(config):
    cupy = fake_cupy.FakeCupy()
    cupy.cuda.runtime.getDeviceCount = lambda: 1   # tests/conftest.py: "a GPU is there"
    _patch.setitem(sys.modules, 'cupy', cupy)
    _patch.setattr('nn.device._no_nvidia_driver', lambda: False)
    fake_cupy.install(_patch)


def pytest_unconfigure(config):
    _patch.undo()
