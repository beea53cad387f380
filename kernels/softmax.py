"""Launchers for kernels/softmax.cu: softmax, SoftmaxWithLoss and top-1 accuracy.

Same signatures as nn/softmax.py with a leading `runner`. `softmax` has two kernels
(1: one thread per (n, h, w) column, 2: one block per column with shared-memory
reductions); by default v2 is used for long rows without a spatial map (C >= 64, S = 1,
e.g. ImageNet's 1000 classes) and v1 otherwise (the 2-class score map).

The loss and the accuracy are reduced on the device by one block; only the final scalar
is copied back to the host (which synchronises, as the float return value requires).
"""
import numpy as np

from nn.checks import check_number
from nn.softmax import check_labels, check_softmax_shape
from kernels.launch_utils import BLOCK, check_array, grid_1d, pick_version

# The softmax kernel versions kept (bench.py --versions times each); the loss and the
# accuracy have one kernel each.
VERSIONS = (1, 2)
REDUCE_BLOCK = 256         # threads of the one-block reductions (a power of two)
V2_MIN_CLASSES = 64        # softmax v2 pays off only when a row is long enough


def _scalar(a):
    """A one-element device array as a Python float (copies it to the host)."""
    return float(a.get()[0] if hasattr(a, "get") else a[0])


def softmax(runner, scores, layer='softmax', version=None):
    """Softmax over axis 1: scores (N, C) or (N, C, H, W) float32 -> probs, same shape."""
    check_array(runner, scores, "scores", layer, "(N, C) or (N, C, H, W)")
    check_softmax_shape(scores.shape, layer)
    n, c = scores.shape[:2]
    s = int(np.prod(scores.shape[2:], dtype=np.int64))
    default = 2 if (s == 1 and c >= V2_MIN_CLASSES) else 1
    version = pick_version(version, VERSIONS, default, layer)
    p = runner.xp.empty_like(scores)
    args = (scores, p, np.int32(n), np.int32(c), np.int32(s))
    if version == 1:
        runner.kernel("softmax.cu", "softmax_v1")(grid_1d(n * s), BLOCK, args)
    else:
        # One block per column; grid_1d with block=1 caps the block count the same way.
        runner.kernel("softmax.cu", "softmax_v2")(grid_1d(n * s, block=1), REDUCE_BLOCK, args,
                                                  shared_mem=REDUCE_BLOCK * 4)
    return p


def _check_scores_labels(runner, scores, labels, layer):
    """scores (N, C) float32, labels (N,) int32 in [0, C): the device arrays here, then the
    reference's nn.softmax.check_labels (whose range check synchronises once, copying one
    bool to the host)."""
    check_array(runner, scores, "scores", layer, "(N, C)", ndim=2)
    check_array(runner, labels, "labels", layer, f"({scores.shape[0]},) (one label per row "
                "of scores)", dtype=np.int32)
    check_labels(scores.shape, labels, layer)


def softmax_loss_forward(runner, scores, labels, layer='softmax_loss', version=None):
    """scores (N, C) float32, labels (N,) int32 -> (loss, cache);
    loss = -mean(log(max(p_label, FLT_MIN))) as a Python float."""
    _check_scores_labels(runner, scores, labels, layer)
    p = softmax(runner, scores, layer, version)
    n, c = scores.shape
    loss = runner.xp.empty((1,), dtype=np.float32)
    runner.kernel("softmax.cu", "softmax_loss_v1")(
        1, REDUCE_BLOCK, (p, labels, loss, np.int32(n), np.int32(c)),
        shared_mem=REDUCE_BLOCK * 4)
    return _scalar(loss), (p, labels)


def softmax_loss_backward(runner, cache, loss_weight=1.0):
    """-> dscores (N, C) = (p - onehot(labels)) * loss_weight / N."""
    p, labels = cache
    loss_weight = check_number(loss_weight, "loss_weight", "softmax_loss_backward")
    n, c = p.shape
    d = runner.xp.empty_like(p)
    runner.kernel("softmax.cu", "softmax_loss_backward_v1")(
        grid_1d(n * c), BLOCK, (p, labels, d, np.int32(n), np.int32(c),
                                np.float32(loss_weight / n)))
    return d


def accuracy(runner, scores, labels, layer='accuracy'):
    """Top-1 accuracy of scores (N, C) against labels (N,) int32, as a Python float; ties go
    to the lowest class index. Counted on the device, divided by N on the host."""
    _check_scores_labels(runner, scores, labels, layer)
    n, c = scores.shape
    count = runner.xp.empty((1,), dtype=np.float32)
    runner.kernel("softmax.cu", "accuracy_count_v1")(
        1, REDUCE_BLOCK, (scores, labels, count, np.int32(n), np.int32(c)),
        shared_mem=REDUCE_BLOCK * 4)
    return _scalar(count) / n
