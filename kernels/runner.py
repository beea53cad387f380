"""Load and launch the hand-written CUDA C kernels, on a GPU (CuPy) or on the CPU (emulator).

    runner = get_runner('emu')          # or 'cuda'
    relu = runner.kernel('relu.cu', 'relu_forward_v1')  # or an absolute path to a .cu file
    relu(grid, block, (x, y, np.int32(n)), shared_mem=0)

`runner.xp` is the array module that goes with the runner (cupy on the GPU; for the
emulator NumPy whose `empty` and `empty_like` hand out poisoned arrays, see
`poisoned_numpy`). Before every launch both backends check the arguments against the kernel's C
signature and the launch configuration against CUDA's limits, and raise KernelLaunchError
naming the kernel and the argument:

    C parameter                          Python argument
    float* / const float*                C-contiguous float32 array (numpy: emu, cupy: cuda)
    int* / unsigned int*                 C-contiguous int32 / uint32 array
    int / unsigned int / float           np.int32 / np.uint32 / np.float32 (not int/float)

Every source file is compiled as prelude + `#line 1 "<file>"` + file (see `assemble_source`),
so compiler messages point at the right file and line; a failed compilation raises
KernelCompileError with the file, line and the compiler's message.
"""
import glob
import os
import re
import struct
import sys
import types

import numpy as np

KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(KERNELS_DIR)
PRELUDE_PATH = os.path.join(KERNELS_DIR, 'prelude.cuh')

MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIMS = (1024, 1024, 64)
MAX_GRID_DIMS = (2**31 - 1, 65535, 65535)
MAX_SHARED_BYTES = 48 * 1024

# Options for NVRTC, shared by CupyRunner and tests/test_nvrtc_compile.py.
NVRTC_OPTIONS = ('--std=c++17',)


class KernelLaunchError(RuntimeError):
    """A kernel launch was refused (bad argument or configuration) or failed while running."""


class KernelCompileError(RuntimeError):
    """A .cu file did not compile. `file`, `line` (first error, or None) and `log`."""

    def __init__(self, file, line, log, compiler):
        self.file, self.line, self.log, self.compiler = file, line, log, compiler
        where = f'{file}:{line}' if line is not None else file
        super().__init__(f'{compiler} failed to compile {where}:\n{log.strip()}')


# ---------------------------------------------------------------------------------------
# Source handling shared by both backends.

def resolve_source(file):
    """Map 'conv.cu' (a name in kernels/) or an absolute path to (path, display_name).

    display_name is what `#line` and the messages show: relative to the repository root
    for files inside it, else the absolute path.
    """
    if not isinstance(file, (str, os.PathLike)):
        raise TypeError(f'kernel file must be a str or path, got {type(file).__name__}')
    path = os.fspath(file)
    if not os.path.isabs(path):
        path = os.path.join(KERNELS_DIR, path)
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'kernel source {file!r} not found (looked at {path})')
    rel = os.path.relpath(path, REPO_ROOT)
    display = path if rel.startswith('..') else rel.replace(os.sep, '/')
    return path, display


def project_kernel_files():
    """The names of the project's CUDA sources, kernels/*.cu, sorted."""
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(KERNELS_DIR, '*.cu')))


