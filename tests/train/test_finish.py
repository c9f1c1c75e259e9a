"""The end of a run with a val part (reslab.train.finish): flip TTA kept only where it lowers the
val error, a temperature fitted on val and stored with the weights, and predict doing what the
weights say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_tree, train_tiny_run

from reslab.cli import main
from reslab.data.preprocess import load_image
from reslab.evaluation import fit_temperature
from reslab.rundir import RunDir
from reslab.train.finish import flip_decision, flip_hurts
from reslab.weights import load_weights


def test_flip_tta_is_kept_only_where_it_lowers_the_error() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    plain = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.4, 0.6], [2.0, 0.0]])  # 2 of 4 wrong
    helps = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 3.0]])  # the mean gets all 4 right
    assert flip_decision(plain, helps, labels).kept
    hurts = torch.tensor([[0.0, 5.0], [5.0, 0.0], [0.4, 0.6], [2.0, 0.0]])
    decision = flip_decision(plain, hurts, labels)
    assert not decision.kept and decision.val_error == 0.5 and decision.val_error_flip_tta == 1.0
    assert flip_decision(plain, plain, labels).kept is False  # a tie: one forward pass instead of two


def test_mirror_images_are_flagged_only_beyond_noise() -> None:
    n = 400
    labels = torch.zeros(n, dtype=torch.long)
    plain = torch.tensor([[1.0, 0.0]]).repeat(n, 1)  # every image right
    mirrored = plain.clone()
    mirrored[:10] = torch.tensor([0.0, 9.0])  # 10 lost: 10 > 2 * sqrt(10)
    assert flip_hurts(plain, mirrored, labels)
    mirrored = plain.clone()
    mirrored[:3] = torch.tensor([0.0, 9.0])  # 3 lost: within noise
    assert not flip_hurts(plain, mirrored, labels)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finish")
    tree = tiny_tree(root / "tree")
    return train_tiny_run(root / "run", tree, "train.tta_flip=true", "train.keep=best", iterations=12)


def val_logits(run: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Path]]:
    """(plain, mirrored, labels, files) of the val images through the kept weights, computed here."""
    weights = load_weights(run)
    meta, model, stats = weights.meta, weights.model.eval(), weights.stats
    files = sorted((Path(RunDir(run).load_config().data.data_dir) / "val").rglob("*.png"))
    x = torch.stack(
        [load_image(p, in_chans=meta.in_chans, input_size=meta.input_size, resize=meta.resize) for p in files]
    )
    x = (x.float() / 255.0 - stats.mean) / stats.std
    labels = torch.tensor([meta.classes.index(p.parent.name) for p in files])
    with torch.inference_mode():
        return model(x), model(x.flip(-1)), labels, files


def test_the_end_decides_on_val_and_predict_follows(run: Path, capsys: pytest.CaptureFixture) -> None:
    plain, mirrored, labels, files = val_logits(run)
    summary = RunDir(run).read_summary()
    decision = flip_decision(plain, mirrored, labels)
    assert summary.flip_tta is not None and summary.flip_tta.kept == decision.kept
    assert summary.flip_tta.val_error == pytest.approx(decision.val_error)
    meta = load_weights(run).meta
    assert meta.tta_flip == decision.kept and meta.metrics["eval_tta_flip"] == float(decision.kept)

    # The temperature is the one val gives, and predict divides the logits by it (with the TTA kept).
    logits = (plain + mirrored) / 2 if decision.kept else plain
    assert meta.calibrated and meta.temperature == pytest.approx(fit_temperature(logits, labels), rel=1e-6)
    assert summary.calibrated is not None and summary.calibrated.temperature == pytest.approx(meta.temperature)
    assert meta.temperature_fit["part"] == "val" and meta.temperature_fit["images"] == len(files)
    capsys.readouterr()
    assert main(["predict", str(run), *map(str, files), "--json", "-k", "2", "--precision", "fp32"]) == 0
    rows = json.loads(capsys.readouterr().out)
    got = torch.tensor(
        [[p["probability"] for p in sorted(r["predictions"], key=lambda p: p["class_id"])] for r in rows]
    )
    torch.testing.assert_close(got, (logits / meta.temperature).softmax(1), atol=1e-4, rtol=0)


def test_calibrate_false_leaves_the_weights_uncalibrated(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path / "tree")
    run = train_tiny_run(tmp_path / "run", tree, "train.calibrate=false", "train.decide_tta=false")
    meta, summary = load_weights(run).meta, RunDir(run).read_summary()
    assert not meta.calibrated and summary.calibrated is None and summary.flip_tta is None
