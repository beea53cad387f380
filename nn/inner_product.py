"""Inner product (Caffe's InnerProduct layer): y = x W^T + b, optionally fused ReLU.

Speed (the CPU path): each product is split over threads (nn/threads.py) along an axis of
the weights, so that every thread reads its own part of w (fc6's is 151 MB: these layers
are limited by how fast the weights stream from memory) and writes its own block of
the result.
"""
import numpy as np

from nn.checks import check_float_array, check_same_dtype, check_shape, check_upstream_grad, fail
from nn.relu import relu_grad
from nn.threads import run_split_gemm


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
    y = np.empty((n, o), dtype=x.dtype)

    def outputs(lo, hi):  # y[:, lo:hi] from the weight rows w[lo:hi]
        part = y[:, lo:hi]
        np.matmul(x2, w[lo:hi].T, out=part)
        part += b[lo:hi]
        if relu:
            np.maximum(part, 0, out=part)

    run_split_gemm(o, outputs)
    return y, (x.shape, x2, w, y if relu else None)


def inner_product_backward(dy, cache):
    """dy (N, O) -> (dx in x's original shape, dw (O, D), db (O,)).

    The ReLU gradient is included when the forward had relu=True.
    """
    x_shape, x2, w, y = cache
    check_upstream_grad(dy, (x2.shape[0], w.shape[0]), w.dtype, "inner_product_backward")
    if y is not None:
        dy = relu_grad(dy, y, "inner_product_backward")
    n, (o, d) = dy.shape[0], w.shape
    dx = np.empty((n, d), dtype=dy.dtype)
    dw = np.empty_like(w)

    def columns(lo, hi):  # dx[:, lo:hi] and dw[:, lo:hi] from the weight columns lo:hi
        np.matmul(dy, w[:, lo:hi], out=dx[:, lo:hi])
        np.matmul(dy.T, x2[:, lo:hi], out=dw[:, lo:hi])

    run_split_gemm(d, columns)
    db = dy.sum(axis=0)
    return dx.reshape(x_shape), dw, db
