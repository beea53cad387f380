"""Caffe-style gradient checking with float64 central differences.

Two entry points:

* `check_layer(forward, backward, inputs, ...)`: for a cs231n-style layer. It draws a
  random upstream gradient dy, takes the objective sum(forward(*inputs) * dy), whose exact
  gradient is what backward(dy, cache) must return, and compares every returned gradient
  with central differences.
* `check_gradients(f, arrays, analytic, ...)`: for anything else, e.g. a whole network:
  `f()` returns a scalar computed from the float64 arrays in `arrays` (a dict), which this
  function perturbs in place (and restores); `analytic` holds the claimed gradients.

The comparison follows Caffe's GradientChecker: |analytic - numeric| <= threshold *
max(|analytic|, |numeric|, 1) per element.
"""
import numpy as np


def numerical_gradient(f, x, step=1e-6, indices=None):
    """Central differences of the scalar f() with respect to x, perturbed in place.

    x: float64 array read by f. indices: flat indices to check (default all).
    Returns (indices, numeric) with numeric[i] = (f(x + h e_i) - f(x - h e_i)) / 2h.
    """
    if x.dtype != np.float64:
        raise ValueError(f"gradcheck: x must be float64 (finite differences in float32 "
                         f"are too noisy), got {x.dtype}")
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("gradcheck: x must be contiguous so it can be perturbed in place")
    if indices is None:
        indices = np.arange(x.size)
    numeric = np.empty(len(indices))
    for n, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + step
        plus = float(f())
        flat[i] = old - step
        minus = float(f())
        flat[i] = old
        numeric[n] = (plus - minus) / (2 * step)
    return indices, numeric


def assert_close(analytic, numeric, threshold, name):
    """Caffe's per-element test; the message names the worst element."""
    analytic = np.asarray(analytic, dtype=np.float64)
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), 1.0)
    err = np.abs(analytic - numeric) / scale
    worst = int(np.argmax(err)) if err.size else 0
    if err.size and err[worst] > threshold:
        raise AssertionError(
            f"gradient of {name}: element {worst} analytic {analytic[worst]!r} vs numeric "
            f"{numeric[worst]!r} (relative error {err[worst]:.3g} > {threshold:g}); "
            f"{int((err > threshold).sum())} of {err.size} elements fail")


def _pick(size, max_checks, rng):
    """All flat indices, or a random subset of max_checks of them."""
    if max_checks is None or size <= max_checks:
        return np.arange(size)
    return np.sort(rng.choice(size, max_checks, replace=False))


def check_gradients(f, arrays, analytic, step=1e-6, threshold=1e-6, max_checks=None, seed=0):
    """Compare analytic[name] with the numeric gradient of f() w.r.t. arrays[name].

    f: callable () -> scalar reading the float64 arrays in `arrays` (perturbed in place).
    analytic: {name: gradient array of arrays[name]'s shape}. max_checks: check at most
    that many random elements per array (whole networks). Raises AssertionError.
    """
    rng = np.random.default_rng(seed)
    for name, x in arrays.items():
        g = np.asarray(analytic[name])
        if g.shape != x.shape:
            raise AssertionError(f"gradient of {name} has shape {g.shape}, expected {x.shape}")
        idx, num = numerical_gradient(f, x, step, _pick(x.size, max_checks, rng))
        assert_close(g.reshape(-1)[idx], num, threshold, name)


def check_layer(forward, backward, inputs, kwargs=None, names=None, seed=0, step=1e-6,
                threshold=1e-6, max_checks=None):
    """Gradient check of a layer pair.

    forward(*inputs, **kwargs) -> (y, cache); backward(dy, cache) -> gradient or tuple of
    gradients, one per input in order (extra trailing inputs without gradient are not
    allowed: pass them through kwargs). inputs: float64 arrays. Returns the analytic
    gradients (a tuple) so callers can test more.
    """
    kwargs = kwargs or {}
    names = names or [f"input {i}" for i in range(len(inputs))]
    rng = np.random.default_rng(seed)
    y, cache = forward(*inputs, **kwargs)
    dy = rng.standard_normal(np.shape(y))
    grads = backward(dy, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(inputs):
        raise AssertionError(f"backward returned {len(grads)} gradients for {len(inputs)} "
                             "inputs")

    def objective():
        return np.sum(forward(*inputs, **kwargs)[0] * dy)

    check_gradients(objective, dict(zip(names, inputs)), dict(zip(names, grads)), step,
                    threshold, max_checks, seed)
    return grads
