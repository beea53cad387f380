"""CPU emulator for the CUDA C kernels: build a .cu file with g++ and launch it via ctypes.

How it works
------------
The unchanged .cu file is compiled by g++ (C++17, -O2) together with `shim.h` (CUDA's
qualifiers, built-in variables, vector types, atomics, math intrinsics, device assert) and
`runtime.cpp` (the scheduler). Each block's threads run as fibers on one OS thread, switching
only in `__syncthreads()`; blocks run one after another, in the runner's order. Python finds
the kernels by the regex for `extern "C" __global__ void NAME(` and appends
`EMU_LAUNCHER(NAME)` for each, which exports an entry point plus the arity and one type code
per parameter, taken from the kernel's own C++ type; that is what the arguments are checked
against.

The built library is cached by a hash of the source, prelude, shim, runtime and flags in
$CAFFENET_EMU_CACHE (default ~/.cache/caffenet-emu), written to a temporary name and then
renamed, so parallel test processes never see half-written files. Beside <hash>.so,
<hash>.json keeps each kernel's static shared memory (read from the symbol table with
objdump once), so a cache hit loads without running objdump again.

It is stricter than a GPU: shared memory (static and dynamic) is filled with 0xFF bytes at
every block start (NaN as float, -1 as int), and the dynamic part ends at a guard page (an
access past the launch's shared_mem bytes faults); every array argument is copied to just
before a guard page for the launch (an access past its end faults, naming the argument;
the few bytes of alignment padding around it read as a signalling NaN and must not be
written);
threads run in forward, reverse or seeded random
order (a new random order after every barrier), and so do the blocks of the grid (a kernel
whose blocks depend on each other's writes shows it); two blocks that change one element of
an array without an atomic raise KernelLaunchError("race between blocks ..."), found by
making the arrays' pages read-only and comparing each page a block wrote (runtime.cpp,
"Races between blocks"); a float4/int4 access at an address
that is not a multiple of 16 faults, as on a GPU; a barrier that not all threads of a block
reach raises KernelLaunchError("divergent barrier ..."); a failed device assert, or an
invalid memory access, raises KernelLaunchError with kernel, place, block and thread instead
of killing Python.

The rules kernel authors follow so that a kernel behaves the same here and on a GPU (every
thread reaches every barrier, no spin-waits, no warp-synchronous code but the one
tensor-core instruction, explicit np.int32/np.float32 scalars, ...) are in RULES.md.
"""
import ctypes
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading

import numpy as np

from kernels.runner import (KernelLaunchError, Param, assemble_source, compile_error,
                            find_kernels, parse_param_names, read_text)

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_PATH = os.path.join(HERE, 'shim.h')
RUNTIME_PATH = os.path.join(HERE, 'runtime.cpp')

CXX = os.environ.get('CXX', 'g++')
CXXFLAGS = ('-std=c++17', '-O2', '-fPIC', '-shared', '-fvisibility=hidden',
            '-fno-strict-aliasing', '-w')
ORDERS = {'forward': 0, 'reverse': 1, 'random': 2}
MAX_ARRAY_ARGS = 64   # guarded copies per launch: runtime.cpp's kMaxGuards

_modules = {}  # (path, context, cache_dir argument) -> EmuModule
_lock = threading.Lock()  # the runtime keeps global state: one launch at a time
_compiler_id = None


def get_cache_dir(override=None):
    """Directory for built libraries (created if needed)."""
    path = override or os.environ.get('CAFFENET_EMU_CACHE') or os.path.join(
        os.path.expanduser('~'), '.cache', 'caffenet-emu')
    os.makedirs(path, exist_ok=True)
    return path


