"""Shared test set-up: the repository root on sys.path, the `gpu` and `slow` markers, and
the runner fixtures of the kernel tests (`emu`, `cuda`; see tests/kernel_testing.py)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _gpu_available():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU and CuPy (skipped otherwise)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="no GPU: CuPy is not installed or sees no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    """Run every test that uses `emu` once per thread order: the test module's EMU_ORDERS
    if it sets one, else kernel_testing.EMU_ORDERS."""
    if "emu_order" in metafunc.fixturenames:
        from tests.kernel_testing import EMU_ORDERS
        metafunc.parametrize("emu_order", getattr(metafunc.module, "EMU_ORDERS", EMU_ORDERS))


@pytest.fixture
def emu(emu_order):
    """The CPU emulator running each block's threads in `emu_order`; the random order's
    seed is 0, or SEED from CAFFENET_EMU_ORDER=random:SEED (to try other orders)."""
    from kernels.runner import get_runner
    env_order, _, env_seed = os.environ.get("CAFFENET_EMU_ORDER", "").partition(":")
    seed = int(env_seed) if emu_order == "random" == env_order and env_seed else 0
    return get_runner("emu", order=emu_order, seed=seed)


@pytest.fixture(scope="session")
def cuda():
    """The CuPy runner (the GPU); use only in tests marked gpu, which skip without one."""
    from kernels.runner import get_runner
    return get_runner("cuda")
