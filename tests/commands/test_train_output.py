"""What `reslab train` says and decides at its edges: the lines of a run (with and without the
progress bar), the final summary, `--resume` of a finished run, and `--data-dir` without `--data`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dataset_files import write_idx, write_image_tree
from tiny_run import train_tiny_synthetic

from reslab.cli import build_parser, main
from reslab.commands.train import resolve_new
from reslab.rundir import RunDir

EVAL_EVERY_4 = "train.eval_every=4"  # on the tiny synthetic run (32 images, batch 8), 8 steps
EVAL_LINE = re.compile(
    r"step (\d+)/8 \(epoch \d+\.\d\d\)  test top-1 \d+\.\d\d%  loss \d+\.\d{4}  best \d+\.\d\d% @ \d+"
)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))


def lines(text: str) -> list[str]:
    """The lines of stderr, split at carriage returns too (the progress bar redraws itself)."""
    return [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]


@pytest.mark.parametrize("progress", [False, True], ids=["no-progress", "progress-bar"])
def test_each_evaluation_prints_one_line(tmp_path: Path, capsys, progress: bool) -> None:
    train_tiny_synthetic(tmp_path / "run", EVAL_EVERY_4, iterations=8, progress=progress)
    out, err = capsys.readouterr()
    err_lines = lines(err)
    evals = [line for line in err_lines if EVAL_LINE.fullmatch(line)]
    assert [int(EVAL_LINE.fullmatch(line).group(1)) for line in evals] == [4, 8], err
    assert ("%|" in err) == progress  # the bar; the lines were written around it
    # Before the first step: the data, then the model, the optimizer and the schedule on one line.
    setup = next(i for i, line in enumerate(err_lines) if line.startswith("model resnet_cifar_8 ("))
    assert "optimizer sgd lr 0.1" in err_lines[setup] and "schedule multistep" in err_lines[setup]
    assert "8 steps (2.00 epochs of 4, batch 8)" in err_lines[setup]
    assert any(line.startswith("data:") and "synthetic" in line for line in err_lines[:setup])
    assert setup < err_lines.index(evals[0])
    assert re.search(r"^kept +the last step's \(train\.keep=last\)$", out, re.M)
    assert "stopped early" not in out


def test_resuming_a_finished_run_changes_nothing(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    train_tiny_synthetic(run, EVAL_EVERY_4, iterations=8)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(run.rglob("*"))}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.threads=2"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{run} is finished: nothing to resume; its weights are {run / 'weights.safetensors'}"]
    assert err == ""
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(run.rglob("*"))} == before
    # Without its weights the run is not finished: the resume writes them again.
    (run / "weights.safetensors").unlink()
    assert RunDir(run).state() == "partial"
    assert main(["train", "--resume", str(run)]) == 0
    assert "from ckpt-00000008.pt" in capsys.readouterr().err and (run / "weights.safetensors").is_file()


# ---- --data-dir without --data ---------------------------------------------------------------------


def new_config(*args: str):
    return resolve_new(build_parser().parse_args(["train", *args]))


def test_data_dir_with_an_image_tree_trains_on_it(tmp_path: Path, capsys) -> None:
    write_image_tree(tmp_path / "tree", size=(16, 16), per_class=4, classes=("cat", "dog"))
    run = tmp_path / "run"
    args = ["--recipe", "fast", "--model", "resnet_cifar_8", "--iterations", "1", "--no-progress",
            "--set", "train.batch_size=4", "--set", "train.threads=1"]  # fmt: skip
    assert main(["train", *args, "--data-dir", str(tmp_path / "tree"), "--run-dir", str(run)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == (
        f"--data-dir {tmp_path / 'tree'} holds an ImageFolder tree (2 class folders in train/): "
        "training on it (data.dataset=imagefolder)"
    )
    assert RunDir(run).load_config().data.dataset == "imagefolder"
    assert "Fashion" not in out and "fashion" not in out


def test_data_dir_with_a_csv_file_trains_on_it(tmp_path: Path, capsys) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("a.png,cat\n")
    assert new_config("--epochs", "1", "--data-dir", str(labels)).data.dataset == "csv"
    assert capsys.readouterr().err == f"--data-dir {labels} is a CSV file: training on its rows (data.dataset=csv)\n"


def test_data_dir_with_the_recipes_files_keeps_the_recipes_dataset(tmp_path: Path, capsys) -> None:
    write_idx(tmp_path / "fm")
    assert new_config("--recipe", "fast", "--data-dir", str(tmp_path / "fm")).data.dataset == "fashion-mnist"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("content", ["empty", "stray-files", "tree-without-images"])
def test_data_dir_holding_nothing_known_is_one_line_of_error(tmp_path: Path, capsys, content: str) -> None:
    data = tmp_path / "data"
    (data / "train" / "cat").mkdir(parents=True)
    if content == "stray-files":
        (data / "notes.txt").write_text("x")
    if content == "tree-without-images":
        (data / "train" / "cat" / "readme.txt").write_text("x")
    run = tmp_path / "run"
    assert main(["train", "--recipe", "fast", "--data-dir", str(data), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither an ImageFolder tree" in err and "fashion-mnist files" in err
    assert "--data (" in err and not run.exists()


def test_data_dir_with_an_explicit_dataset_is_not_second_guessed(tmp_path: Path, capsys) -> None:
    write_image_tree(tmp_path / "tree", size=(16, 16), per_class=2, classes=("cat", "dog"))
    assert (
        new_config("--epochs", "1", "--data", "synthetic", "--data-dir", str(tmp_path / "tree")).data.dataset
        == "synthetic"
    )
    cfg = new_config("--epochs", "1", "--set", "data.dataset=cifar10", "--data-dir", str(tmp_path / "tree"))
    assert cfg.data.dataset == "cifar10" and capsys.readouterr().err == ""
