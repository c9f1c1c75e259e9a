"""Fine-tuning from torchvision's weights by name (`model.pretrained=torchvision:resnet18.IMAGENET1K_V1`)
and what `load_pretrained` says about it.

No test reaches the network: torch's downloader is replaced by one that fails as an offline machine
does, and the weights are planted where torchvision keeps them ($TORCH_HOME/hub/checkpoints, under
the file name the URL ends with): a real torchvision state dict, randomly initialised (seeded).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from dataset_files import write_image_tree
from infer_testdata import make_weights
from tiny_run import tiny_run_args

from reslab.cli import main
from reslab.errors import CheckpointError, ConfigError
from reslab.models import create_model
from reslab.train.pretrained import load_pretrained, torchvision_weights
from reslab.weights import load_weights

R18_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """TORCH_HOME in tmp_path and a downloader that fails as it does without network; the calls made."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls: list[tuple[str, str]] = []

    def no_network(url: str, dst: str, *args, **kwargs) -> None:
        calls.append((url, dst))
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


def cache_file(url: str) -> Path:
    """Where torchvision caches `url`, spelled out rather than asked of the code under test."""
    return Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / url.rsplit("/", 1)[1]


def plant(arch: str, url: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sd = getattr(torchvision.models, arch)().state_dict()
    path = cache_file(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return sd


def error_line(rc: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("reslab train: error: "), err
    return lines[0]


def train(tmp_path: Path, model: str, pretrained: str, *settings: str) -> int:
    """`reslab train`'s exit status: one step of `model` from `pretrained` on a tiny 32x32 tree."""
    tree = tmp_path / "tree"
    if not tree.exists():
        write_image_tree(tree, size=(32, 32), per_class=4, classes=("cat", "dog", "emu"))
        shutil.copytree(tree / "val", tree / "test")  # a tree with all three parts, however they are read
    tiny = ("data.split=full", "data.image_size=32", "train.batch_size=4", f"model.pretrained={pretrained}")
    return main(tiny_run_args(tmp_path / "run", tree, *tiny, *settings, iterations=1, model=model))


# ---- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "arch", "weights"),
    [
        ("resnet50.IMAGENET1K_V2", "resnet50", "IMAGENET1K_V2"),
        ("ResNet50_Weights.IMAGENET1K_V1", "resnet50", "IMAGENET1K_V1"),
        ("resnet50", "resnet50", "IMAGENET1K_V2"),  # DEFAULT
        ("ResNet18_Weights.DEFAULT", "resnet18", "IMAGENET1K_V1"),
        ("wide_resnet50_2.IMAGENET1K_V2", "wide_resnet50_2", "IMAGENET1K_V2"),
    ],
)
def test_names_resolve_through_torchvision(name: str, arch: str, weights: str) -> None:
    got_arch, got = torchvision_weights(name)
    assert got_arch == arch and got.name == weights
    assert got is torchvision.models.get_weight(f"{type(got).__name__}.{weights}")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("resnet5", "closest: torchvision:resnet50"),
        ("resnet18.IMAGENET1K_V9", "torchvision:resnet18.IMAGENET1K_V1"),
        ("ResNet50_Weight.IMAGENET1K_V2", "closest: torchvision:resnet50.IMAGENET1K_V2"),
        ("vgg16", "not a network reslab builds"),
    ],
)
def test_unknown_names_list_the_close_ones(name: str, words: str, tmp_path: Path, capsys, offline) -> None:
    with pytest.raises(ConfigError, match=words):
        torchvision_weights(name)
    line = error_line(train(tmp_path, "resnet18", f"torchvision:{name}"), capsys.readouterr().err)
    assert words in line and not offline


# ---- loading ------------------------------------------------------------------------------------------


