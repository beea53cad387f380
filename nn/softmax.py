"""Softmax, Caffe's SoftmaxWithLoss (normalised by the batch size) and top-1 accuracy."""
import numpy as np

from nn.checks import check_float_array, check_number, expect_shape, fail

FLT_MIN = np.finfo(np.float32).tiny  # Caffe clamps p at FLT_MIN before the log


def check_softmax_shape(shape, layer):
    """scores must be (N, C) or (N, C, H, W); shared with kernels/softmax.py."""
    if len(shape) not in (2, 4):
        fail(layer, f"scores must have shape (N, C) or (N, C, H, W), got {tuple(shape)}")


def check_labels(scores_shape, labels, layer):
    """labels (N,) with values in [0, C) for scores (N, C), and N >= 1 (the loss and the
    accuracy are means over rows). Shared with kernels/softmax.py: the caller has checked
    the arrays' types; this uses only labels.shape, comparisons and reductions, which a CuPy
    array answers too. Valid labels cost one copy to the host (one synchronisation, the
    `any`); only bad ones pay for the min and max that the message reports."""
    n, c = scores_shape
    expect_shape(labels.shape, "labels", layer, (n,), "(one label per row of scores)")
    if n == 0:
        fail(layer, "scores must have at least one row (the loss is a mean over rows)")
    if bool(((labels < 0) | (labels >= c)).any()):
        lo, hi = int(labels.min()), int(labels.max())
        fail(layer, f"labels must lie in [0, {c}) (C = scores.shape[1]), got values in "
                    f"[{lo}, {hi}]")


def softmax(scores, layer='softmax'):
    """Softmax over axis 1: scores (N, C) or (N, C, H, W) -> probs of the same shape.

    The per-position maximum is subtracted first so exp never overflows.
    """
    check_float_array(scores, "scores", layer, expected="(N, C) or (N, C, H, W)")
    check_softmax_shape(scores.shape, layer)
    p = scores - scores.max(axis=1, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(axis=1, keepdims=True)
    return p


def _check_scores_labels(scores, labels, layer):
    """scores (N, C) float, labels (N,) integers in [0, C)."""
    check_float_array(scores, "scores", layer, ndim=2, expected="(N, C)")
    n = scores.shape[0]
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        fail(layer, f"labels must be an integer array of shape ({n},), got "
                    f"{type(labels).__name__}" + (f" of dtype {labels.dtype}"
                                                   if isinstance(labels, np.ndarray) else ""))
    check_labels(scores.shape, labels, layer)


def softmax_loss_forward(scores, labels, layer='softmax_loss'):
    """scores (N, C), labels (N,) -> (loss, cache); loss = -mean(log(max(p_label, FLT_MIN)))
    as a Python float."""
    _check_scores_labels(scores, labels, layer)
    p = softmax(scores, layer)
    n = scores.shape[0]
    p_label = np.maximum(p[np.arange(n), labels], p.dtype.type(FLT_MIN))
    loss = -float(np.log(p_label).sum(dtype=np.float64)) / n
    return loss, (p, labels)


def softmax_loss_backward(cache, loss_weight=1.0):
    """-> dscores (N, C) = (p - onehot(labels)) * loss_weight / N."""
    p, labels = cache
    loss_weight = check_number(loss_weight, "loss_weight", "softmax_loss_backward")
    n = p.shape[0]
    d = p.copy()
    d[np.arange(n), labels] -= 1
    d *= p.dtype.type(loss_weight / n)
    return d


def accuracy(scores, labels, layer='accuracy'):
    """Top-1 accuracy as a Python float; ties go to the lowest class index (np.argmax)."""
    _check_scores_labels(scores, labels, layer)
    return float(np.mean(np.argmax(scores, axis=1) == labels))
