"""Fine-tune CaffeNet on one fold of the Twitter visual sentiment dataset, as the paper did.

    python train.py --fold 2                      # five-agree, fold 2, the paper's recipe
    python train.py --all-folds --agree all       # the paper's table: mean +- std per subset
    python train.py --data synthetic              # offline: a generated dataset, a few minutes

The paper's recipe (Campos et al. 2017, the defaults here): weights from ImageNet CaffeNet,
the last layer replaced by a 2-way `fc8_twitter` (Gaussian std 0.01, bias 0, lr_mult 10/20),
SGD with base lr 0.001, momentum 0.9, weight decay 0.0005, batch 256, lr divided by 10 every
6 epochs, 65 epochs; random 227 crops and mirrors for training; the test fold evaluated on
the centre crop and on Caffe's ten-crop oversampling.

Writes `<out-dir>/<dataset>_<agree>_fold<k>.h5` (weights) and `.json` (metrics and
settings), replacing an earlier run's only with --force; checkpoints go to
`<out-dir>/checkpoints/` every --checkpoint-every iterations, on Ctrl-C and after the last
step (removed once the metrics are written), and `--resume` continues a run so that it
ends with exactly the weights of an uninterrupted one (same device, same seed), or only
evaluates it when its training had finished.
"""
import argparse
import json
import logging
import math
import os
import signal
import sys
import time
import warnings

import nn  # first, before NumPy: see nn/__init__.py (OpenBLAS threads)
import numpy as np

from nn.atomic import atomic_write, check_writable
from nn.twitter import AGREES, CLASS_NAMES, DEFAULT_DATA_DIR, NUM_FOLDS

IMAGENET_WEIGHTS = os.path.join("weights", "caffenet_imagenet.h5")
LAST_LAYER = "fc8_twitter"
SYNTHETIC_DIR = os.path.join("data", "synthetic")

# Settings that may not change between an interrupted run and its --resume.
RESUME_MUST_MATCH = ("data", "agree", "fold", "init", "seed", "batch_size", "iter_size",
                     "base_lr", "momentum", "weight_decay", "gamma", "stepsize", "max_iter",
                     "device", "tf32", "n_train", "n_test", "weights")
# How to get the dataset (README: the archive comes from the authors' project page).
FETCH_DATA = ("`python -m tools.fetch dataset --dataset-archive FILE` and "
              "`python -m tools.fetch splits`")

# The paper's recipe, and a small one for the offline synthetic dataset. Offline there
# are no ImageNet weights, so it trains from scratch, with Caffe's xavier filler: Caffe's
# own CaffeNet initialisation (biases of 1, std 0.005 in fc6/fc7) gives fc7 features that
# are nearly constant across images (std 0.009 around 0.99, measured on the synthetic
# set), which SGD needs far more than a few minutes to get out of.
PRESETS = {
    "paper": dict(init="imagenet", batch_size=256, base_lr=0.001, epochs=65.0,
                  step_epochs=6.0, test_batch_size=25),
    "synthetic": dict(init="xavier", batch_size=16, base_lr=5e-5, epochs=6.0,
                      step_epochs=8.0, test_batch_size=16),
}


