"""Input checks shared by the NumPy reference layers and the kernel launchers.

Every forward validates its arguments before touching them, so that a wrong shape or
dtype gives a ValueError that names the layer, the argument and the expected shape,
rather than a NumPy broadcasting error from deep inside the computation.

Two kinds of checks live here: array checks (check_float_array, check_same_dtype,
check_upstream_grad), which accept NumPy arrays only and serve the reference; and checks
of plain values and shape tuples (fail, check_int, check_number, expect_shape,
check_writeable), which the layer-specific parameter checks in nn/<layer>.py build on and
which the launchers in kernels/ call too, after their own device-array check
(kernels/launch_utils.check_array).
"""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def fail(layer, message):
    """Raise the ValueError every layer uses: '<layer>: <message>'."""
    raise ValueError(f"{layer}: {message}")


def describe(a):
    """Short description of a bad argument for error messages."""
    if isinstance(a, np.ndarray):
        return f"array of shape {a.shape} and dtype {a.dtype}"
    return f"{type(a).__name__}"


def check_float_array(a, name, layer, ndim=None, expected=None, min_ndim=None):
    """Check that `a` is a float32/float64 ndarray with `ndim` (or >= `min_ndim`) axes.

    `expected` is the human-readable shape used in the message, e.g. '(N, C, H, W)'.
    Returns `a` unchanged.
    """
    what = f"a float32 or float64 array of shape {expected}" if expected else \
        "a float32 or float64 array"
    if not isinstance(a, np.ndarray) or a.dtype not in FLOAT_DTYPES:
        fail(layer, f"{name} must be {what}, got {describe(a)}")
    if (ndim is not None and a.ndim != ndim) or (min_ndim is not None and a.ndim < min_ndim):
        fail(layer, f"{name} must be {what}, got {describe(a)}")
    return a


def expect_shape(shape, name, layer, want, expected):
    """Check the shape tuple `shape` == `want` exactly; `expected` explains where the numbers
    come from. Works on shapes only, so the kernel launchers (device arrays) share it."""
    if tuple(shape) != tuple(want):
        fail(layer, f"{name} must have shape {tuple(want)} {expected}, got {tuple(shape)}")


def check_shape(a, name, layer, shape, expected):
    """Check a.shape == shape exactly; `expected` explains where the numbers come from."""
    expect_shape(a.shape, name, layer, shape, expected)
    return a


def check_same_dtype(layer, **arrays):
    """All named arrays share one dtype (mixing float32/float64 would silently upcast)."""
    names = list(arrays)
    first = arrays[names[0]].dtype
    for name in names[1:]:
        if arrays[name].dtype != first:
            fail(layer, f"{name} has dtype {arrays[name].dtype} but {names[0]} has {first}; "
                        "all arrays of a layer must share one dtype")


def check_int(value, name, layer, minimum):
    """A Python/NumPy integer (not bool) >= minimum; returns it as int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        fail(layer, f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        fail(layer, f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_number(value, name, layer, minimum=None, maximum=None, max_inclusive=True):
    """A finite real number within [minimum, maximum] (maximum exclusive if asked)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        fail(layer, f"{name} must be a number, got {value!r}")
    value = float(value)
    bad = not np.isfinite(value)
    bad |= minimum is not None and value < minimum
    if maximum is not None:
        bad |= value > maximum if max_inclusive else value >= maximum
    if bad:
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        bracket = "]" if max_inclusive else ")"
        fail(layer, f"{name} must be a finite number in [{lo}, {hi}{bracket}, got {value!r}")
    return value


def check_writeable(layer, **arrays):
    """Arrays a function updates in place must be writeable. NumPy arrays can be read-only;
    CuPy's flags have no `writeable` (device arrays always are), hence the getattr."""
    if not all(getattr(a.flags, "writeable", True) for a in arrays.values()):
        fail(layer, f"{' and '.join(arrays)} are updated in place and must be writeable")


def check_upstream_grad(dy, shape, dtype, layer):
    """A backward's dy must match the forward output's shape and dtype exactly."""
    check_float_array(dy, "dy", layer, expected=str(tuple(shape)))
    check_shape(dy, "dy", layer, shape, "(the forward output's shape)")
    if dy.dtype != dtype:
        fail(layer, f"dy has dtype {dy.dtype} but the forward ran in {dtype}")
    return dy
