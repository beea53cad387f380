"""Caffe's SGD solver: momentum, weight decay, per-blob multipliers, step policy, iter_size.

For every blob (a layer's weight or bias), at iteration `iter`:

    lr       = base_lr * gamma ** floor(iter / stepsize)      ('step'; 'fixed': base_lr)
    history  = momentum * history + lr * lr_mult * (grad / iter_size
                                                    + weight_decay * decay_mult * param)
    param   -= history

`grad` is the SUM of iter_size mini-batch gradients (`accumulate`), each of a loss that is
a mean over its mini-batch, so grad / iter_size is the gradient of the mean over all of
them. The update itself is the device op `sgd_update`.

    solver = SGDSolver(net, base_lr=0.001, stepsize=2000)
    acc = None
    for batch, labels in mini_batches:            # iter_size of them
        loss, grads, _ = net.loss_and_grads(batch, labels)
        acc = accumulate(acc, grads)
    solver.step(acc)
"""
import numpy as np

LR_POLICIES = ("step", "fixed")
BLOBS = ("weight", "bias")


def accumulate(acc, grads):
    """Sum gradient dicts: returns acc + grads (acc None -> a copy of grads). In place on acc."""
    if acc is None:
        return {layer: {blob: g.copy() for blob, g in blobs.items()}
                for layer, blobs in grads.items()}
    for layer, blobs in grads.items():
        for blob, g in blobs.items():
            acc[layer][blob] += g
    return acc


class SGDSolver:
    """SGD with momentum for a CaffeNet (anything with params, param_multipliers(), device).

    base_lr, momentum, weight_decay, gamma, stepsize, iter_size: as in Caffe's solver
    prototxt. `iter` counts steps taken; `history` holds one momentum array per blob.
    """

    def __init__(self, net, base_lr, momentum=0.9, weight_decay=0.0005, lr_policy="step",
                 gamma=0.1, stepsize=None, iter_size=1):
        if lr_policy not in LR_POLICIES:
            raise ValueError(f"SGDSolver: lr_policy {lr_policy!r} is not one of {LR_POLICIES}")
        if lr_policy == "step" and (stepsize is None or int(stepsize) < 1):
            raise ValueError(f"SGDSolver: lr_policy 'step' needs stepsize >= 1, got {stepsize}")
        if int(iter_size) < 1:
            raise ValueError(f"SGDSolver: iter_size must be >= 1, got {iter_size}")
        self.net = net
        self.base_lr = float(base_lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.lr_policy = lr_policy
        self.gamma = float(gamma)
        self.stepsize = None if stepsize is None else int(stepsize)
        self.iter_size = int(iter_size)
        self.iter = 0
        xp = net.device.xp
        self.history = {layer: {blob: xp.zeros_like(arr) for blob, arr in blobs.items()}
                        for layer, blobs in net.params.items()}

    def lr_at(self, it):
        """Learning rate at iteration `it` (before multipliers)."""
        if self.lr_policy == "fixed":
            return self.base_lr
        return self.base_lr * self.gamma ** (int(it) // self.stepsize)

    @property
    def lr(self):
        """The learning rate the next step will use."""
        return self.lr_at(self.iter)

    def step(self, grads):
        """Update every blob of net.params in place from grads (same structure: the sum
        of iter_size mini-batch gradients), then advance `iter`."""
        self._check_grads(grads)  # all of them first: an error never leaves half a step
        lr, ops = self.lr, self.net.device.ops
        mults = self.net.param_multipliers()
        for layer, blobs in self.net.params.items():
            for blob in BLOBS:
                lr_mult, decay_mult = mults[layer][blob]
                ops.sgd_update(blobs[blob], grads[layer][blob], self.history[layer][blob],
                               lr * lr_mult, self.momentum, self.weight_decay * decay_mult,
                               grad_scale=1.0 / self.iter_size)
        self.iter += 1

    def _check_grads(self, grads):
        """KeyError / ValueError naming the layer and blob when grads does not have the
        structure and shapes of net.params."""
        for layer, blobs in self.net.params.items():
            if layer not in grads:
                raise KeyError(f"SGDSolver.step: no gradient for layer {layer!r}")
            for blob in BLOBS:
                if blob not in grads[layer]:
                    raise KeyError(f"SGDSolver.step: no {blob} gradient for layer {layer!r}")
                shape, want = grads[layer][blob].shape, blobs[blob].shape
                if shape != want:
                    raise ValueError(f"SGDSolver.step: layer {layer!r} {blob} gradient has "
                                     f"shape {shape}, expected {want}")

    # ------------------------------------------------------------------- state
    def state_dict(self):
        """{'iter': int, 'dropout_iter': int, 'history': {layer: {blob: ndarray}}}.

        dropout_iter is the net's dropout counter, so a resumed run draws the same masks."""
        to_numpy = self.net.device.to_numpy
        return {"iter": self.iter,
                "dropout_iter": int(getattr(self.net, "dropout_iter", 0)),
                "history": {layer: {blob: np.array(to_numpy(h)) for blob, h in blobs.items()}
                            for layer, blobs in self.history.items()}}

    def load_state_dict(self, state):
        """Restore what state_dict returned (shapes are checked against the net)."""
        history = state["history"]
        for layer, blobs in self.history.items():
            for blob, h in blobs.items():
                if layer not in history or blob not in history[layer]:
                    raise ValueError(f"solver state: no history for layer {layer!r} {blob}")
                if tuple(np.shape(history[layer][blob])) != tuple(h.shape):
                    raise ValueError(f"solver state: layer {layer!r} {blob} history has "
                                     f"shape {np.shape(history[layer][blob])}, expected "
                                     f"{tuple(h.shape)}")
        asarray = self.net.device.asarray
        self.history = {layer: {blob: asarray(history[layer][blob], h.dtype)
                                for blob, h in blobs.items()}
                        for layer, blobs in self.history.items()}
        self.iter = int(state["iter"])
        if "dropout_iter" in state and hasattr(self.net, "dropout_iter"):
            self.net.dropout_iter = int(state["dropout_iter"])

    def save_to_h5(self, group):
        """Write the state into an open h5py Group (e.g. f.create_group('solver')):
        attrs iter, dropout_iter and the hyper-parameters; datasets history/<layer>/<blob>."""
        state = self.state_dict()
        group.attrs["iter"] = state["iter"]
        group.attrs["dropout_iter"] = state["dropout_iter"]
        for key in ("base_lr", "momentum", "weight_decay", "lr_policy", "gamma", "iter_size"):
            group.attrs[key] = getattr(self, key)
        if self.stepsize is not None:
            group.attrs["stepsize"] = self.stepsize
        for layer, blobs in state["history"].items():
            for blob, h in blobs.items():
                group.create_dataset(f"history/{layer}/{blob}", data=h)

    def load_from_h5(self, group):
        """Restore the state written by save_to_h5 (hyper-parameters stay as constructed)."""
        missing = [key for key in ("iter", "dropout_iter") if key not in group.attrs]
        if missing or "history" not in group:
            raise ValueError(f"solver state in {group.file.filename}:{group.name} lacks "
                             f"{missing or 'history'}")
        history = {}
        for layer in group["history"]:
            history[layer] = {blob: group["history"][layer][blob][()]
                              for blob in group["history"][layer]}
        self.load_state_dict({"iter": int(group.attrs["iter"]),
                              "dropout_iter": int(group.attrs["dropout_iter"]),
                              "history": history})

