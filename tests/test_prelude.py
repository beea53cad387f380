"""kernels/prelude.cuh's index helpers at sizes no test array could have: an offset past
2^31 must not wrap around in 32-bit arithmetic (the kernels' tensors are tested small,
where a wrapped offset and a right one agree)."""
import numpy as np
import pytest

from tests.kernel_testing import to_host

KERNELS = r'''
/* out[2i], out[2i + 1] = low and high 32 bits of column_offset(col, C, S) for the i-th
   (col, C, S) triple of args. */
extern "C" __global__ void column_offsets(const int* args, unsigned int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        long long off = column_offset(args[3 * i], args[3 * i + 1], args[3 * i + 2]);
        out[2 * i] = (unsigned int)(off & 0xffffffffLL);
        out[2 * i + 1] = (unsigned int)(off >> 32);
    }
}
'''


@pytest.fixture
def source(tmp_path):
    path = tmp_path / 'prelude_helpers.cu'
    path.write_text(KERNELS)
    return str(path)


def check_column_offsets(runner, source):
    # (col, C, S): small; softmax over a 2^21-column map of 4096 classes (2^33 floats);
    # LRN columns of CaffeNet's conv1 at a batch past 2^31 / (96 * 55 * 55) images
    cases = np.array([(7, 3, 5), ((1 << 21) + 5, 4096, 1024), (8000 * 3025 + 17, 96, 3025)],
                     dtype=np.int32)
    out = runner.xp.zeros(2 * len(cases), dtype=np.uint32)
    runner.kernel(source, 'column_offsets')((1, 1, 1), (32, 1, 1),
                                            (runner.xp.asarray(cases.ravel()), out,
                                             np.int32(len(cases))))
    got = to_host(out).astype(np.int64)
    got = got[0::2] + (got[1::2] << 32)
    want = [(col // s) * c * s + col % s for col, c, s in cases.tolist()]
    assert got.tolist() == want and want[1] > 2 ** 32 and want[2] > 2 ** 31


def test_column_offset_past_int32(emu, source):
    check_column_offsets(emu, source)


@pytest.mark.gpu
def test_column_offset_past_int32_gpu(cuda, source):
    check_column_offsets(cuda, source)
