"""train.py end to end on the synthetic dataset (CPU path): learning, resume, errors."""
import json
import os

import h5py
import numpy as np
import pytest

import train
from nn.caffenet import CaffeNet

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
    assert train.main(args + ["--out-dir", "split"], stop_at=2) == 0
    assert train.main(args + ["--out-dir", "split", "--resume", "--seed", "4"]) == 2


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


@pytest.mark.slow
def test_synthetic_training_beats_chance(in_tmp):
    """The offline job learns: clearly better than chance on its held-out fold."""
    assert train.main(["--data", "synthetic", "--device", "cpu", "--quiet"]) == 0
    with open(os.path.join("weights", "synthetic_five_fold2.json")) as f:
        metrics = json.load(f)
    assert metrics["accuracy_center"] >= 0.8
    assert metrics["losses"][-1] < metrics["losses"][0]
