"""Every kernels/*.cu compiles for the GPU (NVRTC, sm_75, sm_80 and sm_90), without a GPU.

The source is assembled exactly as CupyRunner does (prelude + `#line 1 "<file>"` + file) and
compiled with NVRTC's low-level calls, which work on machines without a CUDA device, with
the options CuPy's RawModule uses: ours plus the `-ftz=true` CuPy adds, straight to a cubin
for the real architecture (as CuPy does), so ptxas' checks (shared memory per block,
registers) run too, not only the front end (kernels/runner.py nvrtc_cubin).
"""
import pytest

from kernels.runner import (KernelCompileError, assemble_source, find_kernels, load_nvrtc,
                            nvrtc_cubin, project_kernel_files, read_text, resolve_source)

# sm_75 (T4) too: the TF32 code must compile there as a trap (prelude.cuh), so the
# kernels' FP32 versions still run on GPUs without TF32 tensor cores.
ARCHS = ('sm_75', 'sm_80', 'sm_90')


@pytest.fixture(scope='module')
def nvrtc():
    try:
        return load_nvrtc()
    except ImportError as e:
        pytest.skip(f'NVRTC not available (needs cupy-cuda12x and nvidia-cuda-nvrtc-cu12): {e}')


def nvrtc_compile(nvrtc, source, name, arch):
    """Compile with NVRTC to a cubin (as CupyRunner does); returns the log, raises
    KernelCompileError on failure."""
    cubin, log = nvrtc_cubin(source, name, arch)
    assert cubin[:4] == b'\x7fELF', f'{name}: no cubin for {arch}'
    return log


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('name', project_kernel_files())
def test_project_kernels_compile(nvrtc, name, arch):
    path, display = resolve_source(name)
    assert find_kernels(read_text(path)), f'{display} has no extern "C" __global__ kernel'
    nvrtc_compile(nvrtc, assemble_source(path, display), display, arch)


@pytest.mark.parametrize('arch', ARCHS)
def test_prelude_features_compile(nvrtc, tmp_path, arch):
    # Two kernels using EXTERN_SHARED with different types, and the prelude's constants.
    path = tmp_path / 'toy.cu'
    path.write_text('extern "C" __global__ void a(float* y) { EXTERN_SHARED(float, t); '
                    't[threadIdx.x] = FLT_MAX + FLT_MIN + INFINITY; __syncthreads(); '
                    'y[threadIdx.x] = t[0] + NAN; }\n'
                    'extern "C" __global__ void b(int* y) { EXTERN_SHARED(int, t); '
                    't[threadIdx.x] = INT_MAX; __syncthreads(); y[0] = t[0]; }\n')
    p, display = resolve_source(str(path))
    nvrtc_compile(nvrtc, assemble_source(p, display), display, arch)


def test_nvrtc_error_names_file_and_line(nvrtc, tmp_path):
    path = tmp_path / 'broken.cu'
    path.write_text('extern "C" __global__ void broken(float* y)\n{\n'
                    '    y[threadIdx.x] = undefined_name;\n}\n')
    p, display = resolve_source(str(path))
    with pytest.raises(KernelCompileError) as info:
        nvrtc_compile(nvrtc, assemble_source(p, display), display, 'compute_80')
    assert info.value.file.endswith('broken.cu') and info.value.line == 3
    assert 'undefined_name' in str(info.value)


def test_ptxas_limits_are_checked(nvrtc, tmp_path):
    """64 KiB of static shared memory passes NVRTC's front end but not ptxas (48 KiB)."""
    path = tmp_path / 'big.cu'
    path.write_text('extern "C" __global__ void big(float* y)\n{\n'
                    '    __shared__ float b[16384];\n    b[threadIdx.x] = 1.0f;\n'
                    '    __syncthreads();\n    y[threadIdx.x] = b[threadIdx.x + 1];\n}\n')
    p, display = resolve_source(str(path))
    with pytest.raises(KernelCompileError, match=r"(?s)big.cu:.*too much shared data") as info:
        nvrtc_compile(nvrtc, assemble_source(p, display), display, 'sm_80')
    assert '\x00' not in str(info.value)
