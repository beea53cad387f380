"""Inner product (Caffe's InnerProduct layer): y = x W^T + b, optionally fused ReLU."""
from math import prod

import numpy as np

from nn import threads
from nn.checks import (check_float_array, check_same_dtype, check_upstream_grad, expect_shape,
                       fail)
from nn.relu import add_bias_relu, relu_grad

ROW_BLOCK = 64   # the forward product splits W's rows over threads in blocks of this many


def check_inner_product_shapes(x_shape, w_shape, b_shape, layer):
    """Validate the shapes x (N, ...) with D elements per sample, w (O, D), b (O,); shared
    with the kernel launcher kernels/gemm.py, so it looks at shapes only. Returns (N, D, O).
    """
    o, d = w_shape
    if len(x_shape) < 2:
        fail(layer, f"x must be an array of shape (N, D) or (N, ...) with D = {d} "
                    f"(w.shape[1]) elements per sample, got {tuple(x_shape)}")
    n = x_shape[0]
    if prod(x_shape[1:]) != d:
        fail(layer, f"x must have D = {d} (w.shape[1]) elements per sample, i.e. shape "
                    f"(N, {d}) or (N, ...) with product {d}; got {tuple(x_shape)}")
    if min(n, o, d) == 0:   # nothing to compute (and a zero-size grid on the GPU)
        fail(layer, f"x {tuple(x_shape)} and w {tuple(w_shape)} must not have empty axes")
    expect_shape(b_shape, "b", layer, (o,), "(one bias per output, O = w.shape[0])")
    return n, d, o


def inner_product_forward(x, w, b, relu=False, layer='fc'):
    """x (N, ...) flattened to (N, D), w (O, D), b (O,)  ->  y (N, O) = x W^T + b.

    relu=True applies ReLU to y. Returns (y, cache); with relu=True the cache references
    y, so do not modify y in place before inner_product_backward.
    """
    check_float_array(x, "x", layer, expected="(N, D) or (N, ...) with D elements per sample")
    check_float_array(w, "w", layer, ndim=2, expected="(O, D)")
    check_float_array(b, "b", layer, ndim=1, expected=f"({w.shape[0]},)")
    check_same_dtype(layer, x=x, w=w, b=b)
    n, d, _ = check_inner_product_shapes(x.shape, w.shape, b.shape, layer)
    x2 = x.reshape(n, d)
    # As y^T = W x^T with W's rows (the outputs) split over the CPU threads: for a small
    # batch this skinny product runs faster than one x @ W^T call (fc6 at batch 16 on 2
    # cores: 20 ms as x @ W^T, 12-14 as one W x^T, 11 split; equal at batch 256). Each
    # chunk calls the multithreaded BLAS. Chunks are whole blocks of ROW_BLOCK rows, so
    # every row is computed by the same BLAS kernel in the same order whatever the thread
    # count (a block's remainder rows are summed differently). One image is not split:
    # a matrix-vector product, 4.8 ms whole against 7.8 split for fc6.
    rows = w.shape[0]
    yt = np.empty((rows, n), dtype=x.dtype)

    def product(lo, hi):   # blocks lo:hi
        lo, hi = lo * ROW_BLOCK, min(hi * ROW_BLOCK, rows)
        np.matmul(w[lo:hi], x2.T, out=yt[lo:hi])

    threads.run_split(-(-rows // ROW_BLOCK), product, parts=1 if n == 1 else None)
    y = np.empty((n, rows), dtype=x.dtype)
    add_bias_relu(yt.T, b, y, relu)
    return y, dict(x_shape=x.shape, x2=x2, w=w, y=y if relu else None)


def inner_product_backward(dy, cache):
    """dy (N, O) -> (dx in x's original shape, dw (O, D), db (O,)).

    The ReLU gradient is included when the forward had relu=True.
    """
    x_shape, x2, w, y = (cache[k] for k in ("x_shape", "x2", "w", "y"))
    check_upstream_grad(dy, (x2.shape[0], w.shape[0]), w.dtype, "inner_product_backward")
    if y is not None:
        dy = relu_grad(dy, y, "inner_product_backward")
    dx = (dy @ w).reshape(x_shape)
    dw = dy.T @ x2
    db = dy.sum(axis=0)
    return dx, dw, db