def _compiler_version():
    global _compiler_id
    if _compiler_id is None:
        try:
            out = subprocess.run([CXX, '--version'], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise RuntimeError(f'the kernel emulator needs a C++ compiler ({CXX}): {e}') from e
        # The command too: a wrapper that adds flags (say -g) reports the same version.
        _compiler_id = f"{CXX}: {out.stdout.splitlines()[0] if out.stdout else ''}"
    return _compiler_id


def translation_unit(path, display):
    """(C++ source of the kernel file for g++, kernel names)."""
    names = find_kernels(read_text(path))
    launchers = ''.join(f'EMU_LAUNCHER({n})\n' for n in names)
    source = (f'#include "{SHIM_PATH}"\n' + assemble_source(path, display)
              + '\n#line 1 "<emulator launchers>"\n' + launchers)
    return source, names


def _build(source, flags, out_dir, display):
    """Compile `source` + runtime.cpp into out_dir/<hash>.so (cached); return its path."""
    key = hashlib.sha256('\0'.join(
        [source, read_text(SHIM_PATH), read_text(RUNTIME_PATH), ' '.join(flags),
         _compiler_version()]).encode()).hexdigest()[:24]
    lib = os.path.join(out_dir, f'{key}.so')
    if os.path.exists(lib):
        return lib
    with tempfile.TemporaryDirectory(dir=out_dir, prefix='build-') as tmp:
        src = os.path.join(tmp, 'kernels.cpp')
        with open(src, 'w', encoding='utf-8') as f:
            f.write(source)
        tmp_lib = os.path.join(tmp, 'kernels.so')
        cmd = [CXX, *flags, src, RUNTIME_PATH, '-o', tmp_lib]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise compile_error(result.stderr, display, 'g++ (kernel emulator)')
        os.replace(tmp_lib, lib)  # atomic: other processes see all of it or nothing
    return lib


def _static_shared_by_kernel(lib, names):
    """{kernel: bytes of static __shared__ it may use} from the library's symbol table.

    Variables declared inside kernel K show up as 'K::var'; those at file scope or inside
    __device__ helpers cannot be attributed, so they count for every kernel. Falls back to
    the size of the whole section when objdump is missing.
    """
    try:
        out = subprocess.run(['objdump', '-t', '-C', lib], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    own = dict.fromkeys(names, 0)
    common = 0
    for m in re.finditer(r'\semu_shared\s+([0-9a-fA-F]+)\s+(.+)$', out, re.M):
        size, symbol = int(m.group(1), 16), m.group(2).strip()
        if size == 0 or 'emu_shared_anchor' in symbol:
            continue
        owner = symbol.split('::')[0] if '::' in symbol else None
        if owner in own:
            own[owner] += size
        else:
            common += size
    return {k: v + common for k, v in own.items()}


def _cached_static_shared(lib, names):
    """_static_shared_by_kernel(lib, names), kept in <hash>.json beside the library.

    The library's name is a hash of everything that built it, so the sizes stored for it
    stay right; a missing or unreadable file (a library cached before this file existed,
    say) is recomputed and rewritten. Nothing is stored when objdump is missing.
    """
    meta = os.path.splitext(lib)[0] + '.json'
    try:
        with open(meta, encoding='utf-8') as f:
            shared = json.load(f)['static_shared']
        if (isinstance(shared, dict) and sorted(shared) == sorted(names)
                and all(type(v) is int for v in shared.values())):
            return shared
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shared = _static_shared_by_kernel(lib, names)
    if shared is not None:
        # Temporary name, then rename: parallel processes see the whole file or none.
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(lib), prefix='meta-', suffix='.tmp')
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            json.dump({'static_shared': shared}, f)
        os.replace(tmp, meta)
    return shared


class EmuModule:
    """A built kernel file: `kernels` (names), `params(name)`, `static_shared(name)`, `launch`."""

    def __init__(self, lib_path, display, names, param_names, static_shared):
        self.file = display
        self.kernels = names
        self._lib = ctypes.CDLL(lib_path)
        self._lib.emu_launch.restype = ctypes.c_int
        self._lib.emu_launch.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t, ctypes.c_int, ctypes.c_uint64,
            ctypes.c_char_p, ctypes.c_size_t]
        self._lib.emu_static_shared_bytes.restype = ctypes.c_size_t
        self._lib.emu_guarded_alloc.restype = ctypes.c_void_p
        self._lib.emu_guarded_alloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t,
                                                ctypes.c_char_p, ctypes.c_int]
        self._lib.emu_guarded_free_all.restype = None
        self._lib.emu_same_bytes.restype = ctypes.c_int
        self._lib.emu_same_bytes.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self._lib.emu_guarded_check.restype = ctypes.c_int
        self._lib.emu_guarded_check.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self._params, self._entries = {}, {}
        for name in names:
            types = getattr(self._lib, f'emu_types_{name}')
            types.restype = ctypes.c_char_p
            codes = types().decode().split(',') if getattr(self._lib, f'emu_arity_{name}')() \
                else []
            given = param_names.get(name, [])
            self._params[name] = [Param(c, given[i] if i < len(given) else '')
                                  for i, c in enumerate(codes)]
            self._entries[name] = ctypes.cast(getattr(self._lib, f'emu_entry_{name}'),
                                              ctypes.c_void_p)
        # Without per-kernel sizes (no objdump), every kernel counts the whole section.
        total = int(self._lib.emu_static_shared_bytes())
        self._static_shared = static_shared or dict.fromkeys(names, total)

    def params(self, name):
        """[Param, ...] of kernel `name`, from its C++ signature."""
        return self._params[name]

    def static_shared(self, name):
        """Bytes of static __shared__ memory kernel `name` uses (an upper bound)."""
        return self._static_shared[name]

    def launch(self, name, params, grid, block, args, shared_mem, order, seed):
        """Run kernel `name`; args were already checked against params (runner.check_args).

        The kernel sees guarded copies of the arrays (runtime.cpp, "Guarded global
        memory"): an access past an array's end faults. Arrays that overlap (views of one
        buffer) share one copy, so writes through one are seen through the other; copies
        of non-const arguments are copied back after the launch, those of const ones are
        compared with their original (a write through a cast-away const is an error: on
        a GPU it would change the caller's input)."""
        err = ctypes.create_string_buffer(2048)
        with _lock:
            try:
                pointers, copies = self._guarded_copies(params, args)
                values = _c_values(params, args, pointers)   # alive until the call returns
                argv = (ctypes.c_void_p * max(1, len(values)))(
                    *[ctypes.addressof(v) for v in values])
                rc = self._lib.emu_launch(self._entries[name], argv, name.encode(),
                                          (ctypes.c_uint * 3)(*grid),
                                          (ctypes.c_uint * 3)(*block), shared_mem,
                                          ORDERS[order], seed & (2**64 - 1), err, len(err))
                changed_const = self._copy_back(copies)
                if rc == 0:
                    rc = self._lib.emu_guarded_check(err, len(err))
                    if rc != 0:
                        err.value = (f'kernel {name}: '.encode() + err.value)
                if rc == 0 and changed_const is not None:
                    rc = -1
                    err.value = (f'kernel {name} wrote to the array of {changed_const}, '
                                 'which it declares const').encode()
            finally:
                self._lib.emu_guarded_free_all()
        if rc != 0:
            raise KernelLaunchError(f'{err.value.decode(errors="replace")} [{self.file}, '
                                    f'grid {grid}, block {block}, order {order}]')

    def _copy_back(self, copies):
        """After a launch: the copies of non-const arrays back into the caller's arrays;
        returns the label of the first const array whose copy changed, else None."""
        changed_const = None
        for copy, original, size, writable, label in copies:
            if writable:
                ctypes.memmove(original, copy, size)
            elif changed_const is None and not self._lib.emu_same_bytes(copy, original, size):
                changed_const = label.decode()
        return changed_const

    def _guarded_copies(self, params, args):
        """Copy the array arguments into guarded memory: returns ({argument index: address
        the kernel gets}, [(copy, original address, bytes, writable, label)]); the labels
        (bytes the runtime points to until emu_guarded_free_all) are kept alive there.
        Overlapping arrays are merged into one span and copied once."""
        spans = sorted([a.ctypes.data, a.ctypes.data + a.nbytes, [i]]
                       for i, (p, a) in enumerate(zip(params, args)) if p.is_pointer)
        merged = []
        for span in spans:
            if merged and span[0] < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], span[1])
                merged[-1][2] += span[2]
            else:
                merged.append(span)
        if len(merged) > MAX_ARRAY_ARGS:
            raise KernelLaunchError(f'{self.file}: the emulator guards at most '
                                    f'{MAX_ARRAY_ARGS} array arguments, got {len(merged)}')
        pointers, copies = {}, []
        for start, end, members in merged:
            label = ' and '.join(params[i].describe(i) for i in sorted(members)).encode()
            writable = any(not params[i].const for i in members)
            copy = self._lib.emu_guarded_alloc(end - start, start % 16, label, writable)
            if not copy:
                raise KernelLaunchError(f'{self.file}: the emulator could not map '
                                        f'{end - start} bytes of guarded memory')
            ctypes.memmove(copy, start, end - start)
            copies.append((copy, start, end - start, writable, label))
            for i in members:
                pointers[i] = copy + (args[i].ctypes.data - start)
        return pointers, copies


