"""--versions: the kept versions of the kernel a case times (the launchers' version=,
their tile heights, TF32), or on the CPU path the reference's convolution algorithms."""
import functools
import importlib

from tools.bench import devices   # (through the module: a test may patch subject_ops)
from tools.bench.gate import TF32_TOLERANCE, TOLERANCE


def reference_algorithms(device, case, layer):
    """[(label, ops, tolerance)] for the CPU path: the reference's convolution algorithms
    (nn.conv.conv_algorithms) where more than one applies (at stride 1: im2col and the
    DFT, and Winograd for 3x3); [] for every other case. The backward follows its
    forward's algorithm (it is in the cache), so the forward op is the one bound."""
    from nn.conv import conv_algorithms
    if layer is None or layer.kind != 'conv' or case.op not in ('conv_forward',
                                                                 'conv_backward'):
        return []
    p = layer.params
    algorithms = conv_algorithms((p['kernel'], p['kernel']), p.get('stride', 1))
    if len(algorithms) < 2:
        return []
    out = []
    for algorithm in algorithms:
        ops = devices.subject_ops(device)
        ops.conv_forward = functools.partial(device.ops.conv_forward, algorithm=algorithm)
        out.append((algorithm, ops, TOLERANCE))
    return out


def kernel_versions(device, case, layer=None):
    """[(label, ops, tolerance)] for each kept version of the kernel `case` times (kernel
    devices; on the CPU path, reference_algorithms: the convolution algorithms). A
    launcher whose TILED_VERSIONS can force their tile height (conv) adds those at each
    height; its TF32_VERSION (tensor cores) is held to TF32_TOLERANCE, and left out on a
    GPU older than sm_80, which has no TF32 tensor cores (its launcher would refuse it).

    The launcher module's VERSIONS tuple lists them. A backward that takes no `version=`
    follows its forward's (kernels/conv.py and gemm.py keep it in the cache), so the
    forward op is the one bound.
    """
    import inspect
    from kernels.ops import OP_FAMILIES
    if device.runner is None:
        return reference_algorithms(device, case, layer)
    family = 'gemm' if case.op == 'matmul' else OP_FAMILIES[case.op]
    module = importlib.import_module(f'kernels.{family}')
    target = case.op
    if 'version' not in inspect.signature(getattr(module, target)).parameters:
        target = case.op.replace('_backward', '_forward')
        if not hasattr(module, target) or \
                'version' not in inspect.signature(getattr(module, target)).parameters:
            return []
    from kernels.launch_utils import tf32_capable
    out = []
    for v in module.VERSIONS:
        tf32 = v == getattr(module, 'TF32_VERSION', None)
        if tf32 and not tf32_capable(device.runner):
            continue
        name = f'{v} (TF32)' if tf32 else str(v)
        variants = [(name, {})]
        if v in getattr(module, 'TILED_VERSIONS', ()):   # conv: each tile height too
            variants += [(f'{name}, {h}-row tiles', {'tile_rows': h})
                         for h in module.TILE_HEIGHTS]
        for label, extra in variants:
            ops = devices.subject_ops(device)
            setattr(ops, target, functools.partial(getattr(module, target), device.runner,
                                                   version=v, **extra))
            out.append((label, ops, TF32_TOLERANCE if tf32 else TOLERANCE))
    return out
