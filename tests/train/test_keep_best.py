"""What a run keeps and how it weighs its classes: train.keep=best, train.early_stop, optim.class_weights.

The keep/early-stop runs train for real (resnet_cifar_8 on 32 synthetic images, an evaluation every
2 of 16 steps, EMA on) but their watched top-1 error follows `SCRIPT`, set in the evaluation:
it falls to its lowest at step 6, ties it at step 8 (the earlier evaluation is the best) and
rises after. So the best step is known, and the weights evaluated at each step are recorded to
compare the kept ones with. The class-weights run trains and measures for real on an image tree
with a 1:20 class imbalance.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_run import train_tiny_run, train_tiny_synthetic

from reslab.checkpoint import load_checkpoint
from reslab.cli import main
from reslab.rundir import RunDir
from reslab.train import trainer as trainer_module
from reslab.train.step import inverse_frequency_weights
from reslab.weights import load_weights, read_meta

SCRIPT = {2: 0.5, 4: 0.3, 6: 0.2, 8: 0.2, 10: 0.25, 12: 0.4, 14: 0.45, 16: 0.5}  # step -> test top-1 error
BEST_STEP = 6
KEEP_BEST = ("train.eval_every=2", "train.checkpoint_every=1", "optim.ema_decay=0.9", "train.keep=best")


def train(run: Path, *settings: str, status: int = 0) -> Path:
    """16 steps of the tiny synthetic run (32 images, batch 8) with KEEP_BEST."""
    return train_tiny_synthetic(run, *KEEP_BEST, *settings, iterations=16, status=status)


class Scripted:
    """Replaces the top-1 error of each evaluation by SCRIPT[step]; keeps a copy of the weights
    evaluated at each step; sends itself SIGTERM from inside the evaluation of `stop_at`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop_at: int | None = None) -> None:
        self.step, self.stop_at = 0, stop_at
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        real_method, real_evaluate = trainer_module.Trainer.evaluate, trainer_module.evaluate

        def method(trainer: trainer_module.Trainer) -> dict:
            self.step = trainer.state.step
            return real_method(trainer)

        def evaluate(model, *args, **kwargs) -> dict:
            self.weights[self.step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.step == self.stop_at:
                self.stop_at = None
                os.kill(os.getpid(), signal.SIGTERM)
            return {**real_evaluate(model, *args, **kwargs), "top1_error": SCRIPT[self.step]}

        monkeypatch.setattr(trainer_module.Trainer, "evaluate", method)
        monkeypatch.setattr(trainer_module, "evaluate", evaluate)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def network_part(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if not k.startswith("_preprocess.")}


def test_keep_best_ends_with_the_weights_of_the_best_evaluation(tmp_path: Path, monkeypatch, capsys) -> None:
    scripted = Scripted(monkeypatch)
    run = tmp_path / "run"
    train(run)
    out, err = capsys.readouterr()
    assert sorted(scripted.weights) == sorted(SCRIPT)
    kept = tensors(run / "weights.safetensors")
    assert same(network_part(kept), scripted.weights[BEST_STEP])  # the EMA weights evaluated at step 6
    assert not same(network_part(kept), scripted.weights[16])
    assert same(kept, tensors(run / "best.safetensors"))
    meta = read_meta(run / "weights.safetensors")
    assert meta.metrics["step"] == BEST_STEP and meta.metrics["test_top1_error"] == 0.2
    assert read_meta(run / "best.safetensors").metrics == meta.metrics
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["step"] == 16 and summary["final"]["test_top1_error"] == 0.5  # the last evaluation
    assert summary["kept"]["step"] == BEST_STEP and summary["kept"]["evaluation"]["test_top1_error"] == 0.2
    assert "stopped_early" not in summary
    assert "kept             best test top-1 error 20.00% at step 6 of 16 (train.keep=best)" in out
    assert "watching test top-1 error: keeping the best evaluation's weights (train.keep=best)" in err
    # The best record is part of the checkpoints.
    best = load_checkpoint(RunDir(run).list_checkpoints()[-1])["best"]
    assert (best["step"], best["error"], best["stale"], best["seen_step"]) == (BEST_STEP, 0.2, 5, 16)


@pytest.fixture
def reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The uninterrupted keep=best run."""
    with monkeypatch.context() as patch:
        Scripted(patch)
        train(tmp_path / "reference")
    return tmp_path / "reference"


def test_a_resumed_keep_best_run_goes_on_with_the_same_best(tmp_path: Path, reference: Path, monkeypatch, capsys):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        Scripted(patch, stop_at=10)  # after the best (6): SIGTERM, the run stops at step 11
        train(run, status=3)
    assert "stopped by SIGTERM at step 11/16" in capsys.readouterr().err
    checkpoint = load_checkpoint(RunDir(run).list_checkpoints()[-1])
    assert checkpoint["state"]["step"] == 11 and checkpoint["best"]["step"] == BEST_STEP
    assert checkpoint["best"]["stale"] == 2  # steps 8 and 10 were no better
    best_written = (run / "best.safetensors").stat().st_mtime_ns

    with monkeypatch.context() as patch:
        scripted = Scripted(patch)
        assert main(["train", "--resume", str(run)]) == 0
    assert "from ckpt-00000011.pt" in capsys.readouterr().err
    assert sorted(scripted.weights) == [12, 14, 16]  # the best came from the checkpoint, not from evaluating again
    assert (run / "best.safetensors").stat().st_mtime_ns == best_written
    for name in ("weights.safetensors", "best.safetensors"):
        assert same(tensors(run / name), tensors(reference / name)), name
    kept = [json.loads((r / "summary.json").read_text())["kept"] for r in (run, reference)]
    for record in kept:
        del record["evaluation"]["elapsed_s"]  # wall time, which differs
    assert kept[0] == kept[1] and kept[0]["step"] == BEST_STEP
    ends = [load_checkpoint(RunDir(r).list_checkpoints()[-1]) for r in (run, reference)]
    for end in ends:
        del end["best"]["record"]["elapsed_s"]
    assert ends[0]["best"] == ends[1]["best"] and ends[0]["state"] == ends[1]["state"]
    assert all(torch.equal(ends[0]["model"][k], ends[1]["model"][k]) for k in ends[1]["model"])


def test_early_stopping_ends_the_run_cleanly_and_keeps_the_best(tmp_path: Path, monkeypatch, capsys) -> None:
    scripted = Scripted(monkeypatch)
    run = tmp_path / "run"
    train(run, "train.early_stop=3")
    out, err = capsys.readouterr()
    # 8, 10 and 12 are no better than 6: the run ends after the evaluation of step 12.
    assert sorted(scripted.weights) == [2, 4, 6, 8, 10, 12]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["total_steps"] == 16
    assert summary["stopped_early"] == {"step": 12, "evaluations_without_improvement": 3, "early_stop": 3}
    assert summary["final"]["step"] == 12 and summary["kept"]["step"] == BEST_STEP
    assert same(network_part(tensors(run / "weights.safetensors")), scripted.weights[BEST_STEP])
    assert [r["step"] for r in RunDir(run).read_metrics()] == [2, 4, 6, 8, 10, 12]
    assert "stopped early at step 12/16: 3 evaluations without a lower test top-1 error than step 6's" in err
    assert "stopped early    at step 12 of 16: 3 evaluations without a lower test top-1 error" in out
    # A clean end: the final checkpoint, weights and summary are written, nothing to resume.
    assert RunDir(run).state() == "finished"
    assert load_checkpoint(RunDir(run).list_checkpoints()[-1])["state"]["step"] == 12


# ---- optim.class_weights -------------------------------------------------------------------------


def test_inverse_frequency_weights() -> None:
    weights = inverse_frequency_weights(torch.tensor([400, 20, 0]))
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([420 / (3 * 400), 420 / (3 * 20), 0.0])  # absent: weight 0
    assert inverse_frequency_weights(torch.tensor([5, 5])).tolist() == [1.0, 1.0]


# Two colour classes that overlap: each image's colour is shifted at random (JITTER per channel)
# and each pixel is noisy. "a" leans red, "b" blue; training holds 400 a and 20 b.
MEANS = {"a": (140, 120, 110), "b": (110, 120, 140)}
JITTER, NOISE = 25.0, 30.0


def colour_images(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    """(n, 8, 8, 3) uint8."""
    base = np.array(MEANS[name], dtype=np.float64)
    images = base + rng.normal(0, JITTER, (n, 1, 1, 3)) + rng.normal(0, NOISE, (n, 8, 8, 3))
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def write_imbalanced_tree(root: Path) -> dict[str, np.ndarray]:
    """root/train/{a: 400, b: 20}/*.png and root/val/{a, b: 200 each}; returns the val images."""
    rng = np.random.default_rng(0)
    held_out = {}
    for split, counts in (("train", {"a": 400, "b": 20}), ("val", {"a": 200, "b": 200})):
        for name, n in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            images = colour_images(rng, name, n)
            for i, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{i}.png")
            held_out[name] = images
    return held_out


def recalls(run: Path, held_out: dict[str, np.ndarray]) -> list[float]:
    """Per-class recall of the run's weights on the balanced held-out images."""
    weights = load_weights(run)
    out = []
    for label, name in enumerate(weights.meta.classes):
        x = torch.from_numpy(held_out[name]).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            predicted = weights.model(weights.stats.apply(x)).argmax(1)
        out.append((predicted == label).double().mean().item())
    return out


def test_class_weights_auto_raise_the_balanced_accuracy_on_imbalanced_data(tmp_path: Path, capsys) -> None:
    """Plain cross-entropy learns to say "a" (the prior is 20:1); weighted by inverse class
    frequency the minority's recall rises far more than the majority's falls. Seeds 0-4 gave
    balanced accuracies of 51-58% plain and 71-78% weighted (+17 to +26 points); seed 0: 58.3% and 75.7%."""
    held_out = write_imbalanced_tree(tmp_path / "tree")
    common = ("train.seed=0", "train.batch_size=32", "data.split=full", "data.normalize=channel", "data.augment=none")
    common += ("optim.lr=0.05", "schedule.name=cosine", "train.eval_every=-1")
    balanced = {}
    for mode in ("none", "auto"):
        run = tmp_path / mode
        train_tiny_run(run, tmp_path / "tree", *common, f"optim.class_weights={mode}", epochs=8)
        per_class = recalls(run, held_out)
        balanced[mode] = (sum(per_class) / 2, per_class)
        summary = json.loads((run / "summary.json").read_text())
        expected = "none" if mode == "none" else {"mode": "auto", "class_counts": [400, 20], "weights": [0.525, 10.5]}
        assert summary["class_weights"] == expected
    err = capsys.readouterr().err
    assert "class weights (optim.class_weights=auto, n / (C n_c)): a 0.525 (400 images), b 10.5 (20 images)" in err
    (plain, plain_recall), (weighted, weighted_recall) = balanced["none"], balanced["auto"]
    assert weighted > plain + 0.08, balanced
    assert weighted_recall[1] > plain_recall[1] + 0.2, balanced  # the minority class
