"""Caffe's SGD update with momentum and L2 weight decay (one parameter blob)."""
import numpy as np

from nn.checks import check_float_array, check_number, check_same_dtype, check_shape, fail


def sgd_update(param, grad, history, lr, momentum, weight_decay, grad_scale=1.0):
    """In place, all arrays of one shape (any) and dtype:

        history = momentum * history + lr * (grad * grad_scale + weight_decay * param)
        param  -= history

    lr and weight_decay already include the blob's lr_mult / decay_mult;
    grad_scale = 1 / iter_size. `grad` is not modified. Returns None.
    """
    layer = 'sgd_update'
    check_float_array(param, "param", layer)
    for name, a in (("grad", grad), ("history", history)):
        check_float_array(a, name, layer, expected=str(param.shape))
        check_shape(a, name, layer, param.shape, "(the shape of param)")
    check_same_dtype(layer, param=param, grad=grad, history=history)
    if not (param.flags.writeable and history.flags.writeable):
        fail(layer, "param and history are updated in place and must be writeable")
    dt = param.dtype.type
    lr, momentum, weight_decay, grad_scale = (
        dt(check_number(v, name, layer)) for v, name in
        ((lr, "lr"), (momentum, "momentum"), (weight_decay, "weight_decay"),
         (grad_scale, "grad_scale")))
    # Same operation order as the formula (and the kernel), one temporary array.
    step = grad * grad_scale
    step += weight_decay * param
    step *= lr
    history *= momentum
    history += step
    param -= history