class TrainError(RuntimeError):
    """A problem the user can fix (missing data or weights, bad settings): one clear line."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: ...)' only for real defaults: options whose default depends on the
    preset (None here) say it in their help text instead."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Fine-tune CaffeNet on the Twitter visual sentiment dataset "
                    "(Campos et al. 2017). Defaults are the paper's recipe.",
        formatter_class=_HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=DEFAULT_DATA_DIR,
                   help="dataset folder (see nn/twitter.py for its layout), or 'synthetic' "
                        f"to generate a small offline dataset in {SYNTHETIC_DIR}")
    g.add_argument("--agree", default="five", choices=AGREES + ("all",),
                   help="subset: images on which at least five/four/three annotators agree")
    g.add_argument("--fold", type=int, default=2, choices=range(1, NUM_FOLDS + 1),
                   metavar="1..5", help="cross-validation fold to test on")
    g.add_argument("--all-folds", action="store_true",
                   help="train and test all five folds and print mean +- std")
    g.add_argument("--synthetic-images", type=int, default=120,
                   help="images in the generated dataset (--data synthetic)")
    g = p.add_argument_group("model and solver (default: the paper's recipe; "
                             "--data synthetic has its own smaller defaults)")
    g.add_argument("--init", choices=("imagenet", "random", "xavier"), default=None,
                   help="start from ImageNet CaffeNet weights (--weights), from Caffe's "
                        "random initialisation of CaffeNet (Gaussian weights, biases 0/1), "
                        "or from Caffe's xavier filler (zero biases; trains far faster from "
                        "scratch) [paper: imagenet; synthetic: xavier]")
    g.add_argument("--weights", default=None,
                   help="ImageNet CaffeNet weights in HDF5 (python -m tools.fetch weights) "
                        f"[{IMAGENET_WEIGHTS}]; given without --init, it implies "
                        "--init imagenet")
    g.add_argument("--batch-size", type=int, default=None, help="images per mini-batch [256]")
    g.add_argument("--iter-size", type=int, default=1,
                   help="mini-batches accumulated per SGD step (Caffe's iter_size): "
                        "the effective batch is batch-size x iter-size")
    g.add_argument("--base-lr", type=float, default=None, help="base learning rate [0.001]")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=0.0005,
                   help="L2 weight decay (Caffe's decay_mult applies per blob)")
    g.add_argument("--gamma", type=float, default=0.1, help="lr factor at every step")
    g.add_argument("--epochs", type=float, default=None, help="training length [65]")
    g.add_argument("--step-epochs", type=float, default=None,
                   help="epochs between learning-rate steps [6]")
    g.add_argument("--max-iter", type=int, default=None,
                   help="SGD steps (overrides --epochs)")
    g.add_argument("--stepsize", type=int, default=None,
                   help="SGD steps between lr steps (overrides --step-epochs)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the fresh layers, the data order, crops and dropout")
    g = p.add_argument_group("running")
    from nn.device import add_device_argument
    add_device_argument(g)
    g.add_argument("--out-dir", default="weights", help="where weights and metrics go")
    g.add_argument("--checkpoint-every", type=int, default=20,
                   help="write a checkpoint every N SGD steps (0: only on Ctrl-C and after the "
                        "last step, before the evaluation)")
    g.add_argument("--resume", action="store_true",
                   help="continue from this run's checkpoint in <out-dir>/checkpoints/")
    g.add_argument("--force", action="store_true",
                   help="replace the weights and metrics of an earlier run in --out-dir "
                        "(refused otherwise)")
    g.add_argument("--test-batch-size", type=int, default=None,
                   help="images per evaluation batch [25]")
    g.add_argument("--no-oversample", action="store_true",
                   help="skip the ten-crop evaluation (the centre crop is always evaluated)")
    g.add_argument("--display", type=int, default=1, help="print progress every N steps")
    g.add_argument("--quiet", action="store_true", help="print only the results")
    args = p.parse_args(argv)
    # --weights is read only with --init imagenet: given alone it asks for that init, and
    # with another --init it would be silently ignored.
    if args.weights is None:
        args.weights = IMAGENET_WEIGHTS
    elif args.init is None:
        args.init = "imagenet"
    elif args.init != "imagenet":
        p.error(f"--weights is read only with --init imagenet; drop --weights to train "
                f"from --init {args.init}, or use --init imagenet")
    preset = PRESETS["synthetic" if args.data == "synthetic" else "paper"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # argparse's float() takes 'nan' and 'inf', which pass the range checks below.
    for name in ("epochs", "step_epochs", "base_lr", "gamma", "momentum", "weight_decay"):
        if not math.isfinite(getattr(args, name)):
            p.error(f"--{name.replace('_', '-')} must be a finite number, got "
                    f"{getattr(args, name)}")
    for name in ("batch_size", "iter_size", "test_batch_size", "display"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("epochs", "step_epochs", "base_lr", "gamma"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("max_iter", "stepsize"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("momentum", "weight_decay", "checkpoint_every"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    if not args.momentum < 1:   # SGD with momentum 1 or more never settles
        p.error("--momentum must be less than 1")
    if args.synthetic_images < 2 * NUM_FOLDS:
        p.error(f"--synthetic-images must be at least {2 * NUM_FOLDS} (two of each class "
                f"per fold)")
    if args.all_folds is False and args.agree == "all":
        p.error("--agree all needs --all-folds")
    return args


# ------------------------------------------------------------------------------ data
def resolve_data_dir(args, say):
    """The dataset folder; generates the synthetic dataset when asked for and absent."""
    if args.data != "synthetic":
        if not os.path.isdir(args.data):
            raise TrainError(f"dataset folder {args.data} not found: fetch it with {FETCH_DATA}, "
                             f"or run offline with `python train.py --data synthetic`")
        return args.data
    from nn.twitter import DatasetError, label_file, make_synthetic_dataset, read_list
    try:   # the three-agree list holds every generated image
        existing = len(read_list(label_file(SYNTHETIC_DIR, "three")))
    except DatasetError:
        existing = None
    if existing != args.synthetic_images:
        say(f"generating a synthetic dataset of {args.synthetic_images} images in "
            f"{SYNTHETIC_DIR}" + ("" if existing is None else
                                  f" (it held one of {existing} images)"))
        make_synthetic_dataset(SYNTHETIC_DIR, n_images=args.synthetic_images, seed=0)
    return SYNTHETIC_DIR


def load_items(data_dir, agree, fold, say):
    """(train, test) lists of (path, label), with the split-generation warning shown.

    Images that the lists name but that are not on disk are left out, with a note; when a
    list has none at all (e.g. the split files were fetched but not the images), TrainError
    names the folder and how to fetch the dataset.
    """
    from nn.twitter import DatasetError, load_fold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            train, test = load_fold(data_dir, agree=agree, fold=fold)
        except DatasetError as e:
            raise TrainError(str(e)) from e
    for w in caught:
        say(f"note: {w.message}")
    return present_images(train, "training", say), present_images(test, "test", say)


def present_images(items, what, say):
    """The (path, label) items whose image file exists; notes or raises about the others."""
    kept = [item for item in items if os.path.isfile(item[0])]
    missing = len(items) - len(kept)
    if not kept:
        raise TrainError(f"none of the {len(items)} {what} images is in "
                         f"{os.path.dirname(items[0][0]) or '.'} (e.g. {items[0][0]} is "
                         f"missing): fetch the dataset with {FETCH_DATA}")
    if missing:
        first = next(path for path, _ in items if not os.path.isfile(path))
        say(f"note: {missing} of the {len(items)} {what} images are missing and left out "
            f"(e.g. {first})")
    return kept


# ---------------------------------------------------------------------------- schedule
def schedule(args, n_train):
    """(max_iter, stepsize) in SGD steps, from epochs unless given directly."""
    per_step = args.batch_size * args.iter_size

    def steps(name):   # parse_args allows only finite values, but a huge one overflows here
        value = getattr(args, name) * n_train / per_step
        if not math.isfinite(value):
            raise TrainError(f"--{name.replace('_', '-')} {getattr(args, name):g} is too "
                             f"large")
        return value
    max_iter = args.max_iter or max(1, math.ceil(steps("epochs")))
    stepsize = args.stepsize or max(1, round(steps("step_epochs")))
    return max_iter, stepsize


def check_weights_file(args):
    """With --init imagenet the weight file must exist and be HDF5 (checked before anything
    else runs; its layers are checked when loaded)."""
    if args.init != "imagenet":
        return
    if not os.path.isfile(args.weights):
        raise TrainError(f"ImageNet weights {args.weights} not found: fetch and convert "
                         f"them with `python -m tools.fetch weights`, or train from "
                         f"Caffe's random initialisation with --init random")
    import h5py
    try:
        hdf5 = h5py.is_hdf5(args.weights)
    except OSError as e:   # exists but cannot be read
        raise TrainError(f"ImageNet weights {args.weights}: cannot read: {e}") from e
    if not hdf5:
        raise TrainError(f"ImageNet weights {args.weights} is not an HDF5 file (convert a "
                         f".caffemodel with `python -m tools.convert_caffemodel`)")


def check_outputs_free(args, runs):
    """Before anything runs: refuse to replace an earlier run's weights or metrics
    (--force does; --resume continues a run whose final files are not written yet)."""
    if args.force or args.resume:
        return
    for agree, fold in runs:
        for path in run_outputs(args, agree, fold):
            if os.path.exists(path):
                raise TrainError(f"{path} exists (from an earlier run); use --force to "
                                 f"replace it, or --out-dir")


def check_out_dir(out_dir):
    """Before anything runs: create --out-dir and its checkpoints folder and write a probe
    file in each, so that a folder that cannot be written stops the run now, not at its
    first checkpoint or after all the training."""
    for folder in (out_dir, os.path.join(out_dir, "checkpoints")):
        try:
            check_writable(os.path.join(folder, "weights.h5"))
        except OSError as e:
            raise TrainError(f"cannot write to --out-dir {out_dir}: {e}") from e


def build_net(args, device, say):
    from nn.caffenet import CaffeNet
    net = CaffeNet(num_classes=2, last_layer=LAST_LAYER, class_names=list(CLASS_NAMES),
                   device=device, dropout_seed=args.seed, seed=args.seed,
                   init="xavier" if args.init == "xavier" else "caffe")
    if args.init == "imagenet":   # run() has checked that the file exists
        from nn.weights import WeightsError
        try:
            report = net.load(args.weights)
        except WeightsError as e:
            raise TrainError(str(e)) from e
        say(f"copied {', '.join(report['copied'])} from {args.weights}; "
            f"initialised fresh: {', '.join(report['fresh'])}")
    else:
        # Every layer is fresh: the last one gets no 10x/20x head start (Caffe's CaffeNet
        # multipliers when training from scratch).
        from nn.caffenet import DEFAULT_MULT
        net.set_param_multipliers(LAST_LAYER, weight=DEFAULT_MULT[0], bias=DEFAULT_MULT[1])
    return net


# -------------------------------------------------------------------------- evaluation
def evaluate(net, items, batch_size, oversample):
    """Accuracy on `items` of the centre crop and, with oversample, of Caffe's ten-crop
    oversampling (probabilities averaged over the ten crops; None without), and the paths
    of images that could not be loaded (left out of both). Each image is decoded once: the
    centre crop is one of the ten. TrainError if none loads."""
    from nn.batches import EvalLoader
    from nn.preprocess import CENTER_OF_TEN, average_over_crops
    center, ten, labels = [], [], []
    with EvalLoader(items, batch_size, crops="ten" if oversample else "center") as loader:
        for images, batch_labels in loader:         # (B, 10, 3, S, S) or (B, 3, S, S)
            if oversample:
                ten.append(average_over_crops(net.predict, images))
                images = images[:, CENTER_OF_TEN]
            center.append(net.predict(images))
            labels.append(batch_labels)
    if not labels:
        raise TrainError(f"none of the {len(items)} test images could be loaded "
                         f"(e.g. {loader.skipped[0]})")
    labels = np.concatenate(labels)

    def accuracy(probs):
        return float(np.mean(np.concatenate(probs).argmax(axis=1) == labels))
    return accuracy(center), accuracy(ten) if oversample else None, loader.skipped


# ---------------------------------------------------------------------------- training
class StopRequest:
    """Ctrl-C handling: while `training` is set, the first one asks the loop to stop after
    the current step (and checkpoint) and a second one interrupts at once; at any other
    time (loading, evaluating) Ctrl-C interrupts at once (KeyboardInterrupt)."""

    def __init__(self):
        self.requested = False
        self.training = False
        self._previous = None

    def __enter__(self):
        if threading_is_main():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested or not self.training:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step and writing a checkpoint "
              "(Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def threading_is_main():
    import threading
    return threading.current_thread() is threading.main_thread()


def format_seconds(s):
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_name(args, agree, fold):
    dataset = "synthetic" if args.data == "synthetic" else "twitter"
    return f"{dataset}_{agree}_fold{fold}"


def run_outputs(args, agree, fold):
    """(weights .h5, metrics .json) a finished run of this fold writes into --out-dir."""
    stem = os.path.join(args.out_dir, run_name(args, agree, fold))
    return stem + ".h5", stem + ".json"


def train_fold(args, data_dir, agree, fold, device, say, stop, stop_at=None):
    """Train one fold; returns the metrics dict (also written as JSON beside the weights).

    stop_at: stop (with a checkpoint) after this many SGD steps, as Ctrl-C would; for tests.
    Returns None when the run stopped early.
    """
    from nn.batches import TrainLoader
    from nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from nn.solver import SGDSolver, accumulate

    train, test = load_items(data_dir, agree, fold, say)
    max_iter, stepsize = schedule(args, len(train))
    name = run_name(args, agree, fold)
    settings = dict(data=args.data, agree=agree, fold=fold, init=args.init, seed=args.seed,
                    batch_size=args.batch_size, iter_size=args.iter_size,
                    base_lr=args.base_lr, momentum=args.momentum,
                    weight_decay=args.weight_decay, gamma=args.gamma, stepsize=stepsize,
                    max_iter=max_iter, device=device.name, tf32=device.tf32,
                    n_train=len(train),
                    n_test=len(test),
                    weights=os.path.normpath(args.weights) if args.init == "imagenet" else None)
    checkpoint = os.path.join(args.out_dir, "checkpoints", name + ".h5")
    weights_path, metrics_path = run_outputs(args, agree, fold)
    if (args.resume and not args.force and os.path.isfile(weights_path)
            and os.path.isfile(metrics_path)):
        metrics = finished_run(metrics_path, settings)   # (--all-folds --resume: done folds)
        say(f"[{name}] already finished ({metrics_path}): kept, not trained again")
        return metrics

    def kept():
        return (f"the last good checkpoint is {checkpoint}" if os.path.isfile(checkpoint)
                else "no checkpoint was written yet")

    def write_or_stop(path, write):
        """write(); an OSError (disk full, folder gone) is one line naming the file."""
        try:
            write()
        except OSError as e:
            raise TrainError(f"[{name}] cannot write {path}: {e.strerror or e}; "
                             f"{kept()}") from e

    say(f"[{name}] {len(train)} training / {len(test)} test images; {max_iter} SGD steps of "
        f"{args.batch_size} x {args.iter_size} images, lr {args.base_lr:g} x {args.gamma:g} "
        f"every {stepsize} steps; device {device.name}{' (TF32)' if device.tf32 else ''}")

    net = build_net(args, device, say)
    solver = SGDSolver(net, args.base_lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, lr_policy="step", gamma=args.gamma,
                       stepsize=stepsize, iter_size=args.iter_size)
    loader_state, losses, seconds_before = {"epoch": 0, "position": 0}, [], 0.0
    if args.resume and os.path.isfile(checkpoint):
        try:
            loader_state, extra = load_checkpoint(checkpoint, net, solver, settings,
                                                  RESUME_MUST_MATCH)
        except CheckpointError as e:
            raise TrainError(str(e)) from e
        losses = extra.get("losses", [])
        seconds_before = extra.get("train_seconds", 0.0)
        say(f"[{name}] resumed from {checkpoint} at step {solver.iter}")
    elif args.resume:   # on stderr even with --quiet: the user asked for something else
        print(f"train.py: note: [{name}] no checkpoint at {checkpoint} to resume: starting "
              f"from the beginning", file=sys.stderr, flush=True)
    elif os.path.isfile(checkpoint):
        say(f"[{name}] note: starting afresh; the checkpoint {checkpoint} of an earlier run "
            f"will be replaced (--resume continues it instead)")

    def save(state):
        save_checkpoint(checkpoint, net, solver, state, settings,
                        {"losses": losses,
                         "train_seconds": seconds_before + time.time() - started})

    started, start_iter, images_seen = time.time(), solver.iter, 0
    # A run resumed at its last step (checkpointed before the evaluation) only evaluates:
    # no loader, whose threads would load and augment training batches for nothing.
    if solver.iter < max_iter:
        stop.training = True      # until the loop ends, the first Ctrl-C stops after a step
        with TrainLoader(train, args.batch_size, seed=args.seed, epoch=loader_state["epoch"],
                         position=loader_state["position"]) as loader:
            while solver.iter < max_iter:
                total, step_loss = None, 0.0
                for _ in range(args.iter_size):
                    images, labels = next(loader)
                    loss, grads, _ = net.loss_and_grads(images, labels)
                    if not math.isfinite(loss):
                        raise TrainError(f"[{name}] the loss diverged ({loss}) at step "
                                         f"{solver.iter}: stopping; {kept()}. Try a smaller "
                                         f"--base-lr.")
                    total = accumulate(total, grads)
                    step_loss += loss / args.iter_size
                    images_seen += images.shape[0]
                lr = solver.lr
                solver.step(total)
                losses.append(step_loss)
                done = solver.iter
                if done % args.display == 0 or done == max_iter:
                    elapsed = time.time() - started
                    rate = images_seen / max(elapsed, 1e-9)
                    eta = (max_iter - done) * elapsed / max(done - start_iter, 1)
                    say(f"[{name}] step {done}/{max_iter}  loss {step_loss:.4f}  lr {lr:.2g}  "
                        f"{rate:.1f} img/s  epoch {loader.epoch}  left {format_seconds(eta)}")
                early = stop.requested or (stop_at is not None and done >= stop_at)
                # The last step is checkpointed too: an evaluation cut short (Ctrl-C, a crash)
                # then resumes at the evaluation instead of training the last steps again.
                if early or done == max_iter or (args.checkpoint_every
                                                 and done % args.checkpoint_every == 0):
                    write_or_stop(checkpoint, lambda: save(loader.state))
                    say(f"[{name}] checkpoint written: {checkpoint} (step {done})")
                if early and done < max_iter:
                    say(f"[{name}] stopped at step {done}; continue with --resume")
                    return None
        stop.training = False     # from here Ctrl-C interrupts at once (StopRequest)
    train_seconds = seconds_before + time.time() - started

    write_or_stop(weights_path, lambda: net.save(weights_path))
    say(f"[{name}] evaluating {len(test)} test images")
    oversample = not args.no_oversample
    # On the NumPy path a ten-crop batch holds about test_batch_size crops, not 10x that.
    batch_size = (max(1, args.test_batch_size // 10) if oversample and device.name == "cpu"
                  else args.test_batch_size)
    acc_center, acc_ten, skipped = evaluate(net, test, batch_size, oversample)
    metrics = dict(run=name, accuracy_center=acc_center, accuracy_oversampled=acc_ten,
                   n_test_evaluated=len(test) - len(skipped), test_images_skipped=skipped,
                   final_loss=losses[-1] if losses else None, losses=losses,
                   train_seconds=train_seconds, weights_file=weights_path, settings=settings)

    def write_metrics(tmp):
        with open(tmp, "w") as f:
            json.dump(metrics, f, indent=1)
    write_or_stop(metrics_path, lambda: atomic_write(metrics_path, write_metrics))
    over = "" if acc_ten is None else f", 10-crop oversampled {acc_ten:.3f}"
    left_out = (f" ({len(skipped)} unreadable test images left out)" if skipped else "")
    print(f"[{name}] test accuracy: centre crop {acc_center:.3f}{over}{left_out}; weights "
          f"{weights_path}, metrics {metrics_path}", flush=True)
    try:   # the run is complete: its weights and metrics are written
        if os.path.isfile(checkpoint):
            os.remove(checkpoint)
    except OSError as e:
        say(f"[{name}] note: could not remove the finished run's checkpoint: {e}")
    return metrics


def finished_run(metrics_path, settings):
    """The metrics of a finished run, for --resume; TrainError when they cannot be read
    or the run had other settings (its results would pass for this run's)."""
    from nn.checkpoint import settings_differences
    try:
        with open(metrics_path) as f:
            metrics = json.load(f)
        saved = metrics["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrainError(f"{metrics_path}: cannot read a finished run's metrics ({e}); "
                         f"use --force to train it again") from e
    differ = settings_differences(saved, settings, RESUME_MUST_MATCH, "finished run")
    if differ:
        raise TrainError(f"{metrics_path} is a finished run with other settings "
                         f"({'; '.join(differ)}); use --force to train again")
    return metrics


def summary_table(results):
    """The paper's table: one row per subset, mean +- std (over folds, ddof=0)."""
    lines = [f"{'subset':<14}{'folds':>6}  {'centre crop':>16}  {'10-crop oversample':>20}"]
    for agree, runs in results.items():
        cells = []
        for key in ("accuracy_center", "accuracy_oversampled"):
            values = [r[key] for r in runs if r[key] is not None]
            cells.append(f"{np.mean(values):.3f} +- {np.std(values):.3f}" if values else "-")
        lines.append(f"{agree + '-agree':<14}{len(runs):>6}  {cells[0]:>16}  {cells[1]:>20}")
    return "\n".join(lines)


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning for train.py: 'train.py: warning: <message>' on stderr (a
    skipped image is one line naming the file, not a source listing)."""
    print(f"train.py: warning: {message}", file=sys.stderr if file is None else file,
          flush=True)


def main(argv=None, stop_at=None):
    """Run train.py with argv (default sys.argv[1:]); returns the exit status: 0 done (or
    stopped by stop_at), 2 a problem the user can fix, 130 stopped by Ctrl-C."""
    args = parse_args(argv)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with warnings.catch_warnings():
        warnings.showwarning = one_line_warning
        return run(args, say, stop_at)


def run(args, say, stop_at):
    """main() after parsing: train the fold(s), print the results; returns the exit status."""
    from nn.batches import NoImagesError
    try:
        agrees = AGREES if args.agree == "all" else (args.agree,)
        folds = range(1, NUM_FOLDS + 1) if args.all_folds else (args.fold,)
        check_weights_file(args)
        check_outputs_free(args, [(agree, fold) for agree in agrees for fold in folds])
        from nn.device import DeviceError, get_device
        try:
            device = get_device(args.device, tf32=args.tf32)
        except DeviceError as e:
            raise TrainError(str(e)) from e
        check_out_dir(args.out_dir)   # (after the device: a refused one leaves no folders)
        data_dir = resolve_data_dir(args, say)
        results = {}
        with StopRequest() as stop:
            for agree in agrees:
                for fold in folds:
                    metrics = train_fold(args, data_dir, agree, fold, device, say, stop,
                                         stop_at)
                    if metrics is None:
                        return 130 if stop.requested else 0
                    results.setdefault(agree, []).append(metrics)
        if args.all_folds:
            print(summary_table(results), flush=True)
        return 0
    except (TrainError, NoImagesError) as e:
        print(f"train.py: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntrain.py: interrupted (checkpoints already written are kept; continue with "
              "--resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
