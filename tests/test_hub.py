"""hf-hub:USER/NAME weights through huggingface_hub's cache, offline (reslab.hub, weights.resolve_weights).

No network: each test lays out a repository in the Hub cache layout itself
(models--USER--NAME/{blobs/SHA256, snapshots/COMMIT/FILE -> ../../blobs/SHA256, refs/BRANCH}),
from the folder `reslab push --dry-run` writes, and points huggingface_hub at it offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name

from reslab.cli import main
from reslab.errors import CheckpointError, ConfigError
from reslab.infer.publish import build_hub_folder
from reslab.models import create_model
from reslab.train.pretrained import load_pretrained
from reslab.weights import load_weights, resolve_weights

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "someone/resnet20-test"


def cache_repo(cache: Path, repo: str, folder: Path, commit: str = COMMIT, ref: str | None = "main") -> Path:
    """Put the files of `folder` into the Hub cache as huggingface_hub lays out a download."""
    root = cache / repo_folder_name(repo_id=repo, repo_type="model")
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return root


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache, huggingface_hub offline (it read HF_HUB_OFFLINE when first imported,
    so the module's values are set as well as the environment's)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def pushed(weights_file: Path, tmp_path: Path) -> Path:
    """The folder `reslab push --dry-run` writes for the test weights."""
    return build_hub_folder(str(weights_file), tmp_path / "push", repo=REPO).path


def test_cached_repository_loads_offline_with_the_local_files_logits(
    offline_cache: Path, pushed: Path, weights_file: Path
) -> None:
    cache_repo(offline_cache, REPO, pushed)
    path = resolve_weights(f"hf-hub:{REPO}")
    assert path.is_relative_to(offline_cache) and path.name == "weights.safetensors"
    hub, local = load_weights(f"hf-hub:{REPO}"), load_weights(weights_file)
    assert hub.meta == local.meta
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(hub.model(x), local.model(x))
    assert torch.equal(hub.stats.mean, local.stats.mean) and torch.equal(hub.stats.std, local.stats.std)


def test_revision_by_branch_and_by_commit(offline_cache: Path, pushed: Path) -> None:
    other = "fedcba9876543210fedcba9876543210fedcba98"
    cache_repo(offline_cache, REPO, pushed, commit=other, ref="v1")
    assert COMMIT not in str(resolve_weights(f"hf-hub:{REPO}@v1"))
    assert other in str(resolve_weights(f"hf-hub:{REPO}@v1"))
    assert other in str(resolve_weights(f"hf-hub:{REPO}@{other}"))
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        resolve_weights(f"hf-hub:{REPO}")  # no refs/main: main was never fetched


def test_offline_and_not_cached_is_one_line_saying_so(
    offline_cache: Path, weights_file: Path, corpus: Path, capsys
) -> None:
    with pytest.raises(CheckpointError) as err:
        load_weights("hf-hub:nobody/absent@v2")
    message = str(err.value)
    assert "\n" not in message
    assert "hf-hub:nobody/absent@v2 is not in the Hugging Face cache" in message
    assert str(offline_cache) in message and "HF_HUB_OFFLINE=1" in message and "--revision v2" in message
    assert main(["predict", "hf-hub:nobody/absent", str(corpus / "grey.png")]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("reslab predict: error: hf-hub:nobody/absent is not in")


def test_a_cached_file_is_checked_as_a_local_one(offline_cache: Path, pushed: Path, tmp_path: Path) -> None:
    (pushed / "weights.safetensors").write_bytes(b"\x80\x04 a pickle, not safetensors")
    cache_repo(offline_cache, "someone/damaged", pushed)
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        load_weights("hf-hub:someone/damaged")


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("hf-hub:justaname", "USER/NAME"),
        ("hf-hub:a/b/c", "USER/NAME"),
        ("hf-hub:user/bad--name", "not a valid repository id"),
        ("hf-hub:user/name@", "nothing after '@'"),
    ],
)
def test_malformed_names_are_config_errors(spec: str, problem: str, offline_cache: Path) -> None:
    with pytest.raises(ConfigError, match=problem):
        resolve_weights(spec)


def test_model_pretrained_takes_hub_weights(offline_cache: Path, pushed: Path, weights_file: Path) -> None:
    cache_repo(offline_cache, REPO, pushed)
    torch.manual_seed(1)
    model = create_model("resnet20", num_classes=10)
    load_pretrained(model, f"hf-hub:{REPO}")
    expected = load_weights(weights_file).model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_cli_honours_hf_home_and_hf_hub_offline(
    tmp_path: Path, pushed: Path, weights_file: Path, corpus: Path, capsys
) -> None:
    """A fresh process configured only by the environment: the cache under $HF_HOME, no network."""
    cache_repo(tmp_path / "home" / "hub", REPO, pushed)
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "RESLAB_CACHE_DIR": str(tmp_path)}
    env.pop("HF_HUB_CACHE", None)
    image = str(corpus / "image.bmp")
    args = ["predict", "--json", "--backend", "torch", "--precision", "fp32", "-k", "3"]
    hub = subprocess.run(
        [sys.executable, "-m", "reslab", *args, f"hf-hub:{REPO}", image],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert hub.returncode == 0, hub.stderr
    assert main([*args, str(weights_file), image]) == 0
    assert json.loads(hub.stdout) == json.loads(capsys.readouterr().out)


def test_eval_names_its_output_after_the_repository() -> None:
    from reslab.analysis.eval_report import default_out_dir

    cached = Path("hub/models--someone--resnet20-test/snapshots/abc/weights.safetensors")
    assert default_out_dir(f"hf-hub:{REPO}@v1", cached, None, "cifar10") == Path("eval-resnet20-test-cifar10")
