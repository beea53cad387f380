"""Static figures of the compiled kernels, no GPU needed: registers, spills and shared memory
of every kernel, and how many of its main loop's instructions are FMAs.

    python -m tools.sass_stats                          # every kernels/*.cu, for sm_90
    python -m tools.sass_stats conv.cu gemm.cu --arch sm_80 --json stats.json

Each file is compiled as CuPy compiles it on a GPU (NVRTC, CuPy's options, straight to a
cubin: kernels/runner.py nvrtc_cubin), with ptxas asked for its report (registers, spill
bytes, static shared memory). When cuobjdump is installed (any CUDA toolkit, or
`pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`, which it needs beside it; never
a project requirement) the cubin's machine code (SASS) is read too: the "main loop" of a
kernel is its loop with the most FFMA instructions, innermost if several tie, and the
table gives that loop's length and its FFMA share; for a kernel with a TF32 path, also the length of its loop with the most HMMA
(tensor-core) instructions and their count.

Why the FFMA share matters: on sm_90 (H100, H200) a scheduler issues one instruction per
cycle and has an FMA unit for a whole warp, so every address computation, compare or load
in the loop takes the slot of an FMA, and the share bounds the fraction of the FP32 peak
the kernel can reach. (On sm_80, A100, a warp's FMA takes two cycles: a share of 50% can
still reach the peak there.) It is counted statically, each
instruction of the loop body once, whichever branches a run takes: a loop that holds two
alternative paths looks longer than either. It is a reading of the code, not a
measurement of speed: bench.py on a GPU is that.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from kernels.runner import (KernelCompileError, assemble_source, find_kernels, nvrtc_cubin,
                            project_kernel_files, read_text, resolve_source)
from nn.atomic import atomic_write, check_writable

# ptxas -v, one block per kernel:
#   ptxas info    : Compiling entry function 'gemm_v3' for 'sm_90'
#   ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
#   ptxas info    : Used 124 registers, used 1 barriers, 16896 bytes smem
_ENTRY_RE = re.compile(r"Compiling entry function '(\w+)'")
_SPILL_RE = re.compile(r'(\d+) bytes spill stores, (\d+) bytes spill loads')
_USED_RE = re.compile(r'Used (\d+) registers')
_SMEM_RE = re.compile(r'(\d+) bytes smem')

# A SASS line:   /*0d40*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;   /* 0x...
_SASS_RE = re.compile(r'/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;')
_BRANCH_RE = re.compile(r'\bBRA\b.*?(0x[0-9a-f]+)')


def parse_ptxas_report(log):
    """{kernel: {'registers', 'spill_stores', 'spill_loads', 'shared_bytes'}} from ptxas'
    verbose report (the NVRTC log of a compile with --ptxas-options=-v)."""
    stats, current = {}, None
    for line in log.splitlines():
        m = _ENTRY_RE.search(line)
        if m:
            current = stats.setdefault(m.group(1), {'registers': None, 'spill_stores': 0,
                                                     'spill_loads': 0, 'shared_bytes': 0})
            continue
        if current is None:
            continue
        m = _SPILL_RE.search(line)
        if m:
            current['spill_stores'], current['spill_loads'] = int(m.group(1)), int(m.group(2))
        m = _USED_RE.search(line)
        if m:
            current['registers'] = int(m.group(1))
            smem = _SMEM_RE.search(line)
            current['shared_bytes'] = int(smem.group(1)) if smem else 0
    return stats


def parse_sass(text):
    """[(address, instruction)] of one kernel's cuobjdump -sass listing (predicates and
    operands kept, encodings dropped)."""
    return [(int(m.group(1), 16), m.group(2)) for m in _SASS_RE.finditer(text)]


def _opcode(instruction):
    """'FFMA' of '@!P0 FFMA.FTZ R1, R2, R3, R4': the predicate and the modifiers dropped
    (CuPy compiles with -ftz=true, so its FMAs are FFMA.FTZ)."""
    words = instruction.split()
    word = words[1] if words[0].startswith('@') and len(words) > 1 else words[0]
    return word.split('.')[0]


def main_loop(instructions, opcode='FFMA'):
    """The kernel's main loop for `opcode` ('FFMA': CUDA cores; 'HMMA': tensor cores): the
    body of a backward branch (target .. branch) with the most such instructions, the
    shortest body among equals (the innermost). Returns {'instructions', 'opcode', 'count',
    'share', 'start', 'end'} or None when no loop holds one."""
    best = None
    for address, instruction in instructions:
        m = _BRANCH_RE.search(instruction)
        if not m or _opcode(instruction) != 'BRA' or int(m.group(1), 16) > address:
            continue
        start = int(m.group(1), 16)
        body = [ins for a, ins in instructions if start <= a <= address]
        count = sum(_opcode(ins) == opcode for ins in body)
        key = (count, -len(body))
        if count and (best is None or key > best[0]):
            best = (key, {'instructions': len(body), 'opcode': opcode, 'count': count,
                          'share': count / len(body), 'start': start, 'end': address})
    return None if best is None else best[1]


def find_cuobjdump():
    """Path of cuobjdump: on PATH, in a CUDA toolkit, or from NVIDIA's pip wheel; None."""
    found = shutil.which('cuobjdump')
    if found:
        return found
    candidates = [os.path.join(os.environ.get('CUDA_HOME', '/usr/local/cuda'), 'bin',
                               'cuobjdump')]
    for base in sys.path:
        candidates += sorted(glob.glob(os.path.join(base, 'nvidia', '*', 'bin', 'cuobjdump')))
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def _with_nvdisasm(cuobjdump):
    """The environment for running cuobjdump: it disassembles through nvdisasm, found on
    PATH, which NVIDIA's wheels put in the same bin folder without adding it to PATH."""
    env = dict(os.environ)
    env['PATH'] = os.pathsep.join([os.path.dirname(cuobjdump), env.get('PATH', '')])
    return env


