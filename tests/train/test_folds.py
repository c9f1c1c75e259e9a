"""K-fold cross-validation (`reslab train --folds K`): folds that are disjoint, stratified and
together cover train; a summary whose numbers are the folds' own; an interrupted K-fold run that
resumes where it stopped."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_run_args, tiny_tree

from reslab.cli import main
from reslab.data.array_dataset import stratified_fold_indices
from reslab.evaluation import data_source
from reslab.rundir import RunDir
from reslab.weights import read_meta

TREE = {"train": {"a": 10, "b": 7, "c": 5}, "test": {"a": 3, "b": 3, "c": 3}}  # no val/: the folds make it


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_folds_are_disjoint_stratified_and_cover_every_image(folds: int) -> None:
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5 + [3] * 1)
    vals = [stratified_fold_indices(labels, folds, k, seed=4)[1] for k in range(1, folds + 1)]
    assert sorted(torch.cat(vals).tolist()) == list(range(len(labels)))  # each image in exactly one fold
    for label in range(4):
        per_fold = [int((labels[v] == label).sum()) for v in vals]
        assert max(per_fold) - min(per_fold) <= 1, per_fold  # every class spread evenly
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    train, val = stratified_fold_indices(labels, folds, 2, seed=4)
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == len(labels)
    assert torch.equal(val, stratified_fold_indices(labels, folds, 2, seed=4)[1])  # seeded: the same again
    assert not torch.equal(val, stratified_fold_indices(labels, folds, 2, seed=5)[1])


def folds_args(tmp_path: Path, tree: Path, *extra: str) -> list[str]:
    return tiny_run_args(tmp_path / "run", tree, "data.split=auto", extra=("--folds", "3", *extra))


@pytest.fixture(scope="module")
def folds_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("folds")
    tree = tiny_tree(root / "tree", TREE)
    assert main(folds_args(root, tree)) == 0
    return root / "run", tree


def test_each_fold_validates_on_its_own_fold(folds_run: tuple[Path, Path]) -> None:
    run, tree = folds_run
    val_files = []
    for k in (1, 2, 3):
        cfg = RunDir(run).fold(k).load_config()
        assert (cfg.data.folds, cfg.data.fold) == (3, k)
        val_files.append(data_source(cfg).files("val").subset.tolist())
    assert sorted(sum(val_files, [])) == list(range(sum(TREE["train"].values())))  # disjoint, and all of train


def test_the_summary_is_the_folds_own_numbers(folds_run: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    run, _ = folds_run
    summary = RunDir(run).read_folds()
    assert summary is not None and summary.folds == 3 and summary.finished == [1, 2, 3]
    for name in ("val_top1_error", "test_top1_error", "val_loss"):
        own = [RunDir(run).fold(k).read_summary().kept.evaluation[name] for k in (1, 2, 3)]
        assert [summary.per_fold[f"fold-{k}"][name] for k in (1, 2, 3)] == own
        assert summary.stats[name].mean == pytest.approx(statistics.fmean(own))
        assert summary.stats[name].std == pytest.approx(statistics.stdev(own))


def test_an_interrupted_k_fold_run_goes_on_where_it_stopped(
    folds_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "copy"
    shutil.copytree(folds_run[0], run)
    fold1 = (run / "fold-1" / "summary.json").read_bytes()
    (run / "fold-2" / "summary.json").unlink()  # fold 2: stopped after its last checkpoint
    (run / "fold-2" / "weights.safetensors").unlink()
    shutil.rmtree(run / "fold-3")  # fold 3: never begun
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "fold 1 of 3" not in err and "fold 2 of 3: resuming" in err and "fold 3 of 3: training" in err
    assert (run / "fold-1" / "summary.json").read_bytes() == fold1
    assert RunDir(run).read_folds().finished == [1, 2, 3]


def test_folds_refuse_a_tree_with_its_own_val_part(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tree = tiny_tree(tmp_path / "tree")  # has val/
    assert main(folds_args(tmp_path, tree)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val part of its own" in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_folds_and_resume_together_is_one_line(capsys: pytest.CaptureFixture, folds_run: tuple[Path, Path]) -> None:
    assert main(["train", "--resume", str(folds_run[0]), "--folds", "3"]) == 2
    assert "drop --folds" in capsys.readouterr().err


def _probabilities(weights: Path, files: list[Path], capsys: pytest.CaptureFixture, *backend: str) -> torch.Tensor:
    """predict --json's probabilities of every class, (images, classes), without flip TTA."""
    capsys.readouterr()
    args = ["predict", str(weights), *map(str, files), "--json", "-k", "3", "--tta", "none", *backend]
    assert main([*args, "--precision", "fp32"]) == 0
    rows = json.loads(capsys.readouterr().out)
    return torch.tensor(
        [[p["probability"] for p in sorted(r["predictions"], key=lambda p: p["class_id"])] for r in rows]
    )


def test_an_ensemble_averages_the_folds_probabilities(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--folds K --ensemble: RUN/weights.safetensors holds the K networks; predict (each backend),
    eval and export give the mean of the folds' probabilities, each fold calibrated by its own
    temperature; the ensemble's test evaluation is recorded in folds.json; what needs one network
    is refused in one line."""
    tree = tiny_tree(tmp_path / "tree", TREE)
    args = tiny_run_args(tmp_path / "run", tree, "data.split=auto", "data.pad=0", extra=("--folds", "3", "--ensemble"))
    assert main(args) == 0
    run = RunDir(tmp_path / "run")
    assert "3x one network's compute" in capsys.readouterr().err
    files = sorted((tree / "test").rglob("*.png"))
    folds = [_probabilities(run.fold(k).weights, files, capsys) for k in (1, 2, 3)]
    assert len({read_meta(run.fold(k).weights).temperature for k in (1, 2, 3)}) == 3  # each fold its own
    for backend in ("torch", "onnxruntime"):
        got = _probabilities(run.weights, files, capsys, "--backend", backend)
        torch.testing.assert_close(got, torch.stack(folds).mean(0), atol=2e-5, rtol=0)

    summary = run.read_folds()
    assert summary.ensemble and set(summary.ensemble_metrics) == {"test_top1_error", "test_top5_error", "test_loss"}
    capsys.readouterr()
    assert main(["eval", str(run.path), "--json"]) == 0  # the run directory, its recorded flip TTA
    measured = json.loads(capsys.readouterr().out)
    assert measured["top1_error"] == pytest.approx(summary.ensemble_metrics["test_top1_error"])
    assert main(["export", str(run.weights), "-o", str(tmp_path / "ensemble.onnx")]) == 0  # verified on export

    assert main(["embed", str(run.weights), str(files[0]), "-o", str(tmp_path / "e.npy")]) == 2
    assert "ensemble of 3 networks, and an embedding needs one network" in capsys.readouterr().err