def read_text(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def assemble_source(path, display):
    """Source text given to the compiler: the prelude, then the file under its own name."""
    prelude = read_text(PRELUDE_PATH)
    if '"' in display or '\n' in display:
        raise ValueError(f'kernel file name {display!r} cannot go into a #line directive')
    return ('#line 1 "kernels/prelude.cuh"\n' + prelude
            + f'\n#line 1 "{display}"\n' + read_text(path))


def strip_comments(src):
    """Replace // and /* */ comments by spaces (keeping newlines); string literals survive."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', re.S)

    def repl(m):
        text = m.group(0)
        if text.startswith('"'):
            return text
        return re.sub(r'[^\n]', ' ', text)
    return pattern.sub(repl, src)


_KERNEL_RE = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+'
    r'(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\(')


def find_kernels(src):
    """Names of the `extern "C" __global__ void NAME(` kernels in a source text, in order."""
    return [m.group(1) for m in _KERNEL_RE.finditer(strip_comments(src))]


class Param:
    """One kernel parameter: `code` like 'ptr const float32' or 'int32', and its name."""

    def __init__(self, code, name):
        self.code, self.name = code, name
        words = code.split()
        self.is_pointer = words[0] == 'ptr'
        self.const = 'const' in words
        self.supported = code != 'unsupported'
        self.dtype = np.dtype(words[-1]) if self.supported else None

    def describe(self, index):
        label = f"argument {index}" + (f" '{self.name}'" if self.name else '')
        return f'{label} ({self.c_type()})'

    def c_type(self):
        if not self.supported:
            return 'unsupported type'
        base = {'float32': 'float', 'int32': 'int', 'uint32': 'unsigned int'}[self.dtype.name]
        if self.is_pointer:
            return ('const ' if self.const else '') + base + '*'
        return base


_TYPE_WORDS = {'float', 'double', 'int', 'unsigned', 'signed', 'long', 'short', 'char', 'bool',
               'float2', 'float4', 'int2', 'int4', 'uint2', 'uint4', 'size_t'}
_BASE_CODES = {'float': 'float32', 'int': 'int32', 'signed': 'int32', 'signed int': 'int32',
               'unsigned': 'uint32', 'unsigned int': 'uint32'}


def _param_from_c(text):
    """Param for one C parameter declaration such as 'const float* __restrict__ x'."""
    tokens = re.findall(r'[A-Za-z_]\w*|\*|&', text)
    tokens = [t for t in tokens if t not in ('__restrict__', '__restrict', 'volatile')]
    pointer = tokens.count('*')
    const = pointer > 0 and 'const' in tokens[:tokens.index('*')]
    words = [t for t in tokens if t not in ('const', '*')]
    name = words.pop() if len(words) > 1 and words[-1] not in _TYPE_WORDS else ''
    base = _BASE_CODES.get(' '.join(words))
    if base is None or pointer > 1 or '&' in tokens:
        return Param('unsupported', name)
    code = ('ptr ' + ('const ' if const else '') + base) if pointer else base
    return Param(code, name)


def _object_macros(clean):
    """{NAME: body} of the object-like `#define NAME body` lines (continuations joined)."""
    joined = clean.replace('\\\n', ' ')
    return {m.group(1): m.group(2).strip() for m in
            re.finditer(r'^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)(?![\w(])([^\n]*)', joined, re.M)}


def _expand(text, macros):
    """Expand object-like macros in `text` (as the preprocessor would, for parameter lists)."""
    for _ in range(20):  # nested macros; the bound stops self-referencing ones
        new = re.sub(r'[A-Za-z_]\w*', lambda m: macros.get(m.group(0), m.group(0)), text)
        if new == text:
            break
        text = new
    return text


def parse_signatures(src):
    """{kernel name: [Param, ...]} read from the C source (the GPU path has no reflection).

    Object-like macros in parameter lists are expanded; anything fancier (function-like
    macros, templates) gives 'unsupported' parameters -- tests/test_emulator.py checks this
    parser against the emulator's compiler-derived signatures for every kernels/*.cu.
    """
    clean = strip_comments(src)
    macros = _object_macros(clean)
    sigs = {}
    for m in _KERNEL_RE.finditer(clean):
        depth, i = 1, m.end()
        while depth and i < len(clean):
            depth += {'(': 1, ')': -1}.get(clean[i], 0)
            i += 1
        inner = _expand(clean[m.end():i - 1], macros).strip()
        parts = [] if inner in ('', 'void') else inner.split(',')
        sigs[m.group(1)] = [_param_from_c(p) for p in parts]
    return sigs


def parse_param_names(src):
    """{kernel name: [parameter name, ...]} (used only for messages)."""
    return {k: [p.name for p in v] for k, v in parse_signatures(src).items()}


# Where the first error is: g++ writes 'file:12:5: error', NVRTC 'file(12): error'.
_LOCATION_RES = (
    re.compile(r'^(?P<file>[^\n:()]+):(?P<line>\d+):(?:\d+:)? *(?:fatal )?error', re.M),
    re.compile(r'^(?P<file>[^\n()]+)\((?P<line>\d+)\): *(?:catastrophic )?error', re.M))


def compile_error(log, default_file, compiler):
    """KernelCompileError for a compiler log (g++ 'f:12:3: error' or NVRTC 'f(12): error')."""
    log = log.replace('\x00', '')  # NVRTC's log ends with the C string's terminator
    for pattern in _LOCATION_RES:
        m = pattern.search(log)
        if m:
            return KernelCompileError(m.group('file'), int(m.group('line')), log, compiler)
    return KernelCompileError(default_file, None, log, compiler)


# ---------------------------------------------------------------------------------------
# Launch checks shared by both backends.

def _dims(value, what, kernel, limits):
    """(x, y, z) from an int or a tuple of 1 to 3 ints, each within `limits`."""
    dims = value if isinstance(value, tuple) else (value,)
    if not 1 <= len(dims) <= 3 or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise KernelLaunchError(f'kernel {kernel}: {what} must be an int or a tuple of 1 to 3 '
                                f'ints, got {value!r}')
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, (d, limit) in enumerate(zip(dims, limits)):
        if not 1 <= d <= limit:
            raise KernelLaunchError(f'kernel {kernel}: {what}.{"xyz"[axis]} = {d} is outside '
                                    f'1..{limit} (CUDA limit)')
    return dims


def check_launch(kernel, grid, block, shared_mem, static_shared, max_threads=MAX_THREADS_PER_BLOCK):
    """Validate the launch configuration; returns (grid3, block3, shared_mem)."""
    grid3 = _dims(grid, 'grid', kernel, MAX_GRID_DIMS)
    block3 = _dims(block, 'block', kernel, MAX_BLOCK_DIMS)
    threads = block3[0] * block3[1] * block3[2]
    if threads > max_threads:
        raise KernelLaunchError(f'kernel {kernel}: block {block3} has {threads} threads, more '
                                f'than the {max_threads} allowed per block')
    if not isinstance(shared_mem, (int, np.integer)) or isinstance(shared_mem, bool) \
            or shared_mem < 0:
        raise KernelLaunchError(f'kernel {kernel}: shared_mem must be a non-negative int '
                                f'(bytes), got {shared_mem!r}')
    if static_shared + shared_mem > MAX_SHARED_BYTES:
        raise KernelLaunchError(
            f'kernel {kernel}: shared memory {static_shared} static + {int(shared_mem)} dynamic '
            f'= {static_shared + shared_mem} bytes exceeds {MAX_SHARED_BYTES} bytes (48 KiB) '
            f'per block (shared_mem argument)')
    return grid3, block3, int(shared_mem)


_SCALAR_TYPES = {'float32': np.float32, 'int32': np.int32, 'uint32': np.uint32}


def check_args(kernel, params, args, array_type, array_module):
    """Check `args` against the kernel's parameters; raise KernelLaunchError on a mismatch.

    params: list of Param; array_type: numpy.ndarray or cupy.ndarray; array_module: the
    name used in messages ('numpy' or 'cupy').
    """
    if not isinstance(args, (tuple, list)):
        raise KernelLaunchError(f'kernel {kernel}: args must be a tuple, got '
                                f'{type(args).__name__}')
    if len(args) != len(params):
        names = ', '.join(p.c_type() + (' ' + p.name if p.name else '') for p in params)
        raise KernelLaunchError(f'kernel {kernel}: takes {len(params)} arguments ({names}), '
                                f'got {len(args)}')
    for i, (p, a) in enumerate(zip(params, args)):
        where = f'kernel {kernel}: {p.describe(i)}'
        if not p.supported:
            raise KernelLaunchError(f'{where}: the runner supports only float*, int*, '
                                    f'unsigned int* (const or not), int, unsigned int, float')
        if p.is_pointer:
            if not isinstance(a, array_type):
                raise KernelLaunchError(f'{where}: expected a {array_module} array of '
                                        f'{p.dtype.name}, got {type(a).__module__}.'
                                        f'{type(a).__name__}')
            if a.dtype != p.dtype:
                # '>f4' is also named float32: show the byte order when the names agree.
                got = a.dtype.name if a.dtype.name != p.dtype.name else a.dtype.str
                raise KernelLaunchError(f'{where}: expected dtype {p.dtype.name}, got {got}')
            if not a.flags.c_contiguous:
                raise KernelLaunchError(f'{where}: array of shape {a.shape} is not '
                                        f'C-contiguous (use ascontiguousarray)')
            # CuPy's flags have no `aligned` (its views start at whole elements) and no
            # `writeable` (device arrays are always writable).
            if not getattr(a.flags, 'aligned', True):
                raise KernelLaunchError(f'{where}: array does not start at a multiple of its '
                                        f'{a.dtype.itemsize}-byte elements (a view at an odd '
                                        f'byte offset; copy it)')
            if not p.const and not getattr(a.flags, 'writeable', True):
                raise KernelLaunchError(f'{where}: array is read-only but the kernel may '
                                        f'write it')
        else:
            expected = _SCALAR_TYPES[p.dtype.name]
            if type(a) is not expected:
                hint = ''
                if isinstance(a, (bool, int, float)):
                    hint = f'; wrap Python numbers: np.{expected.__name__}({a!r})'
                raise KernelLaunchError(f'{where}: expected np.{expected.__name__}, got '
                                        f'{type(a).__module__}.{type(a).__name__}{hint}')


# ---------------------------------------------------------------------------------------
# Runners.

class KernelInfo:
    """What the launch checks need to know about one kernel (`launch.kernel` of a launcher),
    and, on the GPU, what the compiler made of it: registers per thread and local memory
    bytes per thread (register spills; None on the emulator)."""

    def __init__(self, name, file, params, static_shared, max_threads=MAX_THREADS_PER_BLOCK,
                 registers=None, local_bytes=None):
        self.name, self.file, self.params = name, file, params
        self.static_shared, self.max_threads = static_shared, max_threads
        self.registers, self.local_bytes = registers, local_bytes

    def __repr__(self):
        return f'<kernel {self.name} from {self.file}>'


class KernelRunner:
    """Base class: `xp`, `name`, `kernel(file, name)`, `loaded_kernels()` and
    `synchronize()`.

    Subclasses provide `_array_type` (the array class launches accept) and
    `_load(path, display, name) -> (KernelInfo, run)`, where `run(grid3, block3, args,
    shared_mem)` starts the kernel once the arguments have been checked.
    compute_capability: the GPU's, as 80 for sm_80 (None on the emulator, which has all
    features).
    """
    name = None
    xp = None
    _array_type = None
    compute_capability = None

    def __init__(self):
        self._kernels = {}  # (file, name) -> launcher

    def kernel(self, file, name):
        """Callable `kernel(grid, block, args, shared_mem=0)` for kernel `name` in `file`.

        `file` is a name in kernels/ ('conv.cu') or a path. The callable has the attribute
        `kernel` (a KernelInfo with the parameters and the static shared memory size).
        """
        launch = self._kernels.get((file, name))
        if launch is None:
            path, display = resolve_source(file)
            info, run = self._load(path, display, name)
            launch = self._kernels[file, name] = self._launcher(info, run)
        return launch

    def loaded_kernels(self):
        """KernelInfo of every kernel this runner has loaded so far, in load order."""
        return [launch.kernel for launch in self._kernels.values()]

    def _launcher(self, info, run):
        array_type, array_module = self._array_type, self.xp.__name__

        def launch(grid, block, args, shared_mem=0):
            grid3, block3, shared_mem = check_launch(info.name, grid, block, shared_mem,
                                                     info.static_shared, info.max_threads)
            check_args(info.name, info.params, args, array_type, array_module)
            run(grid3, block3, tuple(args), shared_mem)
        launch.kernel = info
        return launch

    def _load(self, path, display, name):
        raise NotImplementedError

    def synchronize(self):
        """Wait until all launched kernels have finished."""


def _missing_kernel(name, display, names):
    return (f'kernel {name!r} not found in {display}; its extern "C" __global__ kernels: '
            f'{", ".join(names) or "none"}')


def load_nvrtc():
    """Return cupy.cuda.nvrtc with a working libnvrtc, or raise ImportError saying why.

    When CuPy cannot find libnvrtc by itself (no CUDA toolkit installed), load it from
    NVIDIA's pip wheel (nvidia-cuda-nvrtc-cu12, or CUDA 13's; see _nvrtc_wheel_libraries)
    first: once a library with that soname is loaded globally, CuPy's own dlopen finds it.
    """
    try:
        from cupy.cuda import nvrtc
    except Exception as e:  # noqa: BLE001 - any import problem means "no NVRTC"
        raise ImportError(f'cannot import cupy.cuda.nvrtc: {e}') from e
    try:
        nvrtc.getVersion()
        return nvrtc
    except Exception as first:  # noqa: BLE001
        error = first
    import ctypes
    for lib in _nvrtc_wheel_libraries():
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            nvrtc.getVersion()
            return nvrtc
        except Exception as e:  # noqa: BLE001
            error = e
    raise ImportError(f'NVRTC could not be loaded: {error}')


# Options CuPy's RawModule adds to ours (cupy.cuda.compiler._compile_with_cache_cuda).
CUPY_ADDED_OPTIONS = ('-ftz=true',)


def nvrtc_cubin(source, display, arch, extra_options=()):
    """Compile assembled source with NVRTC straight to a cubin for `arch` ('sm_90'), with
    the options CuPy uses, so ptxas runs too (its limits, and with extra_options
    ('--ptxas-options=-v',) its report). Works without a GPU. Returns (cubin bytes, log);
    raises KernelCompileError naming the file and line, ImportError without NVRTC.

    CuPy's getCUBIN returns one byte less than NVRTC's size (CuPy 14.2): the ELF's last
    header then ends past the data, which a GPU's loader forgives but cuobjdump does not,
    so the bytes are padded to the end of the ELF's header tables."""
    nvrtc = load_nvrtc()
    program = nvrtc.createProgram(source, display, [], [])
    try:
        try:
            nvrtc.compileProgram(program, [f'--gpu-architecture={arch}', *NVRTC_OPTIONS,
                                           *CUPY_ADDED_OPTIONS, *extra_options])
        except nvrtc.NVRTCError:
            raise compile_error(nvrtc.getProgramLog(program), display, 'NVRTC') from None
        log = nvrtc.getProgramLog(program).replace('\x00', '')
        return _whole_elf(bytes(nvrtc.getCUBIN(program))), log
    finally:
        nvrtc.destroyProgram(program)


