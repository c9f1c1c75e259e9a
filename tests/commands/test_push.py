"""`reslab push`: the repository folder (weights, config.json, model card) and the upload, without network."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import huggingface_hub
import pytest
import tiny_run
import torch
import yaml
from huggingface_hub import constants
from safetensors import safe_open
from tiny_run import TINY_TREE, tiny_tree, train_tiny_run

from reslab.cli import main
from reslab.infer.publish import HUB_FILES, training_command
from reslab.infer.redact import LocalPaths, redact
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


def as_typed(args: list[str]) -> int:
    """`main(args)` with sys.argv as a shell gives it for `reslab ARGS`: the command the run records."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["reslab", *args])
        return main(args)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished (tiny, synthetic) training run, typed with a relative --run-dir: its recorded
    command names no local path, so push publishes it (and the weights) as they are."""
    base = tmp_path_factory.mktemp("push")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        assert as_typed(["train", *SMALL_RUN, "--run-dir", "run"]) == 0
    return base / "run"


@pytest.fixture(scope="module")
def private_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ImageFolder run (tests/data/tiny_run.py) typed with absolute paths: the data, the
    run and the cache under the test's temporary folder, train.out_dir under the home directory."""
    base = tmp_path_factory.mktemp("private")
    tree = tiny_tree(base / "my-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny_run, "main", as_typed)
        return train_tiny_run(base / "run", tree, f"train.out_dir={Path.home() / 'reslab-runs'}")


def machine_paths(run: Path) -> list[str]:
    """The absolute paths of this machine nothing published may name: the run's folder and its
    parents (short of the top-level folder, /tmp), the home directory and the working directory."""
    parents = [p for p in (run, *run.parents) if len(p.parts) > 2]
    return sorted({str(p) for p in (*parents, Path.home(), Path.cwd()) if p != Path(p.anchor)})


def published_texts(folder: Path) -> dict[str, str]:
    """Every file of a repository folder as text; the weights as their safetensors header's metadata."""
    texts = {p.name: p.read_text() for p in folder.iterdir() if p.suffix != ".safetensors"}
    with safe_open(folder / "weights.safetensors", "pt") as f:
        texts["weights.safetensors"] = json.dumps(f.metadata())
    return texts


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


def test_push_publishes_no_local_path(private_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (private_run / "weights.safetensors").read_bytes()
    local = load_weights(private_run)
    tree = Path(local.meta.data_dir)
    assert tree.is_absolute() and str(tree) in local.meta.command and str(private_run) in local.meta.command
    out = tmp_path / "repo"
    assert main(["push", str(private_run), "--repo", "someone/private", "--dry-run", str(out)]) == 0
    assert "DATA_DIR, RUN_DIR" in capsys.readouterr().out

    texts = published_texts(out)
    assert sorted(texts) == sorted(HUB_FILES)
    for name, text in texts.items():
        for path in machine_paths(private_run):
            assert path not in text, f"{name} publishes {path}"
    card, uploaded = texts["README.md"], out / "weights.safetensors"
    public = load_weights(uploaded)
    assert public.meta.dataset == "imagefolder:my-data" and public.meta.data_dir == ""
    command = training_command(public.meta.command)
    assert "--data-dir DATA_DIR" in command and "--run-dir RUN_DIR" in command and command in card
    assert "data.cache_dir=CACHE_DIR" in command and "train.out_dir=OUT_DIR" in command
    # the data by kind, folder name, image count and checksum
    counts = {part: sum(classes.values()) for part, classes in TINY_TREE.items()}
    listed = ", ".join(f"{part} {n}" for part, n in counts.items())
    assert f"imagefolder (folder `{tree.name}`), {sum(counts.values())} images ({listed})" in card
    assert f"`{local.meta.data_sha256}`" in card and public.meta.data_sha256 == local.meta.data_sha256
    # a copy with the same tensors: the same predictions; the card names the uploaded file's checksum
    assert (private_run / "weights.safetensors").read_bytes() == before
    assert f"SHA-256 `{hashlib.sha256(uploaded.read_bytes()).hexdigest()}`" in card
    x = torch.randn(4, 3, public.meta.input_size, public.meta.input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(public.model(x), local.model(x))
    assert torch.equal(public.stats.mean, local.stats.mean) and torch.equal(public.stats.std, local.stats.std)


def test_keep_paths_publishes_them_as_recorded(private_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    assert main(["push", str(private_run), "--repo", "someone/mine", "--dry-run", str(out), "--keep-paths"]) == 0
    local = load_weights(private_run)
    assert (out / "weights.safetensors").read_bytes() == (private_run / "weights.safetensors").read_bytes()
    texts = published_texts(out)
    for text in texts.values():
        assert local.meta.data_dir in text
    assert str(private_run) in texts["README.md"] and str(private_run) in texts["config.json"]


def test_an_upload_publishes_no_local_path(private_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["push", str(private_run), "--repo", "someone/private"]) == 0
    _, upload = FakeApi.calls[-1]
    sent = [upload["commit_message"], *(data.decode("utf-8", "replace") for data in upload["files"].values())]
    for path in machine_paths(private_run):
        assert not any(path in text for text in sent), f"the upload publishes {path}"


def test_local_paths_become_placeholders() -> None:
    known = LocalPaths.of({"DATA_DIR": ["/home/me/photos"], "RUN_DIR": ["/home/me/runs/x"]})
    typed = (
        "reslab train --data-dir /home/me/photos --run-dir=/home/me/runs/x --set data.cache_dir=/scratch/c "
        "--recipe /etc/r.yaml imagefolder:/mnt/d ~/notes -o /out/f.npy --set schedule.milestones=[6,9] rel/dir"
    )
    assert redact(typed, known) == (
        "reslab train --data-dir DATA_DIR --run-dir=RUN_DIR --set data.cache_dir=CACHE_DIR "
        "--recipe RECIPE imagefolder:PATH PATH -o PATH --set schedule.milestones=[6,9] rel/dir"
    )
    assert redact("/home/me/photos/train/a.png /home/me/photos2", known) == "DATA_DIR/train/a.png PATH"
    assert redact("https://example.org/x no:cacheprovider") == "https://example.org/x no:cacheprovider"
    assert redact("'/srv/a b' [/srv/c] x=[6,9]") == "'PATH b' [PATH] x=[6,9]"


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
