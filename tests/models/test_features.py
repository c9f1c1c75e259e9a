"""Feature pyramids: create_model(..., features_only=True, out_indices=...) and feature_info."""

from __future__ import annotations

import pytest
import torch

from reslab.errors import ConfigError
from reslab.models import create_model, list_models, model_info
from reslab.models.features import FeatureNet, feature_levels

ALL_MODELS = list_models()
# Every registered net but ResNet-1202 and ResNet-1001 (seconds each just to build), whose families
# and blocks the shallower nets cover.
MODELS = [n for n in ALL_MODELS if model_info(n).depth <= 200]
SIZE = 64  # every net takes it (ImageNet nets: total stride 32 -> a 2x2 last map)


def test_every_family_is_covered() -> None:
    assert (
        {model_info(n).family for n in MODELS}
        == {model_info(n).family for n in ALL_MODELS}
        >= {
            "resnet-cifar",
            "plain-cifar",
            "preact-resnet-cifar",
            "wide-resnet-cifar",
            "resnext-cifar",
            "fast-resnet",
            "resnet-v1.5",
            "resnet-v1",
            "preact-resnet",
            "plain",
            "resnext",
            "wide-resnet",
        }
    )


@pytest.mark.parametrize("name", MODELS)
def test_feature_info_matches_the_maps(name: str) -> None:
    """Shapes only, on the meta device: no weights are initialised and no arithmetic is done."""
    with torch.device("meta"):
        net = create_model(name)
        features = FeatureNet(net)
        maps = features(torch.empty(2, 3, SIZE, SIZE))
    info = features.feature_info
    assert len(maps) == len(info) == net.num_stages + 1
    assert [m.shape[1] for m in maps] == info.channels()
    assert [SIZE // m.shape[-1] for m in maps] == info.reduction() == [SIZE // m.shape[-2] for m in maps]
    assert info.channels()[-1] == net.num_features and info.reduction()[-1] == net.total_stride
    assert all(m.shape[0] == 2 for m in maps)
    assert info.module_name()[1:-1] == [f"layer{i}" for i in range(1, net.num_stages)]


def test_resnet50_levels_are_timms() -> None:
    with torch.device("meta"):
        info = create_model("resnet50", features_only=True).feature_info
    assert info.channels() == [64, 256, 512, 1024, 2048]
    assert info.reduction() == [2, 4, 8, 16, 32]
    assert info.module_name() == ["relu", "layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet_cifar_8", "resnet18", "fast_resnet10"])
def test_maps_are_the_networks_own_activations(name: str) -> None:
    """Same seed, same weights: the stem and stage outputs equal what the full network computes
    (caught by hooks), and the last level is forward_features."""
    torch.manual_seed(0)
    net = create_model(name).eval()
    torch.manual_seed(0)
    features = create_model(name, features_only=True).eval()
    seen = []
    net.maxpool.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    for stage in net.stages:
        stage.register_forward_hook(lambda _, __, out: seen.append(out.clone()))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        last = net.forward_features(x)
        maps = features(x)
    assert torch.equal(maps[-1], last)
    for level, (got, expected) in enumerate(zip(maps[:-1], seen[:-1])):
        assert torch.equal(got, expected), f"level {level}"
    assert set(features.state_dict()) <= set(net.state_dict())  # a ResNet state dict loads into it


def test_out_indices_choose_levels_and_drop_deeper_stages() -> None:
    torch.manual_seed(0)
    shallow = create_model("resnet20", features_only=True, out_indices=(1,))
    assert not hasattr(shallow, "layer2") and shallow.feature_info.channels() == [16]
    pair = create_model("resnet20", features_only=True, out_indices=(-1, 2))
    assert pair.out_indices == (2, 3) and pair.feature_info.reduction() == [2, 4]
    maps = pair(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 16, 16), (1, 64, 8, 8)]
    sum(m.sum() for m in maps).backward()  # trainable as a backbone
    assert all(p.grad is not None for p in pair.parameters())


@pytest.mark.parametrize("out_indices", [(4,), (-5,), (1, 1), (), (True,), 2])
def test_bad_out_indices_are_config_errors(out_indices) -> None:
    with pytest.raises(ConfigError, match="out_indices"):
        create_model("resnet20", features_only=True, out_indices=out_indices)


def test_out_indices_without_features_only_is_an_error() -> None:
    with pytest.raises(ConfigError, match="features_only=True"):
        create_model("resnet20", out_indices=(1, 2))


def test_feature_levels_of_a_built_network() -> None:
    with torch.device("meta"):
        levels = feature_levels(create_model("preact_resnet18"))
    assert [lv["module"] for lv in levels] == ["conv1", "layer1", "layer2", "layer3", "final_bn"]
    assert [lv["index"] for lv in levels] == [0, 1, 2, 3, 4]
    assert isinstance(create_model("resnet20", features_only=True), FeatureNet)
