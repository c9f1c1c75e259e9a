"""`reslab train` and `reslab eval` end to end on tiny files in the real on-disk formats (issue 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dataset_files import write_cifar, write_idx, write_image_tree
from tiny_run import train_tiny_run, train_tiny_synthetic

from reslab.cli import main
from reslab.config import load_config
from reslab.errors import ConfigError
from reslab.weights import read_meta

FAST = ("data.split=full", "train.threads=2")  # on top of the tiny run's batch 8


def train_then_eval(
    tmp_path: Path, capsys, data: str, data_dir: Path, model: str, settings: tuple[str, ...] = (), part: str = "test"
) -> dict:
    """Train for 2 epochs, then `reslab eval` the run: it reports the run's last evaluation of `part`
    (an array dataset's test files; an ImageFolder tree's val/ folder)."""
    run = train_tiny_run(tmp_path / "run", data_dir, *FAST, *settings, data=data, model=model, epochs=2)
    out = capsys.readouterr().out
    assert f"{part} top1 error" in out
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1.0, 2.0]
    assert all(0.0 <= r[f"{part}_top1_error"] <= 1.0 for r in lines)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == lines[-1]["step"] and summary["synthetic_data"] is False
    assert (run / "config.yaml").is_file() and list((run / "tb").iterdir())
    meta = read_meta(run)
    assert meta.model == model
    # Evaluate the run directory through the CLI; the numbers must equal the run's own final eval.
    rc = main(["eval", str(run), "--data", data, "--data-dir", str(data_dir), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert report["top1_error"] == pytest.approx(lines[-1][f"{part}_top1_error"])
    assert (run / f"eval-{data}" / "confusion.png").stat().st_size > 1000
    assert len(report["per_class_accuracy"]) == meta.num_classes
    return report


def test_cifar10_pickles(tmp_path, capsys) -> None:
    write_cifar(tmp_path / "data", "cifar10", per_batch=8)
    report = train_then_eval(tmp_path, capsys, "cifar10", tmp_path / "data", "resnet_cifar_8")
    assert report["images"] == 8
    assert "airplane" in report["per_class_accuracy"]


def test_cifar100_pickles(tmp_path, capsys) -> None:
    write_cifar(tmp_path / "data", "cifar100", per_batch=24)
    report = train_then_eval(tmp_path, capsys, "cifar100", tmp_path / "data", "resnet_cifar_8")
    assert len(report["per_class_accuracy"]) == 100


def test_fashion_mnist_idx(tmp_path, capsys) -> None:
    write_idx(tmp_path / "fm", n_train=32, n_test=10)
    report = train_then_eval(tmp_path, capsys, "fashion-mnist", tmp_path / "fm", "resnet_cifar_8")
    assert report["images"] == 10 and "Ankle boot" in report["per_class_accuracy"]
    meta = read_meta(tmp_path / "run")
    assert meta.in_chans == 1 and meta.input_size == 28


def test_image_folder_tree(tmp_path, capsys) -> None:
    write_image_tree(tmp_path / "tree", size=(20, 18), per_class=8, classes=("cat", "dog", "emu"))
    report = train_then_eval(
        tmp_path, capsys, "imagefolder", tmp_path / "tree", "resnet_cifar_8", ("data.image_size=16",), "val"
    )
    assert set(report["per_class_accuracy"]) == {"cat", "dog", "emu"}


def test_image_folder_streamed_from_disk_in_workers(tmp_path, capsys) -> None:
    """data.in_memory=false (the imagenet-paper recipe's path): DataLoader workers decode and
    augment (paper scale augmentation + PCA lighting); `reslab eval` streams val/ the same way."""
    write_image_tree(tmp_path / "tree", size=(40, 36), per_class=8, classes=("cat", "dog", "emu"))
    report = train_then_eval(
        tmp_path,
        capsys,
        "imagefolder",
        tmp_path / "tree",
        "resnet_cifar_8",
        (
            "data.in_memory=false",
            "data.image_size=32",
            "data.augment=scale",
            "data.normalize=channel",
            "data.workers=1",
        ),
        part="val",
    )
    assert set(report["per_class_accuracy"]) == {"cat", "dog", "emu"}
    meta = read_meta(tmp_path / "run")
    assert meta.input_size == 32 and meta.data_sha256.startswith("listing:")


def test_imagenet_paper_recipe_trains_a_step(tmp_path) -> None:
    write_image_tree(tmp_path / "tree", size=(40, 36), per_class=4, classes=("a", "b"))
    result = run_cli(
        "train",
        "--recipe",
        "imagenet-paper",
        "--data-dir",
        str(tmp_path / "tree"),
        "--model",
        "resnet18",
        "--iterations",
        "1",
        "--no-progress",
        "--run-dir",
        str(tmp_path / "r"),
        "--set",
        "train.batch_size=4",
        "--set",
        "data.image_size=32",
        "--set",
        "data.workers=0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    config = (tmp_path / "r" / "config.yaml").read_text()
    assert "in_memory: false" in config and "augment: scale" in config


def test_streaming_refuses_settings_it_cannot_honour(tmp_path) -> None:
    write_image_tree(tmp_path / "tree", size=(20, 18), per_class=4, classes=("a", "b"))
    result = run_cli(
        "train",
        "--data",
        "imagefolder",
        "--data-dir",
        str(tmp_path / "tree"),
        "--model",
        "resnet_cifar_8",
        "--epochs",
        "1",
        "--set",
        "data.in_memory=false",
        "--set",
        "data.augment=crop-flip",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "data.augment='crop-flip' (valid here: scale, rrc, none)" in result.stderr


def test_paper_split_evaluates_val_and_test(tmp_path, capsys) -> None:
    write_cifar(tmp_path / "data", "cifar10", per_batch=8)
    run = tmp_path / "run"
    paper = ("data.val_size=8", "train.eval_every=3", "train.threads=0")  # the recipe's dataset, torch's threads
    train_tiny_run(run, tmp_path / "data", *paper, data=None, iterations=6, extra=("--recipe", "cifar-paper"))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6]
    assert {"val_top1_error", "test_top1_error"} <= set(lines[0])


def test_eval_every_minus_one_evaluates_only_after_the_last_step(tmp_path, capsys) -> None:
    write_cifar(tmp_path / "data", "cifar10", per_batch=8)
    run = tmp_path / "run"
    last = ("train.eval_every=-1", "train.threads=0")  # torch's own thread count
    train_tiny_run(run, tmp_path / "data", *last, data="cifar10", epochs=3.5, extra=("--recipe", "fast"))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [18]  # 40 images / 8 = 5 steps an epoch; 3.5 epochs, rounded up
    assert (run / "summary.json").is_file()
    with pytest.raises(ConfigError, match=r"train\.eval_every=-2 is out of range"):
        load_config("fast", ["train.eval_every=-2"])


def test_synthetic_is_labelled_as_such(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    train_tiny_synthetic(run, *FAST, epochs=1)
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out
    assert all("SYNTHETIC" in line for line in (run / "metrics.jsonl").read_text().splitlines())


# ---- Bad input: one clear line, exit status 2, no traceback --------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESLAB_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "reslab", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_missing_dataset_names_the_file_and_how_to_get_it(tmp_path) -> None:
    result = run_cli(
        "train", "--data", "cifar10", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "data_batch_1" in result.stderr or "cifar-10-batches-py" in result.stderr
    assert "download" in result.stderr


def test_corrupt_dataset_file_is_named(tmp_path) -> None:
    write_cifar(tmp_path / "data", "cifar10", per_batch=4)
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    result = run_cli("train", "--data", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data_batch_3" in result.stderr


def test_setting_typo_names_key_and_valid_ones(tmp_path) -> None:
    result = run_cli("train", "--recipe", "fast", "--set", "optim.lrate=0.1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "optim.lrate" in result.stderr and "lr, momentum" in result.stderr


def test_nan_loss_stops_at_that_step(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    train_tiny_synthetic(
        run, *FAST, "data.synthetic_size=64", "optim.lr=1e30", "train.checkpoint_every=1", iterations=40, status=2
    )
    err = capsys.readouterr().err
    assert "non-finite" in err and "at step" in err
    step = int(err.split("at step ")[1].split()[0])
    checkpoints = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    # The newest checkpoint is the last good step, written before the bad one, and it loads.
    assert checkpoints and int(checkpoints[-1].stem.split("-")[1]) == step
    from reslab.checkpoint import load_checkpoint

    assert load_checkpoint(checkpoints[-1])["state"]["step"] == step


def test_unknown_model_on_the_cli(tmp_path) -> None:
    result = run_cli("models", "resnt50", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Closest: resnet50" in result.stderr


def test_too_small_images_name_the_expected_shape(tmp_path) -> None:
    result = run_cli(
        "train",
        "--data",
        "synthetic",
        "--model",
        "resnet18",
        "--set",
        "data.image_size=16",
        "--set",
        "data.synthetic_size=64",
        "--set",
        "data.split=full",
        "--set",
        "train.batch_size=8",
        "--epochs",
        "1",
        "--no-progress",
        "--run-dir",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "resnet18 needs at least 32x32 input; these images are 16x16: use --set data.image_size=32" in result.stderr
