"""One preprocessing path: a file becomes the same network input in every consumer, bit for bit.

An ImageFolder tree of awkward files (500x375, 640x427, 28x28 grey, 1x1, 37x1000, RGBA, 16-bit
grey, 640x427 with an EXIF rotation) is trained on for two steps; then the normalised tensor each
consumer feeds the network for each file is captured at `ResNet.forward`:
evaluation during training, `reslab eval RUN`, `reslab predict`, `reslab serve` (in process) and
the calibration batches of `reslab export --int8`. They must be identical, and `reslab eval RUN`
with no flag must report exactly what the run reported at its end, `reslab predict` agreeing with
it image for image.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_run import train_tiny_run

from reslab.cli import main
from reslab.models.resnet import ResNet

RNG = np.random.default_rng(11)
# The run the consumers' weights come from (torch's own thread count: train.threads=0).
SETTINGS = (
    "data.image_size=32",
    "data.split=full",
    "data.normalize=channel",
    "train.batch_size=4",
    "train.eval_every=-1",
    "train.threads=0",
    "train.calibrate=false",  # one evaluation of val during training: the end's pass over it would add more
)


def odd_images() -> dict[str, Image.Image]:
    def rgb(w: int, h: int) -> Image.Image:
        return Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))

    rgba = Image.fromarray(RNG.integers(0, 256, (60, 80, 4), dtype=np.uint8), "RGBA")
    grey16 = Image.fromarray(RNG.integers(0, 65536, (40, 50), dtype=np.uint16))
    rotated = rgb(640, 427)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    rotated.info["exif"] = exif.tobytes()
    return {
        "photo_500x375.png": rgb(500, 375),
        "photo_640x427.png": rgb(640, 427),
        "grey_28x28.png": Image.fromarray(RNG.integers(0, 256, (28, 28), dtype=np.uint8), "L"),
        "one_pixel.png": rgb(1, 1),
        "strip_37x1000.png": rgb(37, 1000),
        "alpha.png": rgba,
        "grey16.png": grey16,
        "exif_rotated.jpg": rotated,
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """train/ and val/ hold the same odd files (so every part of every consumer sees them all)."""
    root = tmp_path_factory.mktemp("odd")
    images = odd_images()
    for split in ("train", "val"):
        for i, (name, image) in enumerate(images.items()):
            folder = root / split / ("a" if i % 2 == 0 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            kwargs = {"exif": image.info["exif"], "quality": 95} if name.endswith(".jpg") else {}
            image.save(folder / name, **kwargs)
    return root


class Inputs:
    """Records the rows of every input ResNet.forward sees in eval mode, and the logits."""

    def __init__(self) -> None:
        self.rows: list[bytes] = []
        self.logits: list[torch.Tensor] = []

    def hashes(self) -> list[str]:
        return sorted(hashlib.sha256(row).hexdigest() for row in self.rows)


@pytest.fixture
def capture(monkeypatch) -> Inputs:
    seen = Inputs()
    real = ResNet.forward

    def forward(self, x):
        out = real(self, x)
        if not self.training:
            for row in x.detach().float().contiguous():
                seen.rows.append(row.numpy().tobytes())
            seen.logits.append(out.detach().float())
        return out

    monkeypatch.setattr(ResNet, "forward", forward)
    return seen


@pytest.fixture(scope="module")
def run(tree: Path, tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("run") / "run", tree, *SETTINGS)


def test_every_consumer_feeds_the_same_tensor(tree: Path, run: Path, tmp_path: Path, capture: Inputs, capsys):
    files = sorted(str(p) for p in (tree / "val").rglob("*.*"))
    n = len(files)

    # Evaluation during training: train again into a fresh directory, capturing its final evaluation.
    again = tmp_path / "again"
    train_tiny_run(again, tree, *SETTINGS)
    during_training = capture.hashes()
    assert len(during_training) == n
    capture.rows.clear()

    assert main(["eval", str(run), "--json", "--out", str(tmp_path / "eval")]) == 0
    by_eval = capture.hashes()
    capture.rows.clear()

    # --backend torch: the input is captured at ResNet.forward (onnxruntime shares the normalisation)
    assert main(["predict", str(run), *files, "--json", "--precision", "fp32", "--backend", "torch"]) == 0
    by_predict = capture.hashes()
    capture.rows.clear()

    from fastapi.testclient import TestClient

    from reslab.infer.backends import load_predictor
    from reslab.infer.serve import create_app

    predictor, meta, _ = load_predictor(run, backend="torch", precision="fp32")
    with TestClient(create_app(predictor, meta)) as client:
        capture.rows.clear()  # the warm-up's zeros
        for f in files:
            with open(f, "rb") as handle:
                reply = client.post("/predict", files={"file": (Path(f).name, handle.read())})
            assert reply.status_code == 200, reply.text
    by_serve = capture.hashes()
    capture.rows.clear()

    from reslab.infer.quantize import calibration_batches, calibration_set
    from reslab.weights import load_weights

    weights = load_weights(run)
    data = calibration_set("imagefolder", weights.meta, weights.preprocess, data_dir=tree, images=n, verify=n)
    by_calibration = sorted(
        hashlib.sha256(row.tobytes()).hexdigest()
        for batch in calibration_batches(data.images, weights.stats)
        for row in np.ascontiguousarray(batch)
    )
    capsys.readouterr()
    assert during_training == by_eval == by_predict == by_serve == by_calibration


def test_eval_repeats_the_runs_final_number_and_predict_agrees(tree: Path, run: Path, tmp_path, capture, capsys):
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["top1_error"] == summary["final"]["val_top1_error"]
    assert report["loss"] == summary["final"]["val_loss"]
    eval_top1 = torch.cat(capture.logits).argmax(1).tolist()
    capture.logits.clear()

    files = sorted(str(p) for p in (tree / "val").rglob("*.*"))  # the order of the val/ listing
    assert main(["predict", str(run), *files, "--json", "--precision", "fp32", "-k", "1"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    predicted = [p["predictions"][0]["class_id"] for p in predictions]
    assert [p["file"] for p in predictions] == files
    assert predicted == eval_top1
