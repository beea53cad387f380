"""Helpers shared by the kernel tests (tests/test_*_kernels.py).

The fixtures that give those tests a runner live in tests/conftest.py:
    emu   an emulator runner, once per thread order in EMU_ORDERS (a test module may set
          its own module-level EMU_ORDERS, e.g. with 'random' for kernels that synchronise
          through shared memory)
    cuda  a CuPy runner on the GPU (only for tests marked gpu)
"""
import numpy as np

# Thread orders inside a block that every kernel test runs under: the kernels must not
# depend on which thread of a block goes first.
EMU_ORDERS = ("forward", "reverse")
# For kernels that synchronise through shared memory: a random order (a new one at every
# barrier) as well, to catch a missing __syncthreads.
EMU_ORDERS_WITH_RANDOM = EMU_ORDERS + ("random",)


def to_host(a):
    """A device array (cupy) or a host array (numpy) as a NumPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def assert_close(got, want, name="", rtol=1e-4):
    """Elementwise |got - want| <= rtol * (|want| + max |want|).

    The absolute part scales with the result's magnitude, so a float32 kernel result can be
    compared with a float64 reference of any size; a wrong index or a lost term is far
    above it. `got` may be a device array; `name` goes into the failure message.
    """
    want = np.asarray(want)
    biggest = float(np.abs(want).max())
    assert biggest > 0, f"{name}: the reference is all zeros, the check is void"
    np.testing.assert_allclose(to_host(got), want, rtol=rtol, atol=rtol * biggest,
                               err_msg=name)


RELU_MARGIN = 1e-4   # relative to max |y|: pre-ReLU outputs this close to 0 get dy = 0


def zero_dy_near_relu_kink(dy, y_pre):
    """dy with 0 where the float64 pre-ReLU output y_pre is within RELU_MARGIN * max|y_pre|
    of 0 (in place; returns dy).

    A kernel masks dy by the sign of its own float32 y. Where y is within rounding of 0
    that sign may differ from float64's, and one flip (about one in millions at CaffeNet's
    shapes, batch 64) moves a whole dy term into dx, dw and db. With dy 0 there both masks
    agree. The margin is ~50x the largest float32 error of y measured at those shapes, and
    zeroes about one dy in 3,000."""
    dy[np.abs(y_pre) <= RELU_MARGIN * np.abs(y_pre).max()] = 0
    return dy


def uniform(rng, shape):
    """float32 values of `shape` in [-1, -0.1] u [0.1, 1]: no zeros, both signs."""
    a = rng.uniform(0.1, 1.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return a.astype(np.float32)


def tf32_round(a):
    """float32 `a` rounded to TF32 as cvt.rna.tf32.f32 (kernels/prelude.cuh tf32_round)
    does: to nearest with ties away from zero, keeping 10 of the 23 mantissa bits; inf and
    NaN unchanged. The reference the tensor-core versions are held to takes its inputs
    through this."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    finite = (u & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    rounded = (u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return np.where(finite, rounded, u).astype(np.uint32).view(np.float32)
