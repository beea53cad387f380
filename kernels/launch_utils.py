"""Small helpers shared by the layer launchers (kernels/<family>.py).

They check launcher arrays (device arrays of the right dtype, C-contiguous, with the
expected shape) and pick kernel versions and grid sizes, so every launcher reports a bad
input the same way as the NumPy reference: ValueError('<layer>: <argument> must be ... of
shape <expected> ...'). The layer-specific checks of hyper-parameters and shapes are not
here: they live once in nn/<layer>.py (check_conv_params, check_pool_params, ...), and
each launcher calls them after check_array.
"""
import numpy as np

from nn.checks import fail

# Threads per block for the 1-D grid-stride kernels, and the cap on their grid size: with a
# grid-stride loop, a capped grid still covers any n (each thread takes several elements).
# Tests lower MAX_BLOCKS to force several trips around the loop.
BLOCK = 256
MAX_BLOCKS = 8192


def describe(a):
    """Short description of an argument for error messages."""
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return f"{type(a).__module__.split('.')[0]} array of shape {tuple(a.shape)} " \
               f"and dtype {a.dtype}"
    return type(a).__name__


def check_array(runner, a, name, layer, expected, ndim=None, shape=None, dtype=np.float32):
    """Check that `a` is a C-contiguous `dtype` array of the runner's array module
    (numpy for the emulator, cupy on the GPU), with `ndim` axes and/or exactly `shape`.

    `expected` is the human-readable shape for the message, e.g. '(N, C, H, W)'.
    Returns `a` unchanged.
    """
    dtype = np.dtype(dtype)
    what = f"a C-contiguous {dtype} {runner.xp.__name__} array of shape {expected}"
    if (not isinstance(a, runner.xp.ndarray) or a.dtype != dtype
            or (ndim is not None and a.ndim != ndim)
            or (shape is not None and tuple(a.shape) != tuple(shape))):
        fail(layer, f"{name} must be {what}, got {describe(a)}")
    if not a.flags.c_contiguous:
        fail(layer, f"{name} must be C-contiguous (use xp.ascontiguousarray), got a strided "
                    f"view of shape {tuple(a.shape)}")
    if a.size >= 2 ** 31:
        fail(layer, f"{name} has {a.size} elements; the kernels index with int (< 2**31)")
    return a


def check_upstream_grad(runner, dy, shape, layer):
    """A backward's dy: a C-contiguous float32 device array of exactly `shape`, the forward
    output's shape (the launchers' counterpart of nn.checks.check_upstream_grad)."""
    return check_array(runner, dy, "dy", layer, f"{tuple(shape)} (the forward output's shape)",
                       shape=shape)


# The versions of the elementwise kernels (relu, sgd): a scalar v1 and a float4 v2.
VECTOR_VERSIONS = (1, 2)


def pick_version(version, available, default, layer, runner=None, tf32_version=None):
    """Return `version` (or `default` when None) after checking it is one of `available`,
    the launcher module's VERSIONS tuple, and, when it is the module's TF32 version
    (tf32_version), that `runner`'s GPU can run it (check_tf32)."""
    if version is None:
        version = default
    if version not in available:
        fail(layer, f"version must be one of {sorted(available)} or None, got {version!r}")
    if version == tf32_version:
        check_tf32(runner, version, layer)
    return version


def tf32_capable(runner):
    """Whether `runner` can run the TF32 (tensor-core) versions: compute capability 8.0
    (sm_80, A100) or newer; the emulator (compute_capability None) has them all."""
    cc = runner.compute_capability
    return cc is None or cc >= 80


def check_tf32(runner, version, layer):
    """Refuse a TF32 version by name on an older GPU, where its kernels would trap."""
    if not tf32_capable(runner):
        cc = runner.compute_capability
        fail(layer, f"version {version} (TF32 tensor cores) needs a GPU of compute "
                    f"capability 8.0 or newer; this one is {cc // 10}.{cc % 10}")


def cdiv(a, b):
    """Ceiling of a / b for positive integers."""
    return -(-a // b)


def grid_1d(n, block=BLOCK):
    """Number of blocks for a grid-stride loop over n items: enough for one item per
    thread, at least 1, at most MAX_BLOCKS."""
    return int(max(1, min(cdiv(n, block), MAX_BLOCKS)))


def vector_grid(n, version):
    """grid_1d for an elementwise kernel over n floats: v2 steps through float4s, so its
    grid covers n // 4 items (the first threads also take the n % 4 tail)."""
    return grid_1d(n // 4 if version == 2 else n)


# Splitting a long reduction (gemm's K, the conv weight gradient's N * Ho * Wo): when a
# product has fewer than SPLIT_BELOW_BLOCKS output tiles the GPU would sit partly idle, so
# the reduction is cut into chunks until there are about SPLIT_TARGET_BLOCKS blocks, each
# chunk at least MIN_SPLIT_CHUNK long (shorter chunks would spend more time adding the
# partial sums than they save).
SPLIT_BELOW_BLOCKS = 128
SPLIT_TARGET_BLOCKS = 256
MIN_SPLIT_CHUNK = 512


def split_reduction(length, tiles, splits, multiple):
    """Chunk length and chunk count for a reduction of `length` over `tiles` output tiles.

    splits=None picks by the rule above; an integer asks for (at most) that many chunks.
    Returns (chunk, count) with chunk a multiple of `multiple` (the kernel's reduction
    step) and count = ceil(length / chunk).
    """
    if splits is None:
        splits = 1
        if tiles < SPLIT_BELOW_BLOCKS:
            splits = max(1, min(cdiv(SPLIT_TARGET_BLOCKS, tiles), length // MIN_SPLIT_CHUNK))
    chunk = cdiv(cdiv(length, splits), multiple) * multiple
    return chunk, cdiv(length, chunk)


def address(a):
    """Device (cupy) or host (numpy) address of an array's first element."""
    iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return iface["data"][0]


def aligned16(*arrays):
    """True when every array starts on a 16-byte boundary (needed for float4 access)."""
    return all(address(a) % 16 == 0 for a in arrays)


def vector_version(version, arrays, layer):
    """For the elementwise kernels with a scalar v1 and a float4 v2: v2 by default when all
    pointers are 16-byte aligned, else v1; asking for v2 on misaligned arrays is an error."""
    ok = aligned16(*arrays)
    version = pick_version(version, VECTOR_VERSIONS, 2 if ok else 1, layer)
    if version == 2 and not ok:
        fail(layer, "version=2 uses float4 loads and needs 16-byte aligned arrays; "
                    "these are not (use version=1 or a fresh array)")
    return version
