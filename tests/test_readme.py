"""The README's Python API example runs as written (on small random weights and images)."""
import os
import re

import numpy as np

from conftest import ROOT
from nn.caffenet import CaffeNet


def test_readme_api_example_runs(tmp_path, monkeypatch):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert blocks, "README.md has no ```python example"
    monkeypatch.chdir(tmp_path)
    os.makedirs("weights")
    CaffeNet(num_classes=1000, device="cpu", seed=1).save("weights/caffenet_imagenet.h5")
    rng = np.random.default_rng(0)
    scope = {"images": rng.uniform(-100, 100, (2, 3, 227, 227)).astype(np.float32),
             "labels": np.array([0, 1])}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    probs, loss = scope["probs"], scope["loss"]
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.isfinite(loss) and loss > 0
    assert os.path.isfile("weights/mine.h5")
    saved = CaffeNet(num_classes=2, last_layer="fc8_twitter", device="cpu")
    assert saved.load("weights/mine.h5")["fresh"] == []
