"""tools/sass_stats.py: ptxas' report and the main-loop count, on hand-written compiler
output, and one real compile through NVRTC (skipped without it; no GPU needed)."""
import json
import struct

import pytest

from kernels import runner
from tools import sass_stats

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'slow' for 'sm_90'
ptxas info    : Function properties for slow
ptxas         .     40 bytes stack frame, 36 bytes spill stores, 44 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 16896 bytes smem
ptxas info    : Compile time = 93.146 ms
ptxas info    : Compiling entry function 'tiny' for 'sm_90'
ptxas info    : Function properties for tiny
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers
"""

# An outer loop (0x0010 .. 0x00b0) around an inner one (0x0030 .. 0x0070); a forward
# branch (0x0080) is no loop. The outer holds 4 FFMAs, the inner 3.
SASS = """\
        /*0000*/                   MOV R1, c[0x0][0x28] ;           /* 0x00000a0000017a02 */
        /*0010*/                   FFMA R2, R3, R4, R2 ;            /* 0x0000000403027223 */
        /*0020*/                   IADD3 R5, R5, 0x1, RZ ;          /* 0x0000000105057810 */
        /*0030*/                   FFMA.FTZ R6, R7, R8, R6 ;        /* 0x0000000807067223 */
        /*0040*/              @!P0 FFMA.FTZ R6, R7, R9, R6 ;        /* 0x0000000907068223 */
        /*0050*/                   LDS.128 R8, [R10] ;              /* 0x000000000a087984 */
        /*0060*/                   FFMA.FTZ R6, R7, R8, R6 ;        /* 0x0000000807067223 */
        /*0070*/               @P1 BRA 0x30 ;                       /* 0xfffffffc00e01947 */
        /*0080*/               @P2 BRA 0xa0 ;                       /* 0x0000000000042947 */
        /*0090*/                   ISETP.GE.AND P2, PT, R5, R11, PT ; /* 0x0000000b0500720c */
        /*00a0*/                   NOP ;                            /* 0x0000000000007918 */
        /*00b0*/              @!P2 BRA 0x10 ;                       /* 0xfffffff400d0a947 */
        /*00c0*/                   EXIT ;                           /* 0x000000000000794d */
"""


def test_ptxas_report_per_kernel():
    assert sass_stats.parse_ptxas_report(PTXAS_LOG) == {
        'slow': {'registers': 128, 'spill_stores': 36, 'spill_loads': 44,
                 'shared_bytes': 16896},
        'tiny': {'registers': 14, 'spill_stores': 0, 'spill_loads': 0, 'shared_bytes': 0}}


def test_main_loop_is_the_loop_with_most_ffma():
    instructions = sass_stats.parse_sass(SASS)
    assert len(instructions) == 13 and instructions[4] == (0x40, '@!P0 FFMA.FTZ R6, R7, R9, R6')
    assert sass_stats.main_loop(instructions) == {
        'instructions': 11, 'opcode': 'FFMA', 'count': 4, 'share': 4 / 11, 'start': 0x10,
        'end': 0xb0}
    assert sass_stats.main_loop(instructions, 'LDS') == {
        'instructions': 5, 'opcode': 'LDS', 'count': 1, 'share': 1 / 5, 'start': 0x30,
        'end': 0x70}
    assert sass_stats.main_loop(instructions, 'HMMA') is None
    inner_only = [ins for ins in instructions if ins[0] != 0x10]   # outer's own FFMA gone
    assert sass_stats.main_loop(inner_only)['start'] == 0x30       # a tie: the innermost
    assert sass_stats.main_loop(instructions[:3]) is None           # no loop


def test_truncated_elf_is_padded_to_its_header_tables():
    """CuPy's getCUBIN drops the last byte; the section headers end past the data."""
    header = bytearray(64)
    header[:4] = b'\x7fELF'
    struct.pack_into('<QQ', header, 0x20, 64, 200)          # phoff, shoff
    struct.pack_into('<HHHH', header, 0x36, 56, 1, 64, 2)   # phentsize/num, shentsize/num
    data = bytes(header) + b'\x01' * 263                     # 327 bytes, tables end at 328
    whole = runner._whole_elf(data)
    assert whole == data + b'\x00' and runner._whole_elf(whole) == whole
    assert runner._whole_elf(b'not an elf') == b'not an elf'


