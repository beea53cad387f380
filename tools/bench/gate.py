"""The correctness gate: every result is compared with the float64 NumPy reference
before it is timed, on the first and last image, within TOLERANCE (TF32_TOLERANCE for
tensor cores); a result that disagrees is WRONG and not timed."""
import numpy as np

from tools.bench.devices import reference_ops

CHECK_IMAGES = 2        # images compared with the float64 reference: first and last
TOLERANCE = 1e-4        # max |result - reference| / max |reference|: float32 against float64
# The same for the tensor-core (TF32) versions: TF32 keeps 10 of float32's 23 mantissa bits,
# about 5e-4 relative per operand, which long sums add up; a wrong index is off by O(1).
TF32_TOLERANCE = 1e-2


def max_rel_error(got, want):
    """max |got - want| / max |want| as a float (inf on a shape mismatch, nan stays nan)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return float('inf')
    if got.size == 0:
        return 0.0
    # One float64 temporary (a gradient can be 37M long); reshape keeps scalars arrays.
    diff = np.subtract(got.reshape(-1), want.reshape(-1), dtype=np.float64)
    np.abs(diff, out=diff)
    scale = max(float(np.abs(want).max()), 1e-30)
    return float(diff.max() / scale)


def check_rows(n):
    """Rows (images) compared with the reference: the first and the last, where the
    edge cases of a tiled kernel live; at most CHECK_IMAGES of them."""
    return sorted({0, n - 1})[:CHECK_IMAGES]


def _take_rows(inputs, rows):
    """The chosen rows of every batched input (weights and biases stay whole)."""
    return {n: (a if n in ('w', 'b') else np.ascontiguousarray(a[rows]))
            for n, a in inputs.items()}


def gate(case, run_fn, lib, inputs, full_outputs=None, tolerance=TOLERANCE):
    """Compare a result with the float64 NumPy reference; returns (ok, max_rel_error),
    ok when the error is at most `tolerance`.

    run_fn(lib_inputs) -> outputs runs the subject on inputs converted by `lib`. It is run
    on the check rows (the first and last image; the whole batch for case.check_all) and
    every output is compared; `full_outputs`, the subject's outputs on the whole timed
    batch, are compared on the same rows of their per-sample outputs.
    """
    reference = reference_ops()
    n = len(next(iter(inputs.values())))
    rows = list(range(n)) if case.check_all else check_rows(n)
    small = _take_rows(inputs, rows)
    small64 = {k: (a.astype(np.float64) if a.dtype.kind == 'f' else a) for k, a in small.items()}
    truth = case.run(reference, case.prepare(reference, small64))
    got = run_fn(lib.convert(small))
    errors = [max_rel_error(lib.to_numpy(g), t) for g, t in zip(got, truth)]
    if len(got) != len(truth):
        errors.append(float('inf'))
    if full_outputs is not None:
        for per_sample, g, t in zip(case.per_sample, full_outputs, truth):
            if per_sample:
                errors.append(max_rel_error(lib.to_numpy(g[rows]), t))  # rows on device
    worst = max(errors)
    return bool(worst <= tolerance), worst
