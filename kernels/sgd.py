"""Launcher for kernels/sgd.cu: Caffe's momentum SGD update with weight decay, in place.

Same signature as nn/sgd.py with a leading `runner` and an optional `version`
(1: scalar, 2: float4; default 2 when the arrays are 16-byte aligned). Shapes and scalars
are checked by nn.sgd.check_sgd_args, shared with the reference.
"""
import numpy as np

from nn.sgd import check_sgd_args
from kernels.launch_utils import (BLOCK, VECTOR_VERSIONS, check_array, vector_grid,
                                  vector_version)

VERSIONS = VECTOR_VERSIONS  # the kernel versions kept (bench.py --versions times each)


def sgd_update(runner, param, grad, history, lr, momentum, weight_decay, grad_scale=1.0,
               version=None):
    """In place, param / grad / history float32 device arrays of one shape (any):

        history = momentum * history + lr * (grad * grad_scale + weight_decay * param)
        param  -= history

    lr and weight_decay already include the blob's lr_mult / decay_mult;
    grad_scale = 1 / iter_size. `grad` is not modified. Returns None.
    """
    layer = "sgd_update"
    check_array(runner, param, "param", layer, "(any shape)")
    for name, a in (("grad", grad), ("history", history)):
        check_array(runner, a, name, layer, f"{tuple(param.shape)} (the shape of param)")
    scalars = tuple(np.float32(v) for v in check_sgd_args(
        param, grad, history, lr, momentum, weight_decay, grad_scale, layer))
    v = vector_version(version, (param, grad, history), layer)
    n = param.size
    runner.kernel("sgd.cu", f"sgd_update_v{v}")(
        vector_grid(n, v), BLOCK, (param, grad, history, np.int32(n)) + scalars)
