"""The TF32 tensor-core building blocks of kernels/prelude.cuh, on the emulator and (with
-m gpu) on the GPU: tf32_round against hand-worked cases, and one mma.sync.m16n8k8 tile
against NumPy, its fragments placed as the PTX ISA's "Matrix Fragments for mma.m16n8k8"
(.tf32) lays them out. On a GPU the second test checks that layout against the hardware;
the products' TF32 versions (conv version 3, gemm version 4) depend on it.
"""
import numpy as np
import pytest

from tests.kernel_testing import tf32_round, to_host

KERNELS = r'''
extern "C" __global__ void round_tf32(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = tf32_round(x[i]);
}

/* D (16 x 8) += A (16 x 8) B (8 x 8), all row-major, by one warp. */
extern "C" __global__ void mma_tile(const float* A, const float* B, float* D) {
    int lane = threadIdx.x, g = lane / 4, q = lane % 4;
    float a[4] = {A[g * 8 + q], A[(g + 8) * 8 + q], A[g * 8 + q + 4], A[(g + 8) * 8 + q + 4]};
    float b[2] = {B[q * 8 + g], B[(q + 4) * 8 + g]};
    float d[4] = {D[g * 8 + 2 * q], D[g * 8 + 2 * q + 1], D[(g + 8) * 8 + 2 * q],
                  D[(g + 8) * 8 + 2 * q + 1]};
    mma_m16n8k8_tf32(d, a, b);
    D[g * 8 + 2 * q] = d[0];
    D[g * 8 + 2 * q + 1] = d[1];
    D[(g + 8) * 8 + 2 * q] = d[2];
    D[(g + 8) * 8 + 2 * q + 1] = d[3];
}
'''


@pytest.fixture
def source(tmp_path):
    path = tmp_path / 'tensor_cores.cu'
    path.write_text(KERNELS)
    return str(path)


def bits(values):
    return np.array(values, dtype=np.uint32).view(np.float32)


def test_numpy_tf32_round_hand_worked():
    # 1 + 2^-11 is halfway between two TF32 values: away from zero. 1 + 2^-12 rounds down,
    # 1 + 3 * 2^-12 up; the sign does not change the magnitude's rounding; inf and NaN stay.
    x = bits([0x3F801000, 0x3F800800, 0x3F801800, 0xBF801000, 0x7F800000, 0x7FC00001,
              0x7F7FFFFF])
    want = bits([0x3F802000, 0x3F800000, 0x3F802000, 0xBF802000, 0x7F800000, 0x7FC00001,
                 0x7F800000])
    np.testing.assert_array_equal(tf32_round(x).view(np.uint32), want.view(np.uint32))


def check_round(runner, source):
    rng = np.random.default_rng(3)
    nans = bits([0x7FC00001, 0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF])   # rounding must not
    x = np.concatenate([bits([0x3F801000, 0x3F800800, 0xBF801000, 0x7F800000]), nans,  # carry
                        rng.standard_normal(993).astype(np.float32)])   # into the exponent
    y = runner.xp.empty(x.shape, dtype=np.float32)
    runner.kernel(source, 'round_tf32')((4, 1, 1), (256, 1, 1),
                                        (runner.xp.asarray(x), y, np.int32(x.size)))
    got, nan = to_host(y), np.isnan(x)
    assert np.isnan(got[nan]).all()   # NaN stays NaN (its payload is the hardware's)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), tf32_round(x[~nan]).view(np.uint32))


def check_mma(runner, source):
    rng = np.random.default_rng(4)
    a = tf32_round(rng.standard_normal((16, 8)).astype(np.float32))
    b = tf32_round(rng.standard_normal((8, 8)).astype(np.float32))
    d0 = rng.standard_normal((16, 8)).astype(np.float32)
    want = d0 + a.astype(np.float64) @ b.astype(np.float64)
    d = runner.xp.array(d0)   # a copy: the kernel adds into it
    runner.kernel(source, 'mma_tile')((1, 1, 1), (32, 1, 1),
                                      (runner.xp.asarray(a), runner.xp.asarray(b), d))
    # TF32 products are exact in float32; only the order of the 8 sums may differ.
    np.testing.assert_allclose(to_host(d), want, rtol=1e-6, atol=1e-6)


def test_tf32_round_kernel(emu, source):
    check_round(emu, source)


def test_mma_tile_layout(emu, source):
    check_mma(emu, source)


@pytest.mark.gpu
def test_tf32_round_kernel_gpu(cuda, source):
    check_round(cuda, source)


@pytest.mark.gpu
def test_mma_tile_layout_gpu(cuda, source):
    """The PTX ISA's fragment layout, as the kernels assume it, against the hardware."""
    check_mma(cuda, source)
