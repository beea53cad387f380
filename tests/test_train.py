"""train.py end to end on the synthetic dataset (CPU path): learning, resume, errors."""
import errno
import json
import os
import shutil
import signal

import h5py
import numpy as np
import pytest

import nn.batches
import train
from nn.caffenet import CaffeNet
from nn.checkpoint import CheckpointError, load_checkpoint
from nn.twitter import label_file, load_fold, make_synthetic_dataset, read_list

# Small and quick: batch 4, a handful of steps, centre-crop evaluation only.
QUICK = ["--data", "synthetic", "--synthetic-images", "40", "--batch-size", "4",
         "--device", "cpu", "--no-oversample", "--quiet", "--checkpoint-every", "0"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run train.py inside an empty folder (it writes data/ and weights/ there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def read_weights(path):
    with h5py.File(path, "r") as f:
        return {layer: {blob: f[layer][blob][()] for blob in ("weight", "bias")}
                for layer in f.attrs["layer_order"]}


def test_schedule_matches_the_paper():
    # five-agree: 704 training images, batch 256, 65 epochs -> about 180 steps
    args = train.parse_args([])
    max_iter, stepsize = train.schedule(args, 704)
    assert max_iter == 179                     # ceil(65 * 704 / 256)
    assert stepsize == 16                      # round(6 * 704 / 256) = round(16.5)
    args = train.parse_args(["--iter-size", "4", "--batch-size", "64"])
    assert train.schedule(args, 704) == (179, 16)
    args = train.parse_args(["--max-iter", "7", "--stepsize", "3"])
    assert train.schedule(args, 704) == (7, 3)


def test_paper_defaults():
    args = train.parse_args([])
    assert (args.init, args.batch_size, args.base_lr, args.momentum, args.weight_decay,
            args.gamma, args.epochs, args.step_epochs) == \
        ("imagenet", 256, 0.001, 0.9, 0.0005, 0.1, 65.0, 6.0)
    assert train.parse_args(["--data", "synthetic"]).init == "xavier"


def test_summary_table_mean_and_std():
    runs = [dict(accuracy_center=a, accuracy_oversampled=b)
            for a, b in ((0.8, 0.9), (0.6, 0.7))]
    table = train.summary_table({"five": runs})
    assert "five-agree" in table and "0.700 +- 0.100" in table and "0.800 +- 0.100" in table


def test_missing_dataset_names_path_and_fetch_command(in_tmp, capsys):
    assert train.main(["--data", "nowhere", "--init", "random"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "python -m tools.fetch" in err


def test_missing_imagenet_weights_names_path_and_fetch_command(in_tmp, capsys):
    code = train.main(QUICK + ["--init", "imagenet", "--weights", "no/such.h5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no/such.h5" in err and "tools.fetch weights" in err and "--init random" in err
    assert not os.path.exists("data")     # it stopped at once, before generating any data


def test_missing_images_stop_at_once_naming_the_file(in_tmp, capsys):
    # the split files were fetched but not the images (fetch splits without dataset)
    make_synthetic_dataset("ds", n_images=20, seed=0)
    shutil.rmtree(os.path.join("ds", "images"))
    assert train.main(["--data", "ds", "--init", "xavier", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: none of the ") and err.count("\n") == 1
    assert "synthetic_000" in err and "python -m tools.fetch dataset" in err
    # present but unreadable, every one of them
    make_synthetic_dataset("ds", n_images=20, seed=0)
    for name in os.listdir(os.path.join("ds", "images")):
        with open(os.path.join("ds", "images", name), "w") as f:
            f.write("not a JPEG")
    assert train.main(["--data", "ds", "--init", "xavier", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("train.py: none of the ") and "could be loaded" in err[-1]
    assert all(line.startswith("train.py: warning: skipping") for line in err[:-1])


def test_unreadable_images_are_one_line_warnings_and_left_out(in_tmp, capsys):
    make_synthetic_dataset(os.path.join("data", "synthetic"), n_images=40, seed=0)
    _, test = load_fold(os.path.join("data", "synthetic"), "five", 2)
    broken = test[0][0]
    with open(broken, "w") as f:
        f.write("not a JPEG")
    assert train.main(QUICK + ["--max-iter", "1"]) == 0
    err = capsys.readouterr().err
    assert err == (f"train.py: warning: skipping an image that cannot be loaded: {broken}: "
                   f"cannot read image: UnidentifiedImageError: cannot identify image file "
                   f"{broken!r}\n")
    with open(os.path.join("weights", "synthetic_five_fold2.json")) as f:
        metrics = json.load(f)
    assert metrics["test_images_skipped"] == [broken]
    assert metrics["n_test_evaluated"] == len(test) - 1


def test_bad_settings_are_usage_errors(capsys):
    for argv in (["--max-iter", "0"], ["--stepsize", "0"], ["--checkpoint-every", "-1"],
                 ["--gamma", "0"], ["--momentum", "-0.1"], ["--weight-decay", "-1"],
                 ["--data", "synthetic", "--synthetic-images", "9"]):
        with pytest.raises(SystemExit) as exc:
            train.parse_args(argv)
        assert exc.value.code == 2
        flag = argv[-2] if argv[-2].startswith("--") else argv[0]
        assert flag in capsys.readouterr().err.splitlines()[-1]


def test_numbers_must_be_finite_and_in_range(capsys):
    for argv in (["--epochs", "inf"], ["--step-epochs", "nan"], ["--base-lr", "inf"],
                 ["--gamma", "nan"], ["--momentum", "nan"], ["--weight-decay", "nan"],
                 ["--momentum", "1"]):
        with pytest.raises(SystemExit) as exc:
            train.parse_args(argv)
        assert exc.value.code == 2
        assert argv[0] in capsys.readouterr().err.splitlines()[-1]
    # finite, but too many epochs to count in SGD steps
    with pytest.raises(train.TrainError, match="--epochs 1e\\+308 is too large"):
        train.schedule(train.parse_args(["--epochs", "1e308"]), 704)


def test_weights_implies_imagenet_init_and_is_refused_with_another(in_tmp, capsys):
    args = train.parse_args(["--data", "synthetic"])
    assert (args.init, args.weights) == ("xavier", train.IMAGENET_WEIGHTS)
    args = train.parse_args(["--data", "synthetic", "--weights", "w.h5"])
    assert (args.init, args.weights) == ("imagenet", "w.h5")
    for init in ("xavier", "random"):
        with pytest.raises(SystemExit) as exc:
            train.parse_args(["--init", init, "--weights", "w.h5"])
        assert exc.value.code == 2
        assert "--weights is read only with --init imagenet" in capsys.readouterr().err
    # the file is then checked at once, not ignored
    assert train.main(QUICK + ["--weights", "notanh5.h5", "--max-iter", "1"]) == 2
    assert "notanh5.h5 not found" in capsys.readouterr().err
    assert not os.path.exists("data")


def test_resume_keeps_a_finished_run_of_the_same_settings(in_tmp, capsys):
    # (--all-folds --resume after an interruption: the folds already done are not redone)
    args = QUICK + ["--max-iter", "1", "--out-dir", "o"]
    assert train.main(args) == 0
    metrics = os.path.join("o", "synthetic_five_fold2.json")
    before = open(metrics).read()
    capsys.readouterr()
    assert train.main([a for a in args if a != "--quiet"] + ["--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert open(metrics).read() == before
    assert train.main(args + ["--resume", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "is a finished run with other settings (seed: finished run" in err and "--force" in err
    # a weights file that is not HDF5 is refused before the data is read
    open("notanh5.h5", "w").write("text")
    assert train.main(QUICK + ["--weights", "notanh5.h5", "--out-dir", "p"]) == 2
    assert "notanh5.h5 is not an HDF5 file" in capsys.readouterr().err


def test_resume_refuses_other_imagenet_weights(in_tmp, capsys):
    """A run started from other ImageNet weights is another run: --resume does not keep
    (or continue) it; the same file named another way is the same run."""
    assert train.main(QUICK + ["--max-iter", "1", "--out-dir", "a"]) == 0
    trunk = os.path.join("a", "synthetic_five_fold2.h5")   # stands in for ImageNet's
    shutil.copy(trunk, "other.h5")
    args = QUICK + ["--max-iter", "1", "--init", "imagenet", "--out-dir", "b"]
    assert train.main(args + ["--weights", trunk]) == 0
    capsys.readouterr()
    assert train.main(args + ["--weights", "other.h5", "--resume"]) == 2
    assert "finished run with other settings (weights: " in capsys.readouterr().err
    assert train.main(args + ["--weights", os.path.join(".", trunk), "--resume"]) == 0


def test_unwritable_out_dir_stops_before_any_data(in_tmp, capsys):
    open("afile", "w").close()
    os.makedirs("out")
    open(os.path.join("out", "checkpoints"), "w").close()   # where the folder should be
    for out_dir, named in (("afile/x", "afile/x"),
                           ("out", os.path.join("out", "checkpoints"))):
        assert train.main(QUICK + ["--out-dir", out_dir, "--max-iter", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"train.py: cannot write to --out-dir {out_dir}: ")
        assert named in err and err.count("\n") == 1
    assert not os.path.exists("data")
    # a device that is refused leaves no empty output folders behind
    assert train.main(QUICK + ["--out-dir", "fresh", "--tf32"]) == 2
    assert "TF32" in capsys.readouterr().err and not os.path.exists("fresh")


def test_unreadable_weights_file_is_one_line(in_tmp, capsys, monkeypatch):
    import h5py

    def unreadable(path):
        raise OSError(5, "Unable to determine if file is accessible as hdf5")
    open("w.h5", "w").close()
    monkeypatch.setattr(h5py, "is_hdf5", unreadable)
    assert train.main(QUICK + ["--weights", "w.h5"]) == 2
    assert capsys.readouterr().err.startswith("train.py: ImageNet weights w.h5: cannot read: ")


def test_failed_writes_are_one_line_errors_keeping_the_checkpoint(in_tmp, monkeypatch,
                                                                  capsys):
    import nn.checkpoint

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    args = QUICK + ["--max-iter", "3"]
    args[args.index("--checkpoint-every") + 1] = "1"
    checkpoint = os.path.join("weights", "checkpoints", "synthetic_five_fold2.h5")
    kept = f"; the last good checkpoint is {checkpoint}\n"
    real = nn.checkpoint.save_checkpoint
    calls = []

    def second_fails(*a, **kw):
        calls.append(1)
        return no_space() if len(calls) == 2 else real(*a, **kw)

    # a checkpoint (step 2), the weights, the metrics: each names its file
    monkeypatch.setattr(nn.checkpoint, "save_checkpoint", second_fails)
    assert train.main(args) == 2
    assert capsys.readouterr().err == (f"train.py: [synthetic_five_fold2] cannot write "
                                       f"{checkpoint}: No space left on device{kept}")
    monkeypatch.setattr(nn.checkpoint, "save_checkpoint", real)
    for target, path in ((CaffeNet, "synthetic_five_fold2.h5"),
                         (train, "synthetic_five_fold2.json")):
        name = "save" if target is CaffeNet else "atomic_write"
        with monkeypatch.context() as m:
            m.setattr(target, name, no_space)
            assert train.main(args + ["--resume"]) == 2
        assert capsys.readouterr().err == (
            f"train.py: [synthetic_five_fold2] cannot write {os.path.join('weights', path)}: "
            f"No space left on device{kept}")
        assert os.path.isfile(checkpoint)


def test_an_earlier_runs_outputs_are_not_replaced_without_force(in_tmp, capsys):
    os.makedirs("weights")
    earlier = os.path.join("weights", "synthetic_five_fold2.json")
    open(earlier, "w").close()
    assert train.main(QUICK + ["--max-iter", "1"]) == 2
    assert capsys.readouterr().err == (f"train.py: {earlier} exists (from an earlier run); "
                                       f"use --force to replace it, or --out-dir\n")
    # --all-folds checks every fold's files before it trains the first
    os.remove(earlier)
    earlier = os.path.join("weights", "synthetic_five_fold4.h5")
    open(earlier, "w").close()
    assert train.main(QUICK + ["--all-folds", "--max-iter", "1"]) == 2
    assert f"train.py: {earlier} exists" in capsys.readouterr().err
    assert not os.path.exists("data")
    for flag in ("--force", "--resume"):   # both may write over it (the resume test runs them)
        args = train.parse_args(QUICK + ["--all-folds", flag])
        train.check_outputs_free(args, [("five", fold) for fold in range(1, 6)])


def test_resume_without_checkpoint_says_so_even_quiet_and_refuses_weights(in_tmp, capsys):
    assert train.main(QUICK + ["--max-iter", "1", "--resume"]) == 0
    checkpoint = os.path.join("weights", "checkpoints", "synthetic_five_fold2.h5")
    assert capsys.readouterr().err == (f"train.py: note: [synthetic_five_fold2] no checkpoint "
                                       f"at {checkpoint} to resume: starting from the "
                                       f"beginning\n")
    # a weights file where the checkpoint should be (of a run not finished: a finished
    # one would be kept as it is)
    shutil.move(os.path.join("weights", "synthetic_five_fold2.h5"), checkpoint)
    os.remove(os.path.join("weights", "synthetic_five_fold2.json"))
    assert train.main(QUICK + ["--max-iter", "1", "--resume"]) == 2
    assert capsys.readouterr().err == (f"train.py: {checkpoint} is not a training checkpoint "
                                       f"(no 'settings')\n")


def test_help_shows_no_none_defaults(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: 0.9)" in text


def test_synthetic_dataset_follows_the_requested_size(in_tmp):
    args = train.parse_args(["--data", "synthetic", "--synthetic-images", "20"])
    folder = train.resolve_data_dir(args, lambda msg: None)
    assert len(read_list(label_file(folder, "three"))) == 20
    args = train.parse_args(["--data", "synthetic", "--synthetic-images", "30"])
    train.resolve_data_dir(args, lambda msg: None)
    assert len(read_list(label_file(folder, "three"))) == 30


def test_imagenet_init_copies_all_but_the_last_layer(in_tmp, capsys):
    source = CaffeNet(num_classes=1000, device="cpu", seed=5)
    source.save("imagenet.h5")
    args = [a for a in QUICK if a != "--quiet"]
    assert train.main(args + ["--init", "imagenet", "--weights", "imagenet.h5",
                              "--max-iter", "1", "--base-lr", "1e-9"]) == 0
    out = capsys.readouterr().out
    assert ("copied conv1, conv2, conv3, conv4, conv5, fc6, fc7 from imagenet.h5; "
            "initialised fresh: fc8_twitter") in out
    got = read_weights(os.path.join("weights", "synthetic_five_fold2.h5"))
    # label 0 is negative in the dataset's lists, so the file must name the classes so
    with h5py.File(os.path.join("weights", "synthetic_five_fold2.h5"), "r") as f:
        assert [n.decode() if isinstance(n, bytes) else str(n)
                for n in f.attrs["class_names"]] == ["negative", "positive"]
    want = source.to_numpy_params()
    # one SGD step at lr 1e-9 moves them by about 1e-5 relative, nothing like a fresh init
    np.testing.assert_allclose(got["conv3"]["weight"], want["conv3"]["weight"], rtol=1e-3,
                               atol=1e-3 * np.abs(want["conv3"]["weight"]).max())
    assert got["fc8_twitter"]["weight"].shape == (2, 4096)
    assert "fc8" not in got


def test_resumed_run_ends_with_the_uninterrupted_weights(in_tmp):
    args = QUICK + ["--max-iter", "4", "--base-lr", "0.001", "--seed", "3"]
    assert train.main(args + ["--out-dir", "full"]) == 0
    full = read_weights(os.path.join("full", "synthetic_five_fold2.h5"))

    assert train.main(args + ["--out-dir", "split"], stop_at=2) == 0
    checkpoint = os.path.join("split", "checkpoints", "synthetic_five_fold2.h5")
    assert os.path.isfile(checkpoint)
    assert not os.path.exists(os.path.join("split", "synthetic_five_fold2.h5"))
    assert train.main(args + ["--out-dir", "split", "--resume"]) == 0
    resumed = read_weights(os.path.join("split", "synthetic_five_fold2.h5"))
    for layer in full:
        for blob in ("weight", "bias"):
            np.testing.assert_array_equal(resumed[layer][blob], full[layer][blob],
                                          err_msg=f"{layer} {blob}")
    # a resume with other settings is refused, naming the setting
    assert train.main(args + ["--out-dir", "split", "--force"], stop_at=2) == 0
    assert train.main(args + ["--out-dir", "split", "--resume", "--seed", "4"]) == 2
    # ... and so is one on the other arithmetic (TF32 tensor cores), checked before loading
    with h5py.File(checkpoint, "r") as f:
        settings = json.loads(f.attrs["settings"])
    with pytest.raises(CheckpointError, match="tf32: checkpoint False, now True"):
        load_checkpoint(checkpoint, None, None, dict(settings, tf32=True),
                        train.RESUME_MUST_MATCH)


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(in_tmp, monkeypatch, capsys):
    real = CaffeNet.loss_and_grads
    calls = []

    def diverging(self, x, labels):
        loss, grads, scores = real(self, x, labels)
        calls.append(loss)
        return (float("nan") if len(calls) == 3 else loss), grads, scores

    monkeypatch.setattr(CaffeNet, "loss_and_grads", diverging)
    args = [a for a in QUICK if a != "--quiet"]
    args[args.index("--checkpoint-every") + 1] = "2"
    assert train.main(args + ["--max-iter", "5"]) == 2
    err = capsys.readouterr().err
    assert "diverged" in err and "nan" in err and "step 2" in err
    checkpoint = os.path.join("weights", "checkpoints", "synthetic_five_fold2.h5")
    with h5py.File(checkpoint, "r") as f:
        assert f["solver"].attrs["iter"] == 2


def test_ctrl_c_checkpoints_in_training_and_aborts_in_evaluation(in_tmp, monkeypatch, capsys):
    real = CaffeNet.loss_and_grads
    calls = []

    def interrupted(self, x, labels):
        calls.append(1)
        if len(calls) == 2:                      # Ctrl-C during the second step
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, x, labels)

    monkeypatch.setattr(CaffeNet, "loss_and_grads", interrupted)
    args = [a for a in QUICK if a != "--quiet"] + ["--max-iter", "5"]
    assert train.main(args) == 130
    out = capsys.readouterr().out
    assert "stopped at step 2; continue with --resume" in out
    checkpoint = os.path.join("weights", "checkpoints", "synthetic_five_fold2.h5")
    with h5py.File(checkpoint, "r") as f:
        assert f["solver"].attrs["iter"] == 2
        assert json.loads(f.attrs["extra"])["train_seconds"] > 0
    monkeypatch.setattr(CaffeNet, "loss_and_grads", real)

    # a changed dataset cannot be resumed into (the data stream would not line up)
    assert train.main(args + ["--resume", "--synthetic-images", "50"]) == 2
    assert "n_train: checkpoint" in capsys.readouterr().err
    # a fresh start says that it replaces the checkpoint
    assert train.main(args + ["--synthetic-images", "50"], stop_at=1) == 0
    assert "checkpoint" in capsys.readouterr().out.split("note: starting afresh; the ")[1]

    # Ctrl-C while evaluating stops at once, with one line and exit status 130
    def evaluate_interrupted(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the Ctrl-C should have interrupted")
    monkeypatch.setattr(train, "evaluate", evaluate_interrupted)
    assert train.main(args + ["--max-iter", "1"]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip().startswith("train.py: interrupted")
    assert "Traceback" not in captured.err and "stopping after this step" not in captured.err


def test_resume_after_an_interrupted_evaluation_only_evaluates(in_tmp, monkeypatch, capsys):
    """Training's last step is checkpointed: Ctrl-C in the evaluation loses no training, and
    the resumed run opens no training loader (its threads would prepare batches for nothing)
    yet ends with the metrics of a run that was never interrupted."""
    args = [a for a in QUICK if a != "--quiet"] + ["--max-iter", "3"]
    assert train.main(args + ["--out-dir", "straight"]) == 0
    with open(os.path.join("straight", "synthetic_five_fold2.json")) as f:
        straight = json.load(f)
    real_evaluate = train.evaluate

    def evaluate_interrupted(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the Ctrl-C should have interrupted")
    monkeypatch.setattr(train, "evaluate", evaluate_interrupted)
    assert train.main(args) == 130
    checkpoint = os.path.join("weights", "checkpoints", "synthetic_five_fold2.h5")
    with h5py.File(checkpoint, "r") as f:
        assert f["solver"].attrs["iter"] == 3
    trained = read_weights(os.path.join("weights", "synthetic_five_fold2.h5"))
    assert not os.path.exists(os.path.join("weights", "synthetic_five_fold2.json"))
    capsys.readouterr()

    def no_training(self, x, labels):
        raise AssertionError("a finished training was resumed into more steps")
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    monkeypatch.setattr(CaffeNet, "loss_and_grads", no_training)

    def no_loader(*a, **kw):
        raise AssertionError("a finished training opened the training loader")
    monkeypatch.setattr(nn.batches, "TrainLoader", no_loader)
    assert train.main(args + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 3" in out and "test accuracy" in out
    with open(os.path.join("weights", "synthetic_five_fold2.json")) as f:
        metrics = json.load(f)
    assert len(metrics["losses"]) == 3 and metrics["n_test_evaluated"] > 0
    for key in ("accuracy_center", "accuracy_oversampled", "n_test_evaluated",
                "test_images_skipped", "final_loss", "losses", "settings"):
        assert metrics[key] == straight[key], key
    again = read_weights(os.path.join("weights", "synthetic_five_fold2.h5"))
    for layer, blobs in trained.items():
        for blob, value in blobs.items():
            np.testing.assert_array_equal(again[layer][blob], value)
    assert not os.path.exists(checkpoint)


@pytest.mark.slow
def test_synthetic_training_beats_chance(in_tmp):
    """The offline job learns: clearly better than chance on its held-out fold."""
    assert train.main(["--data", "synthetic", "--device", "cpu", "--quiet"]) == 0
    with open(os.path.join("weights", "synthetic_five_fold2.json")) as f:
        metrics = json.load(f)
    assert metrics["accuracy_center"] >= 0.8
    assert metrics["losses"][-1] < metrics["losses"][0]


# ------------------------------------------------------- review additions (mutation round 4)


class _CornerNet:
    """A stand-in network: p(positive) = sigmoid(blue value - mean at the crop's top-left
    pixel / 10), so each crop's vote is set by one pixel of the 256 x 256 image."""

    def predict(self, x):
        s = 1 / (1 + np.exp(-x[:, 0, 0, 0].astype(np.float64) / 10))
        return np.stack([1 - s, s], axis=1)


def test_evaluate_centre_crop_and_ten_crops_and_skipped(tmp_path):
    from PIL import Image
    # Top-left pixels of Caffe's ten 227-crops of a 256 x 256 image: four corners and the
    # centre, then the same windows mirrored (their top-left is the window's top-right).
    centre = (14, 14)
    others = [(0, 0), (0, 29), (29, 0), (29, 29), (0, 226), (0, 255), (29, 226),
              (29, 255), (14, 240)]
    rng = np.random.default_rng()

    def image(name, centre_bright, others_bright):
        rgb = rng.integers(90, 120, size=(256, 256, 3), dtype=np.uint8)   # near the mean
        rgb[centre + (2,)] = 255 if centre_bright else 0                  # blue channel
        for at in others:
            rgb[at + (2,)] = 255 if others_bright else 0
        path = str(tmp_path / name)
        Image.fromarray(rgb).save(path)
        return path

    broken = str(tmp_path / "broken.jpg")
    open(broken, "w").write("not an image")
    items = [(image("a.png", True, False), 1),      # centre right, ten crops wrong
             (image("b.png", False, True), 1),      # centre wrong, ten crops right
             (broken, 1),                           # left out of both
             (image("c.png", True, True), 1),       # both right
             (image("d.png", False, False), 0),     # both right
             (image("e.png", True, False), 1)]      # centre right, ten crops wrong
    with pytest.warns(RuntimeWarning, match="broken.jpg"):
        centre_acc, ten_acc, skipped = train.evaluate(_CornerNet(), items, 2, True)
    assert (centre_acc, ten_acc, skipped) == (pytest.approx(4 / 5), pytest.approx(3 / 5),
                                              [broken])
    with pytest.warns(RuntimeWarning, match="broken.jpg"):
        assert train.evaluate(_CornerNet(), items, 4, False) == (pytest.approx(4 / 5), None,
                                                                 [broken])


def test_summary_table_without_oversampling_and_all_folds_of_all_subsets(in_tmp, monkeypatch,
                                                                         capsys):
    runs = [dict(accuracy_center=a, accuracy_oversampled=None) for a in (0.5, 0.7)]
    row = train.summary_table({"four": runs}).splitlines()[1].split()
    assert row == ["four-agree", "2", "0.600", "+-", "0.100", "-"]
    # --all-folds --agree all: every fold of every subset is trained and in the table
    rng = np.random.default_rng()
    acc = {(a, k): float(rng.uniform(0.5, 0.9)) for a in ("five", "four", "three")
           for k in range(1, 6)}
    done = []

    def fake_fold(args, data_dir, agree, fold, device, say, stop, stop_at=None):
        done.append((agree, fold))
        return dict(accuracy_center=acc[agree, fold], accuracy_oversampled=None)
    monkeypatch.setattr(train, "train_fold", fake_fold)
    assert train.main(QUICK + ["--all-folds", "--agree", "all"]) == 0
    assert done == list(acc)
    lines = capsys.readouterr().out.splitlines()[-3:]
    for line, agree in zip(lines, ("five", "four", "three")):
        values = [acc[agree, k] for k in range(1, 6)]
        assert line.split() == [f"{agree}-agree", "5", f"{np.mean(values):.3f}", "+-",
                                f"{np.std(values):.3f}", "-"]
    with pytest.raises(SystemExit):
        train.parse_args(["--agree", "all"])          # needs --all-folds
    assert "--agree all needs --all-folds" in capsys.readouterr().err


def test_metrics_of_a_resumed_run_and_resume_refusals(in_tmp, monkeypatch, capsys):
    args = QUICK + ["--max-iter", "2", "--seed", "2"]
    assert train.main(args, stop_at=1) == 0
    checkpoint = os.path.join("weights", "checkpoints", "synthetic_five_fold2.h5")
    with h5py.File(checkpoint, "a") as f:   # (a day of training before the stop)
        before = json.loads(f.attrs["extra"])
        f.attrs["extra"] = json.dumps(dict(before, train_seconds=86400.0))
    rng = np.random.default_rng()
    centre, ten = (float(v) for v in rng.uniform(0.3, 0.9, 2))
    skipped = ["x.jpg"]
    monkeypatch.setattr(train, "evaluate", lambda *a: (centre, ten, skipped))
    assert train.main(args + ["--resume"]) == 0
    with open(os.path.join("weights", "synthetic_five_fold2.json")) as f:
        metrics = json.load(f)
    assert (metrics["accuracy_center"], metrics["accuracy_oversampled"]) == (centre, ten)
    assert metrics["test_images_skipped"] == skipped
    assert len(metrics["losses"]) == 2 and metrics["losses"][0] == before["losses"][0]
    assert metrics["final_loss"] == metrics["losses"][-1] != metrics["losses"][0]
    assert 86400 < metrics["train_seconds"] < 86400 + 3600
    assert f"centre crop {centre:.3f}, 10-crop oversampled {ten:.3f}" in capsys.readouterr().out
    # A finished run is kept on --resume only with the same settings; each of these is
    # refused (checked before any network is built).
    for flag, value, key in (("--base-lr", "0.002", "base_lr"), ("--momentum", "0.8", "momentum"),
                             ("--weight-decay", "0.001", "weight_decay"),
                             ("--gamma", "0.5", "gamma"), ("--stepsize", "1", "stepsize"),
                             ("--max-iter", "3", "max_iter"), ("--batch-size", "8", "batch_size"),
                             ("--iter-size", "2", "iter_size"), ("--init", "random", "init")):
        changed = list(args)
        if flag in changed:
            changed[changed.index(flag) + 1] = value
        else:
            changed += [flag, value]
        assert train.main(changed + ["--resume"]) == 2, flag
        assert f"finished run with other settings ({key}: " in capsys.readouterr().err
    # --resume --force trains the finished run again (it does not keep it); a stop asked
    # for at the last step still evaluates and writes the metrics
    monkeypatch.setattr(train, "evaluate", lambda *a: (0.5, 0.5, []))
    assert train.main([a for a in args if a != "--quiet"] + ["--resume", "--force"],
                      stop_at=2) == 0
    out = capsys.readouterr().out
    assert "already finished" not in out and "step 2/2" in out
    with open(os.path.join("weights", "synthetic_five_fold2.json")) as f:
        assert json.load(f)["accuracy_center"] == 0.5


def test_missing_images_are_counted_in_a_note(tmp_path):
    present = [(str(tmp_path / f"{i}.jpg"), i % 2) for i in range(5)]
    for path, _ in present:
        open(path, "w").close()
    gone = [(str(tmp_path / f"gone{i}.jpg"), 0) for i in range(2)]
    items = [present[0], gone[0], *present[1:4], gone[1], present[4]]
    notes = []
    assert train.present_images(items, "test", notes.append) == present
    assert notes == [f"note: 2 of the 7 test images are missing and left out (e.g. {gone[0][0]})"]
    notes.clear()
    assert train.present_images(present, "test", notes.append) == present and notes == []
