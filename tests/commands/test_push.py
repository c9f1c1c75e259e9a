"""`reslab push`: the repository folder (weights, config.json, model card) and the upload, without network."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub import constants

from reslab.cli import main
from reslab.infer.publish import HUB_FILES, training_command
from reslab.weights import WeightsMeta, load_weights

SMALL_RUN = [
    "--data",
    "synthetic",
    "--model",
    "resnet_cifar_8",
    "--epochs",
    "2",
    "--no-progress",
    "--set",
    "train.batch_size=8",
    "--set",
    "data.split=paper",
    "--set",
    "data.val_size=16",
    "--set",
    "data.synthetic_size=48",
    "--set",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished (tiny, synthetic) training run."""
    path = tmp_path_factory.mktemp("push") / "run"
    assert main(["train", *SMALL_RUN, "--run-dir", str(path)]) == 0
    return path


def card_header(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_dry_run_writes_the_repository_folder(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "repo"
    rc = main(["push", str(run), "--repo", "someone/tiny", "--dry-run", str(out), "--license", "apache-2.0"])
    assert rc == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(HUB_FILES)
    assert (out / "weights.safetensors").read_bytes() == (run / "weights.safetensors").read_bytes()

    weights = load_weights(run)
    meta = weights.meta
    config = json.loads((out / "config.json").read_text())
    assert WeightsMeta.from_values(config, "config.json").classes == meta.classes  # the weights' own record
    assert config["architecture"]["name"] == "resnet_cifar_8" and config["architecture"]["family"] == "resnet-cifar"
    assert config["input_size"] == meta.input_size and config["resize"] == meta.resize
    assert config["mean"] == weights.stats.mean.tolist() and config["std"] == weights.stats.std.tolist()
    assert config["data_sha256"] == meta.data_sha256 and config["command"] == meta.command

    card = (out / "README.md").read_text()
    assert card_header(card)["license"] == "apache-2.0" and card_header(card)["library_name"] == "reslab"
    summary = json.loads((run / "summary.json").read_text())
    kept = summary["kept"]["evaluation"]  # the evaluation of the weights the run ended with
    assert f"| val top-1 error | {100 * kept['val_top1_error']:.2f}% |" in card
    assert f"| test top-1 error | {100 * kept['test_top1_error']:.2f}% |" in card
    assert f"| test loss | {kept['test_loss']:.4f} |" in card
    assert training_command(meta.command) in card and meta.command.split()[-1] in card
    assert f"`{meta.data_sha256}`" in card
    assert "synthetic smoke-test data" in card  # a synthetic run says so
    assert f"{meta.input_size}x{meta.input_size} pixels" in card and f"`{meta.resize}`" in card
    assert "reslab predict hf-hub:someone/tiny" in card
    assert f"{summary['steps']} steps" in card


def test_a_weights_file_reports_its_own_metrics(weights_file: Path, tmp_path: Path) -> None:
    assert main(["push", str(weights_file), "--repo", "someone/file", "--dry-run", str(tmp_path / "r")]) == 0
    card = (tmp_path / "r" / "README.md").read_text()
    assert card_header(card)["license"] == "mit"  # the default
    assert "No metrics were recorded" in card and "training command was not recorded" in card
    assert "mean [0.49, 0.48, 0.45], std [0.25, 0.24, 0.26] (per channel" in card


def test_the_recorded_command_reads_as_typed() -> None:
    assert training_command("__main__.py train --recipe fast") == "reslab train --recipe fast"
    assert training_command("reslab train --recipe fast") == "reslab train --recipe fast"
    assert training_command("python my_script.py") == "python my_script.py"


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--repo", "noslash"], "USER/NAME"),
        (["--repo", "a/b--c"], "not a valid repository id"),
        (["--repo", "a/b", "--license", "MIT License"], "--license"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    weights_file: Path, tmp_path: Path, capsys, args: list[str], problem: str
) -> None:
    out = tmp_path / "repo"
    assert main(["push", str(weights_file), *args, "--dry-run", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reslab push: error:") and problem in err[0]
    assert not out.exists()


def test_missing_weights_and_a_busy_folder_are_refused(weights_file: Path, tmp_path: Path, capsys) -> None:
    assert main(["push", str(tmp_path / "nothing.safetensors"), "--repo", "a/b", "--dry-run", str(tmp_path / "r")]) == 2
    assert "no weights at" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["push", str(weights_file), "--repo", "a/b", "--dry-run", str(busy)]) == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


class FakeApi:
    """Records what `reslab push` asks of huggingface_hub.HfApi."""

    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id: str, **kw) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://hub.invalid/{repo_id}"

    def create_branch(self, repo_id: str, **kw) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw):
        files = {p.name: p.read_bytes() for p in Path(kw["folder_path"]).iterdir()}
        self.calls.append(("upload_folder", {**kw, "files": files}))
        return type("CommitInfo", (), {"commit_url": "https://hub.invalid/commit/1"})()


def test_push_creates_the_repository_and_uploads_one_commit(
    weights_file: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    rc = main(["push", str(weights_file), "--repo", "someone/net", "--revision", "v1", "--private"])
    assert rc == 0
    assert "https://hub.invalid/commit/1" in capsys.readouterr().out
    names = [name for name, _ in FakeApi.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    create, branch, upload = (kw for _, kw in FakeApi.calls)
    assert create["repo_id"] == "someone/net" and create["private"] is True and create["exist_ok"] is True
    assert branch["branch"] == "v1"
    assert upload["repo_id"] == "someone/net" and upload["revision"] == "v1"
    assert sorted(upload["files"]) == sorted(HUB_FILES)
    assert upload["files"]["weights.safetensors"] == weights_file.read_bytes()
    assert not Path(upload["folder_path"]).exists()  # a temporary folder, removed after the upload


def test_push_offline_is_refused_in_one_line(weights_file: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["push", str(weights_file), "--repo", "someone/net"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HF_HUB_OFFLINE=1" in err[0] and "--dry-run" in err[0]


def test_an_unreachable_hub_is_one_line(weights_file: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    class Unreachable(FakeApi):
        def create_repo(self, repo_id: str, **kw) -> str:
            raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["push", str(weights_file), "--repo", "someone/net"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "reslab push: error: cannot push to someone/net ([Errno -2] Name or service not known); "
        "is the Hub reachable from here?"
    ]