def _whole_elf(data):
    """An ELF64 image padded with zero bytes to the end of its program and section header
    tables (see nvrtc_cubin)."""
    if len(data) < 64 or data[:4] != b'\x7fELF':
        return data
    phoff, shoff = struct.unpack_from('<QQ', data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from('<HHHH', data, 0x36)
    end = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    return data + b'\x00' * max(0, end - len(data))


def _nvrtc_wheel_libraries():
    """libnvrtc.so* from NVIDIA's pip wheels on sys.path: nvidia/cuda_nvrtc/lib (CUDA 12's
    nvidia-cuda-nvrtc-cu12) and nvidia/cu13/lib (CUDA 13's), those of CuPy's own CUDA major
    version first (another version's library cannot satisfy CuPy)."""
    found = []
    for base in sys.path:
        for folder in ('cuda_nvrtc', 'cu[0-9]*'):
            found += sorted(glob.glob(os.path.join(base, 'nvidia', folder, 'lib',
                                                   'libnvrtc.so*')))
    found = list(dict.fromkeys(found))   # sys.path may name a folder twice
    try:
        from cupy.cuda import runtime
        major = runtime.runtimeGetVersion() // 1000
    except Exception:  # noqa: BLE001 - without it, keep the order found
        return found
    return sorted(found, key=lambda lib: f'.so.{major}' not in os.path.basename(lib))


class CupyRunner(KernelRunner):
    """Runs kernels on the GPU; each .cu is compiled once per process (cupy.RawModule).

    The GPU has no reflection, so argument types come from `parse_signatures` (checked
    against the emulator's compiler-derived types by tests/test_emulator.py).
    """
    name = 'cuda'
    _modules = {}  # path -> (cupy.RawModule, signatures), shared by all CupyRunners

    def __init__(self):
        super().__init__()
        from nn.device import import_cupy_with_gpu
        # Fail here with a clear message (DeviceError, a RuntimeError: no CuPy, or no GPU),
        # not at the first compile deep inside CuPy.
        cupy = import_cupy_with_gpu()
        load_nvrtc()
        self.xp = cupy
        self._array_type = cupy.ndarray
        self.compute_capability = int(cupy.cuda.Device().compute_capability)

    def _module(self, path, display):
        entry = self._modules.get(path)
        if entry is None:
            cupy = self.xp
            module = cupy.RawModule(code=assemble_source(path, display), options=NVRTC_OPTIONS)
            try:
                module.compile()
            except cupy.cuda.compiler.CompileException as e:
                raise compile_error(str(e), display, 'NVRTC') from None
            entry = self._modules[path] = (module, parse_signatures(read_text(path)))
        return entry

    def _load(self, path, display, name):
        module, sigs = self._module(path, display)
        if name not in sigs:
            raise KernelLaunchError(_missing_kernel(name, display, sigs))
        fn = module.get_function(name)
        attrs = fn.attributes
        # Registers may limit a kernel to fewer than 1024 threads per block.
        registers, local_bytes = attrs.get('num_regs'), attrs.get('local_size_bytes')
        info = KernelInfo(name, display, sigs[name], int(attrs['shared_size_bytes']),
                          min(MAX_THREADS_PER_BLOCK, int(attrs['max_threads_per_block'])),
                          registers=None if registers is None else int(registers),
                          local_bytes=None if local_bytes is None else int(local_bytes))

        def run(grid3, block3, args, shared_mem):
            fn(grid3, block3, args, shared_mem=shared_mem)
        return info, run

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()


def poison(a):
    """Fill a fresh array with what uninitialised device memory may hold, NaN for floats
    and all bits set for integers (-1, or the maximum unsigned); returns it."""
    if a.dtype.kind in 'fc':
        a.fill(np.nan)
    elif a.dtype.kind in 'iu':
        a.fill(np.iinfo(a.dtype).max if a.dtype.kind == 'u' else -1)
    return a


def poisoned_numpy():
    """NumPy as the emulator's array module: every function is NumPy's, but `empty` and
    `empty_like` return poisoned arrays (see `poison`). Why: cupy.empty hands out its
    memory pool's leftovers, while a large np.empty is often fresh zero pages, so a
    launcher that leaves part of an output unwritten, or a kernel that adds into an output
    it never cleared, would pass on the emulator with zeros it cannot count on."""
    xp = types.ModuleType('numpy', poisoned_numpy.__doc__)
    xp.__getattr__ = lambda name: getattr(np, name)   # everything else (PEP 562)
    xp.empty = lambda *args, **kwargs: poison(np.empty(*args, **kwargs))
    xp.empty_like = lambda *args, **kwargs: poison(np.empty_like(*args, **kwargs))
    return xp


class EmuRunner(KernelRunner):
    """Runs kernels on the CPU with the emulator (kernels/emulator/).

    order: thread order inside a block, 'forward', 'reverse' or 'random' (seeded by `seed`,
    a new order at every barrier). Default: the environment variable CAFFENET_EMU_ORDER
    ('forward', 'reverse', 'random' or 'random:SEED'), else 'forward'.
    context: 'asm' (fast x86-64 switch) or 'ucontext' (portable fallback).
    cache_dir: where built libraries go (default $CAFFENET_EMU_CACHE or ~/.cache/caffenet-emu).
    """
    name = 'emu'
    xp = poisoned_numpy()
    _array_type = np.ndarray

    def __init__(self, order=None, seed=0, context='asm', cache_dir=None):
        super().__init__()
        from kernels import emulator
        if order is None:
            env = os.environ.get('CAFFENET_EMU_ORDER', 'forward')
            order, _, env_seed = env.partition(':')
            if env_seed:
                seed = int(env_seed)
        if order not in emulator.ORDERS:
            raise ValueError(f'EmuRunner: order must be one of {sorted(emulator.ORDERS)}, '
                             f'got {order!r}')
        if context not in ('asm', 'ucontext'):
            raise ValueError(f"EmuRunner: context must be 'asm' or 'ucontext', got {context!r}")
        self.order, self.seed, self.context = order, int(seed), context
        self._emulator = emulator
        self._cache_dir = cache_dir
        self._launches = 0

    def _load(self, path, display, name):
        module = self._emulator.load_module(path, display, context=self.context,
                                            cache_dir=self._cache_dir)
        if name not in module.kernels:
            raise KernelLaunchError(_missing_kernel(name, display, module.kernels))
        params = module.params(name)
        info = KernelInfo(name, display, params, module.static_shared(name))

        def run(grid3, block3, args, shared_mem):
            # Every launch gets its own random stream, reproducible from the seed.
            self._launches += 1
            module.launch(name, params, grid3, block3, args, shared_mem, self.order,
                          self.seed * 1000003 + self._launches)
        return info, run


def get_runner(name, **kwargs):
    """'cuda' -> CupyRunner(), 'emu' -> EmuRunner(**kwargs)."""
    if name == 'cuda':
        return CupyRunner(**kwargs)
    if name == 'emu':
        return EmuRunner(**kwargs)
    raise ValueError(f"get_runner: name must be 'cuda' or 'emu', got {name!r}")