def file_stats(name, arch, cuobjdump=None):
    """{kernel: stats} for one kernels/ file (name or path): parse_ptxas_report's figures,
    plus 'main_loop' (see main_loop) when cuobjdump is given."""
    path, display = resolve_source(name)
    cubin, log = nvrtc_cubin(assemble_source(path, display), display, arch,
                             ('--ptxas-options=-v',))
    stats = parse_ptxas_report(log)
    for kernel in find_kernels(read_text(path)):
        stats.setdefault(kernel, {})
    if cuobjdump:
        with tempfile.TemporaryDirectory() as tmp:
            cubin_path = os.path.join(tmp, 'kernels.cubin')
            with open(cubin_path, 'wb') as f:
                f.write(cubin)
            for kernel in stats:
                sass = subprocess.run([cuobjdump, '-sass', '-fun', kernel, cubin_path],
                                      capture_output=True, text=True, timeout=120,
                                      env=_with_nvdisasm(cuobjdump))
                if sass.returncode != 0:   # not to be mistaken for "no FMA loop"
                    raise RuntimeError(f'{cuobjdump} -sass -fun {kernel} failed: '
                                       f'{sass.stderr.strip() or sass.returncode}')
                code = parse_sass(sass.stdout)
                stats[kernel]['main_loop'] = main_loop(code)
                tensor = main_loop(code, 'HMMA')
                if tensor:   # a TF32 path (kernels/prelude.cuh slab_multiply_tf32)
                    stats[kernel]['tensor_loop'] = tensor
    return stats


def format_table(results, arch):
    """The human-readable table of {file: {kernel: stats}}."""
    width = max([len(f'{name}:{kernel}') for name, kernels in results.items()
                 for kernel in kernels] + [6])
    lines = [f"{'kernel':{width}} {'regs':>4} {'spill st/ld':>11} {'smem':>6}  main loop "
             f"(instructions, FFMA share), {arch}"]
    for name, kernels in results.items():
        for kernel, s in sorted(kernels.items()):
            loop, tensor = s.get('main_loop'), s.get('tensor_loop')
            where = ('-' if loop is None else
                     f"{loop['instructions']:5d} instructions, {loop['count']:4d} FFMA "
                     f"({100 * loop['share']:.0f}%)") if 'main_loop' in s else ''
            if tensor:
                where += (f"; tensor cores: {tensor['instructions']} instructions, "
                          f"{tensor['count']} HMMA")
            regs = '?' if s.get('registers') is None else s['registers']
            spills = f"{s.get('spill_stores', 0)}/{s.get('spill_loads', 0)}"
            lines.append(f"{name + ':' + kernel:{width}} {regs:>4} {spills:>11} "
                         f"{s.get('shared_bytes', 0):6d}  {where}")
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('files', nargs='*',
                        help='kernel files: names in kernels/ (conv.cu) or paths '
                             '(kernels/conv.cu); default: all of kernels/*.cu')
    parser.add_argument('--arch', default='sm_90', help='GPU architecture (default sm_90, '
                        'the H200; sm_80 is the A100)')
    parser.add_argument('--json', metavar='FILE', help='also write every figure to FILE')
    parser.add_argument('--no-sass', action='store_true',
                        help='skip the machine code (only what ptxas reports)')
    args = parser.parse_args(argv)
    if not re.fullmatch(r'sm_\d+a?', args.arch):
        parser.error(f"--arch must look like sm_90, got {args.arch!r}")
    if args.json:   # now, rather than after compiling every file
        try:
            check_writable(args.json)
        except OSError as exc:
            parser.error(f'--json {args.json}: {exc}')
    cuobjdump = None if args.no_sass else find_cuobjdump()
    if not args.no_sass and cuobjdump is None:
        print('sass_stats: no cuobjdump found (pip install nvidia-cuda-cuobjdump '
              'nvidia-cuda-nvdisasm, or a CUDA toolkit); showing only what ptxas reports',
              file=sys.stderr)
    try:
        # A path that exists from here (kernels/conv.cu) is taken as it is, anything
        # else as a name in kernels/.
        results = {os.path.basename(n): file_stats(os.path.abspath(n) if os.path.isfile(n)
                                                   else n, args.arch, cuobjdump)
                   for n in (args.files or project_kernel_files())}
    except (KernelCompileError, ImportError, OSError, ValueError, RuntimeError,
            subprocess.SubprocessError) as exc:
        print(f'sass_stats: {exc}', file=sys.stderr)
        return 2
    print(format_table(results, args.arch))
    if args.json:
        def write(tmp):
            with open(tmp, 'w') as f:
                json.dump({'arch': args.arch, 'cuobjdump': cuobjdump, 'kernels': results},
                          f, indent=1)
        try:
            atomic_write(args.json, write)
        except OSError as exc:
            print(f'sass_stats: cannot write --json {args.json}: {exc}', file=sys.stderr)
            return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
