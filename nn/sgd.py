"""Caffe's SGD update with momentum and L2 weight decay (one parameter blob).

The update is memory-bound (fc6 alone is 37.7M weights): it runs over cache-sized blocks,
so each element is read and written once, and the blocks are split over the CPU threads.
"""
import numpy as np

from nn.checks import (check_float_array, check_number, check_same_dtype, check_writeable,
                       expect_shape, fail)
from nn.threads import run_split

BLOCK = 1 << 17   # elements per block: 512 KiB of float32 per array (measured best of 2^14..2^18)


def check_sgd_args(param, grad, history, lr, momentum, weight_decay, grad_scale, layer):
    """Shared with the kernel launcher kernels/sgd.py (the caller has checked the arrays'
    types; this uses only their shapes and flags): grad and history have param's shape,
    param and history are writeable, the four scalars are finite numbers.
    Returns (lr, momentum, weight_decay, grad_scale) as floats."""
    for name, a in (("grad", grad), ("history", history)):
        expect_shape(a.shape, name, layer, param.shape, "(the shape of param)")
    check_writeable(layer, param=param, history=history)
    return tuple(check_number(v, name, layer) for v, name in
                 ((lr, "lr"), (momentum, "momentum"), (weight_decay, "weight_decay"),
                  (grad_scale, "grad_scale")))


def sgd_update(param, grad, history, lr, momentum, weight_decay, grad_scale=1.0):
    """In place, all arrays of one shape (any) and dtype:

        history = momentum * history + lr * (grad * grad_scale + weight_decay * param)
        param  -= history

    lr and weight_decay already include the blob's lr_mult / decay_mult;
    grad_scale = 1 / iter_size. `grad` is not modified. Returns None.
    """
    layer = 'sgd_update'
    check_float_array(param, "param", layer)
    check_float_array(grad, "grad", layer, expected=str(param.shape))
    check_float_array(history, "history", layer, expected=str(param.shape))
    scalars = check_sgd_args(param, grad, history, lr, momentum, weight_decay, grad_scale,
                             layer)
    check_same_dtype(layer, param=param, grad=grad, history=history)
    dt = param.dtype.type
    lr, momentum, weight_decay, grad_scale = (dt(v) for v in scalars)
    if not (param.flags.c_contiguous and grad.flags.c_contiguous
            and history.flags.c_contiguous):
        fail(layer, "param, grad and history must be C-contiguous")
    p, g, h = param.reshape(-1), grad.reshape(-1), history.reshape(-1)

    def update(lo, hi):
        step = np.empty(min(BLOCK, hi - lo), dtype=param.dtype)
        decay = np.empty_like(step)
        for start in range(lo, hi, BLOCK):
            end = min(start + BLOCK, hi)
            st, de = step[:end - start], decay[:end - start]
            # The formula's operation order. Multiplying by a grad_scale of 1 changes
            # nothing, and Caffe's solver skips a weight decay of 0 (decay_mult 0:
            # biases), so both are skipped. The CUDA kernel computes both always: the
            # same values for finite parameters (0 * inf would give NaN there).
            gb = g[start:end]
            if grad_scale != 1:
                gb = np.multiply(gb, grad_scale, out=st)
            if weight_decay != 0:
                np.multiply(p[start:end], weight_decay, out=de)
                gb = np.add(gb, de, out=st)
            np.multiply(gb, lr, out=st)
            hb = h[start:end]
            hb *= momentum
            hb += st
            p[start:end] -= hb

    run_split(-(-p.size // BLOCK), lambda lo, hi: update(lo * BLOCK, min(hi * BLOCK, p.size)))
