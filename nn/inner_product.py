"""Inner product (Caffe's InnerProduct layer): y = x W^T + b, optionally fused ReLU."""
import numpy as np

from nn.checks import check_float_array, check_same_dtype, check_shape, check_upstream_grad, fail
from nn.relu import relu_grad


def inner_product_forward(x, w, b, relu=False, layer='fc'):
    """x (N, ...) flattened to (N, D), w (O, D), b (O,)  ->  y (N, O) = x W^T + b.

    relu=True applies ReLU to y. Returns (y, cache); with relu=True the cache references
    y, so do not modify y in place before inner_product_backward.
    """
    check_float_array(x, "x", layer, min_ndim=2, expected="(N, D) or (N, ...) with D elements "
                                                          "per sample")
    check_float_array(w, "w", layer, ndim=2, expected="(O, D)")
    o, d = w.shape
    n = x.shape[0]
    if x.size != n * d:
        fail(layer, f"x must have D = {d} (w.shape[1]) elements per sample, i.e. shape "
                    f"(N, {d}) or (N, ...) with product {d}; got {x.shape}")
    check_float_array(b, "b", layer, ndim=1, expected=f"({o},)")
    check_shape(b, "b", layer, (o,), "(one bias per output, O = w.shape[0])")
    check_same_dtype(layer, x=x, w=w, b=b)
    x2 = x.reshape(n, d)
    y = x2 @ w.T
    y += b
    if relu:
        np.maximum(y, 0, out=y)
    return y, (x.shape, x2, w, y if relu else None)


def inner_product_backward(dy, cache):
    """dy (N, O) -> (dx in x's original shape, dw (O, D), db (O,)).

    The ReLU gradient is included when the forward had relu=True.
    """
    x_shape, x2, w, y = cache
    check_upstream_grad(dy, (x2.shape[0], w.shape[0]), w.dtype, "inner_product_backward")
    if y is not None:
        dy = relu_grad(dy, y, "inner_product_backward")
    dx = (dy @ w).reshape(x_shape)
    dw = dy.T @ x2
    db = dy.sum(axis=0)
    return dx, dw, db