def _c_values(params, args, pointers):
    """Each argument as the ctypes value the kernel's parameter takes: an array as its
    guarded copy's address (pointers[i]), a scalar as float, int or unsigned int."""
    values = []
    for i, (p, a) in enumerate(zip(params, args)):
        if p.is_pointer:
            values.append(ctypes.c_void_p(pointers[i]))
        elif p.dtype == np.float32:
            values.append(ctypes.c_float(float(a)))
        elif p.dtype == np.int32:
            values.append(ctypes.c_int32(int(a)))
        else:
            values.append(ctypes.c_uint32(int(a)))
    return values


def load_module(path, display, context='asm', cache_dir=None):
    """Build (or reuse) the emulator library for one .cu file; returns an EmuModule.

    Each file is built once per process (like CupyRunner); the cache on disk is keyed by a
    hash of everything that goes into the build, so a changed file, prelude, shim or
    runtime gives a new library in the next process.
    """
    key = (path, context, cache_dir)
    module = _modules.get(key)
    if module is None:
        source, names = translation_unit(path, display)
        flags = CXXFLAGS + (('-DEMU_USE_UCONTEXT',) if context == 'ucontext' else ())
        lib = _build(source, flags, get_cache_dir(cache_dir), display)
        module = EmuModule(lib, display, names, parse_param_names(read_text(path)),
                           _cached_static_shared(lib, names))
        _modules[key] = module
    return module
