"""hubconf.py: torch.hub entry points built from the registry, shipped weights by name."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from reslab.errors import ConfigError
from reslab.models import ResNet, list_models
from reslab.models.features import FeatureNet
from reslab.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]


def hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resnet56_builds_through_torch_hub() -> None:
    net = torch.hub.load(str(ROOT), "resnet56", source="local")
    assert isinstance(net, ResNet) and net.name == "resnet56" and net.num_classes == 10
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    wide = torch.hub.load(str(ROOT), "create", "wrn_10_2", source="local", num_classes=3)  # a parametric name
    assert wide.name == "wrn_10_2" and wide.num_classes == 3


def test_one_entry_point_per_registered_network_and_nothing_else() -> None:
    module = hubconf()
    public = {f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_")}  # torch.hub.list's rule
    assert public == {*list_models(), "create"}
    assert "resnet-cifar" in module.resnet56.__doc__ and "pretrained=True" in module.resnet56.__doc__


def test_pretrained_loads_the_shipped_weights_by_name() -> None:
    net = torch.hub.load(str(ROOT), "resnet20", source="local", pretrained=True)
    shipped = load_weights("resnet20-fashion-mnist")
    assert net.state_dict().keys() == shipped.model.state_dict().keys()
    assert all(torch.equal(v, shipped.model.state_dict()[k]) for k, v in net.state_dict().items())
    assert not net.training and net.weights_meta == shipped.meta and net.preprocess.in_chans == 1
    by_name = torch.hub.load(str(ROOT), "create", "wrn_10_2", source="local", weights="wrn_10_2-fashion-mnist")
    assert by_name.weights_meta.dataset_name == "fashion-mnist"


def test_weights_with_a_new_head_or_as_a_backbone() -> None:
    net = torch.hub.load(str(ROOT), "resnet20", source="local", pretrained=True, num_classes=4)
    assert net.num_classes == 4 and net(torch.randn(1, 1, 28, 28)).shape == (1, 4)
    backbone = torch.hub.load(str(ROOT), "resnet20", source="local", pretrained=True, features_only=True)
    assert isinstance(backbone, FeatureNet) and backbone.feature_info.channels() == [16, 16, 32, 64]
    assert torch.equal(backbone.conv1.weight, net.conv1.weight)


@pytest.mark.parametrize(
    "model, kwargs, problem",
    [
        ("resnet56", {"pretrained": True}, "ships no weights for resnet56"),
        ("resnet56", {"weights": "resnet20-fashion-mnist"}, "hold a resnet20, not a resnet56"),
        ("resnet20", {"pretrained": True, "shortcut": "B"}, "fixed by the weights"),
    ],
)
def test_weights_that_do_not_fit_are_config_errors(model: str, kwargs: dict, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        torch.hub.load(str(ROOT), model, source="local", **kwargs)


def test_works_without_reslab_installed(tmp_path: Path) -> None:
    """A process in which `import reslab` fails until hubconf puts the repository's src/ on sys.path."""
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        from pathlib import Path
        sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "reslab").is_dir()]
        if importlib.util.find_spec("reslab") is not None:
            print("SKIP: reslab is importable from elsewhere"); raise SystemExit(0)
        import torch
        net = torch.hub.load({str(ROOT)!r}, "resnet20", source="local", pretrained=True)
        import reslab
        print(type(net).__name__, net.weights_meta.model, reslab.__file__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("SKIP"):
        pytest.skip(done.stdout.strip())
    kind, model, where = done.stdout.split()
    assert (kind, model) == ("ResNet", "resnet20") and Path(where).is_relative_to(ROOT / "src")
