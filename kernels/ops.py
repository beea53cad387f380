"""The kernel op namespace: the op set of docs/design.md bound to one KernelRunner.

`make_ops(runner)` returns a namespace whose functions have exactly the NumPy
reference's signatures (`nn/reference.py`), so the network is written once:

    ops = make_ops(get_runner('emu'))
    y, cache = ops.conv_forward(x, w, b, stride=4, relu=True, layer='conv1')

Each launcher in `kernels/<family>.py` takes the runner as its first argument;
here it is bound with functools.partial. The launcher modules are imported only
when `make_ops` is called, so the `cpu` device never imports them.
"""
import functools
import importlib
import types

# op name -> launcher module (kernels/<family>.py), the table of docs/design.md.
OP_FAMILIES = {
    "conv_forward": "conv",
    "conv_backward": "conv",
    "inner_product_forward": "gemm",
    "inner_product_backward": "gemm",
    "max_pool_forward": "pool",
    "max_pool_backward": "pool",
    "lrn_forward": "lrn",
    "lrn_backward": "lrn",
    "relu_forward": "relu",
    "relu_backward": "relu",
    "dropout_forward": "dropout",
    "dropout_backward": "dropout",
    "softmax": "softmax",
    "softmax_loss_forward": "softmax",
    "softmax_loss_backward": "softmax",
    "accuracy": "softmax",
    "sgd_update": "sgd",
}

OP_NAMES = tuple(OP_FAMILIES)


def _launcher(op, family):
    """The launcher function `op` from kernels/<family>.py, or a clear ImportError."""
    try:
        module = importlib.import_module(f"kernels.{family}")
    except ModuleNotFoundError as exc:
        if exc.name != f"kernels.{family}":
            raise  # the launcher exists but one of its own imports failed
        raise ImportError(f"kernel op {op!r} needs the launcher module kernels/{family}.py, "
                          "which is missing") from exc
    if not hasattr(module, op):
        raise ImportError(f"kernel op {op!r}: kernels/{family}.py has no function {op!r}")
    return getattr(module, op)


def _deferred(exc):
    """An op standing for a launcher that cannot be imported: calling it raises `exc`'s
    ImportError, with the same message."""
    def op(*args, **kwargs):
        raise ImportError(str(exc)) from exc
    return op


# The ops whose launcher has a TF32 (tensor-core) version, chosen in the forward and
# followed by the backward (the version is kept in the cache).
TF32_OPS = ("conv_forward", "inner_product_forward")


def make_ops(runner, partial=False, tf32=False):
    """Bind every op of the op set to `runner` (an EmuRunner or CupyRunner).

    Returns a types.SimpleNamespace with one attribute per name in OP_NAMES, each
    `functools.partial(launcher, runner)`. Raises ImportError naming the op and the
    launcher file when a launcher is missing; with partial=True that op instead raises
    the ImportError when called, so the others stay usable (bench.py times the kernels
    that exist). tf32=True: the convolutions and fully connected layers run their
    launchers' TF32_VERSION, on tensor cores (about 5e-4 relative error, see
    kernels/conv.py).
    """
    bound = {}
    for op, family in OP_FAMILIES.items():
        try:
            launcher = _launcher(op, family)
            extra = {}
            if tf32 and op in TF32_OPS:
                extra["version"] = importlib.import_module(f"kernels.{family}").TF32_VERSION
            bound[op] = functools.partial(launcher, runner, **extra)
        except ImportError as exc:
            if not partial:
                raise
            bound[op] = _deferred(exc)
    return types.SimpleNamespace(**bound)
