"""`reslab calibrate` and the temperature it stores: fitted on the val part only (refused without
one), written atomically into the weights' metadata, checked on load, and reported by `reslab eval`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from infer_testdata import make_weights
from safetensors.torch import load_file, safe_open, save_file
from tiny_run import tiny_tree, train_tiny_run

from reslab.cli import main
from reslab.errors import CheckpointError
from reslab.weights import load_weights, read_meta, write_meta

TREE = {"train": {"a": 10, "b": 10}, "test": {"a": 4, "b": 4}}  # no val/ folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two finished runs on the same tree: split=auto (a carved val part) and split=full (none)."""
    root = tmp_path_factory.mktemp("calibrate")
    tree = tiny_tree(root / "tree", TREE)
    split = {s: (f"data.split={s}", "data.val_fraction=0.3") for s in ("auto", "full")}
    return {s: train_tiny_run(root / f"run-{s}", tree, *settings) for s, settings in split.items()}


def test_calibrate_fits_on_the_val_part_and_stores_t(runs: dict[str, Path], capsys) -> None:
    weights = runs["auto"] / "weights.safetensors"
    tensors_before = load_file(weights)
    assert main(["calibrate", str(runs["auto"])]) == 0
    out = capsys.readouterr().out
    meta = read_meta(weights)
    assert meta.calibrated and 0.05 <= meta.temperature <= 20
    fit = meta.temperature_fit
    assert fit["part"] == "val" and fit["images"] == 6  # 30% of each class of 10, stratified
    assert fit["nll_after"] <= fit["nll_before"] + 1e-9
    assert f"T = {meta.temperature:.4g}" in out and "before" in out and "after" in out
    after = load_file(weights)  # only the metadata changed
    assert after.keys() == tensors_before.keys() and all(torch.equal(after[k], tensors_before[k]) for k in after)
    assert load_weights(weights).meta.temperature == meta.temperature


def test_no_val_part_is_refused_and_the_file_left_alone(runs: dict[str, Path], capsys) -> None:
    weights = runs["full"] / "weights.safetensors"
    before = weights.read_bytes()
    assert main(["calibrate", str(runs["full"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no val part" in err and "data.split=full" in err and "--part" in err and "--data-dir" in err
    assert weights.read_bytes() == before
    # the test part only when asked, with a warning
    assert main(["calibrate", str(runs["full"]), "--part", "test"]) == 0
    assert "warning: fitting on the test part" in capsys.readouterr().err
    assert read_meta(weights).temperature_fit["part"] == "test"


def test_a_bare_weights_file_has_no_val_part(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    copy = tmp_path / "w.safetensors"
    copy.write_bytes((runs["full"] / "weights.safetensors").read_bytes())
    assert main(["calibrate", str(copy)]) == 2
    assert "does not record how its training images were split" in capsys.readouterr().err


def test_shipped_weights_are_not_rewritten(capsys) -> None:
    assert main(["calibrate", "resnet20-fashion-mnist"]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_kill_during_the_write_leaves_the_old_file(runs: dict[str, Path], tmp_path: Path) -> None:
    """The write is atomic: killed after the temp file is synced, before the rename."""
    run = tmp_path / "run"
    run.mkdir()
    for f in runs["auto"].iterdir():
        if f.is_file():
            (run / f.name).write_bytes(f.read_bytes())
    before = (run / "weights.safetensors").read_bytes()
    env = {**os.environ, "RESLAB_FAULT_INJECT": "weights.safetensors:synced"}
    proc = subprocess.run([sys.executable, "-m", "reslab", "calibrate", str(run)], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert (run / "weights.safetensors").read_bytes() == before
    load_weights(run / "weights.safetensors")


def with_metadata(src: Path, dst: Path, **changes) -> Path:
    """A copy of weights whose reslab metadata has `changes`, unchecked (as a hostile file would)."""
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
    values = {**json.loads(metadata["reslab"]), **changes}
    save_file(load_file(src), str(dst), metadata={**metadata, "reslab": json.dumps(values)})
    return dst


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0, 0.01, 25.0, "2", True, None])
def test_a_bad_temperature_is_refused_on_load(value, tmp_path: Path) -> None:
    src = make_weights(tmp_path / "w.safetensors", name="resnet_cifar_8")
    bad = with_metadata(src, tmp_path / "bad.safetensors", temperature=value)
    with pytest.raises(CheckpointError, match="temperature"):
        load_weights(bad)
    with pytest.raises(CheckpointError, match="temperature"):  # and never written
        write_meta(src, dataclasses.replace(read_meta(src), temperature=value))


def test_eval_reports_calibrated_metrics_when_t_is_stored(tmp_path: Path, capsys) -> None:
    plain = make_weights(tmp_path / "w.safetensors", name="resnet_cifar_8")
    calibrated = write_meta(plain, dataclasses.replace(read_meta(plain), temperature=2.0), tmp_path / "t.safetensors")
    reports = {}
    for name, path in (("plain", plain), ("calibrated", calibrated)):
        out = tmp_path / f"eval-{name}"
        assert main(["eval", str(path), "--data", "synthetic", "--out", str(out)]) == 0
        reports[name] = (json.loads((out / "metrics.json").read_text()), capsys.readouterr().out)
        assert (out / "reliability.png").stat().st_size > 1000
    (plain_m, plain_text), (cal_m, cal_text) = reports["plain"], reports["calibrated"]
    assert "calibrated" not in plain_m and "calibrated " not in plain_text
    assert plain_m["nll"] == pytest.approx(plain_m["loss"])
    for key in ("top1_error", "top5_error", "loss", "ece", "nll", "brier", "confusion"):
        assert cal_m[key] == plain_m[key], key  # the network's own numbers do not move
    assert cal_m["calibrated"]["temperature"] == 2.0
    assert cal_m["calibrated"]["nll"] != pytest.approx(plain_m["nll"])
    line = next(x for x in cal_text.splitlines() if x.strip().startswith("calibrated"))
    assert f"NLL {cal_m['calibrated']['nll']:.4f}" in line and "T = 2" in line