def test_train_loads_planted_weights_and_says_so(tmp_path: Path, capsys, offline) -> None:
    planted = plant("resnet18", R18_URL)
    assert cache_file(R18_URL).name == "resnet18-f37072fd.pth"
    capsys.readouterr()
    rc = train(tmp_path, "resnet18", "torchvision:resnet18.IMAGENET1K_V1", "optim.lr=1e-12")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert not offline  # found in the cache: nothing downloaded
    said = [line for line in err.splitlines() if "fine-tuning from" in line or "fc.weight, fc.bias" in line]
    assert said == [
        f"fine-tuning from torchvision:resnet18.IMAGENET1K_V1 ({cache_file(R18_URL)}): loaded 120 of its 122 tensors",
        "  fc.weight, fc.bias: new head for 3 classes (the file has 1000), freshly initialised",
    ]
    trained = load_weights(tmp_path / "run").model.state_dict()
    for key in ("conv1.weight", "layer4.1.conv2.weight"):  # one step at lr 1e-12 moves nothing visible
        torch.testing.assert_close(trained[key], planted[key], atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", ["resnet18", "ResNet18_Weights.IMAGENET1K_V1", "resnet18.DEFAULT"])
def test_every_spelling_loads_the_same_file_exactly(name: str, capsys, offline) -> None:
    planted = plant("resnet18", R18_URL)
    model = create_model("resnet18", num_classes=1000)
    load_pretrained(model, f"torchvision:{name}")
    got = model.state_dict()
    assert got.keys() == planted.keys()
    assert all(torch.equal(got[k], planted[k]) for k in got)
    assert capsys.readouterr().err.splitlines() == [  # head kept: one line
        f"fine-tuning from torchvision:resnet18.IMAGENET1K_V1 ({cache_file(R18_URL)}): loaded 122 of its 122 tensors"
    ]


def test_offline_is_one_line_naming_the_url_and_the_cache_path(tmp_path: Path, capsys, offline) -> None:
    line = error_line(train(tmp_path, "resnet18", "torchvision:resnet18"), capsys.readouterr().err)
    path = cache_file(R18_URL)
    assert f"download {R18_URL} to {path} (no network here?), then rerun" in line
    assert offline == [(R18_URL, str(path))]
    assert not path.exists() and not (tmp_path / "run").exists()


def test_other_architecture_by_name_suggests_its_model_before_downloading(tmp_path: Path, capsys, offline) -> None:
    line = error_line(train(tmp_path, "resnet18", "torchvision:resnet34.IMAGENET1K_V1"), capsys.readouterr().err)
    assert "torchvision's resnet34 weights" in line and "--model resnet34" in line
    assert not offline


def test_a_resnet34_file_into_resnet18_suggests_resnet34(tmp_path: Path, capsys, offline) -> None:
    torch.manual_seed(0)
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    line = error_line(train(tmp_path, "resnet18", str(path)), capsys.readouterr().err)
    assert f"model.pretrained={path} does not fit resnet18" in line
    assert line.endswith("the file holds resnet34 weights: train with --model resnet34")


def test_a_reslab_file_of_another_model_names_it(tmp_path: Path) -> None:
    path = make_weights(tmp_path / "w.safetensors", name="resnet_cifar_8")
    with pytest.raises(
        CheckpointError, match="the file holds resnet_cifar_8 weights: train with --model resnet_cifar_8"
    ):
        load_pretrained(create_model("resnet20", num_classes=10), str(path))


def test_a_bare_torchvision_name_hints_at_the_prefix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="say model.pretrained=torchvision:resnet50.IMAGENET1K_V2"):
        load_pretrained(create_model("resnet50", num_classes=10), "resnet50.IMAGENET1K_V2")


def test_rgb_weights_into_a_grey_net_name_the_setting(offline) -> None:
    plant("resnet18", R18_URL)
    with pytest.raises(CheckpointError, match=r"\(64, 3, 7, 7\) vs \(64, 1, 7, 7\).*--set data.in_chans=3$"):
        load_pretrained(create_model("resnet18", num_classes=3, in_chans=1), "torchvision:resnet18")


def test_a_damaged_cached_file_says_to_delete_it(offline) -> None:
    path = cache_file(R18_URL)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 half a download")
    with pytest.raises(CheckpointError, match=f"{path}.*; delete it to download it again$"):
        load_pretrained(create_model("resnet18", num_classes=3), "torchvision:resnet18")
    assert not offline