@pytest.fixture(scope='module')
def nvrtc():
    try:
        return runner.load_nvrtc()
    except ImportError as e:
        pytest.skip(f'NVRTC not available: {e}')


def test_real_compile_reports_every_kernel(nvrtc, tmp_path, monkeypatch, capsys):
    path = tmp_path / 'two.cu'
    path.write_text('extern "C" __global__ void scale(float* y, float a) '
                    '{ y[threadIdx.x] *= a; }\n'
                    'extern "C" __global__ void stage(float* y) { __shared__ float t[300]; '
                    't[threadIdx.x] = y[threadIdx.x]; __syncthreads(); '
                    'y[threadIdx.x] = t[299 - threadIdx.x]; }\n')
    stats = sass_stats.file_stats(str(path), 'sm_80')
    assert set(stats) == {'scale', 'stage'}
    assert stats['stage']['shared_bytes'] == 1200 and stats['scale']['shared_bytes'] == 0
    assert all(0 < s['registers'] <= 255 for s in stats.values())
    assert 'main_loop' not in stats['scale']          # no cuobjdump asked for
    monkeypatch.setattr(sass_stats, 'find_cuobjdump', lambda: None)
    assert sass_stats.main([str(path), '--arch', 'sm_80']) == 0
    out, err = capsys.readouterr()
    assert 'two.cu:stage' in out and 'no cuobjdump found' in err


def test_compile_error_names_the_file_and_line(nvrtc, tmp_path, capsys):
    path = tmp_path / 'broken.cu'
    path.write_text('extern "C" __global__ void broken(float* y)\n{\n    y[0] = nope;\n}\n')
    assert sass_stats.main([str(path), '--no-sass']) == 2
    assert 'broken.cu:3' in capsys.readouterr().err


def test_failing_cuobjdump_is_an_error_not_a_missing_loop(nvrtc, tmp_path):
    fake = tmp_path / 'cuobjdump'
    fake.write_text('#!/bin/sh\necho "cuobjdump fatal: bad cubin" >&2\nexit 1\n')
    fake.chmod(0o755)
    path = tmp_path / 'one.cu'
    path.write_text('extern "C" __global__ void one(float* y) { y[0] = 1.0f; }\n')
    with pytest.raises(RuntimeError, match='-fun one failed: cuobjdump fatal: bad cubin'):
        sass_stats.file_stats(str(path), 'sm_80', str(fake))


def test_files_as_names_or_paths_and_the_json(nvrtc, tmp_path, monkeypatch, capsys):
    # 'kernels/relu.cu' (a path from the repository root, as tab completion writes it)
    # works as well as the name 'relu.cu'; --json is written whole, or refused up front
    monkeypatch.chdir(runner.REPO_ROOT)
    out_json = tmp_path / 'stats.json'
    assert sass_stats.main(['kernels/relu.cu', 'sgd.cu', '--no-sass', '--json',
                            str(out_json)]) == 0
    assert set(json.loads(out_json.read_text())['kernels']) == {'relu.cu', 'sgd.cu'}
    capsys.readouterr()
    blocker = tmp_path / 'file'
    blocker.write_text('')
    with pytest.raises(SystemExit) as exc:
        sass_stats.main(['relu.cu', '--no-sass', '--json', str(blocker / 'x.json')])
    assert exc.value.code == 2 and f'--json {blocker / "x.json"}: cannot write' in \
        capsys.readouterr().err


def test_cuobjdump_finds_the_nvdisasm_beside_it(nvrtc, tmp_path):
    # NVIDIA's wheels put cuobjdump and the nvdisasm it runs in one bin folder, not on PATH
    for name, script in (('cuobjdump', 'command -v nvdisasm >/dev/null || '
                                       '{ echo "Could not find nvdisasm" >&2; exit 1; }\n'),
                         ('nvdisasm', 'exit 0\n')):
        (tmp_path / name).write_text('#!/bin/sh\n' + script)
        (tmp_path / name).chmod(0o755)
    path = tmp_path / 'one.cu'
    path.write_text('extern "C" __global__ void one(float* y) { y[0] = 1.0f; }\n')
    stats = sass_stats.file_stats(str(path), 'sm_80', str(tmp_path / 'cuobjdump'))
    assert stats['one']['main_loop'] is None    # (the fake prints no code: no loop)
