"""Config layering and validation: defaults < recipe < overrides, errors that name the key."""

from __future__ import annotations

import pytest

from reslab.config import list_recipes, load_config
from reslab.errors import ConfigError

# ---- Config -------------------------------------------------------------------------------------


def test_layering_defaults_recipe_overrides() -> None:
    cfg = load_config("cifar-paper", ["optim.lr=0.05", "model.name=resnet56", "schedule.milestones=[10, 20]"])
    assert cfg.optim.lr == 0.05 and cfg.model.name == "resnet56"
    assert cfg.schedule.milestones == [10, 20]
    assert cfg.optim.momentum == 0.9 and cfg.train.iterations == 64000  # from the recipe
    assert cfg.optim.nesterov is False  # default


def test_every_builtin_recipe_loads() -> None:
    assert {"cifar-paper", "imagenet-paper", "fast", "finetune"} <= set(list_recipes())
    for name in list_recipes():
        load_config(name)


def test_unknown_key_names_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"optim\.lrr.*valid keys of optim: name, lr, momentum"):
        load_config("cifar-paper", ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown section 'optimizer'.*model, data, optim"):
        load_config(None, ["optimizer.lr=0.1", "train.epochs=1"])


def test_bad_types_and_choices_are_named() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size must be an integer, got 'big'"):
        load_config("fast", ["train.batch_size=big"])
    with pytest.raises(ConfigError, match=r"optim\.nesterov must be true or false"):
        load_config("fast", ["optim.nesterov=3"])
    with pytest.raises(ConfigError, match=r"schedule\.name must be one of"):
        load_config("fast", ["schedule.name=exponential"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("fast", ["lr=0.1"])
    with pytest.raises(ConfigError, match="unknown recipe 'fastest'"):
        load_config("fastest")


def test_recipe_file_with_unknown_key(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 2\n  batchsize: 64\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown setting train\.batchsize"):
        load_config(str(path))


def test_auto_precision_follows_the_machine(monkeypatch) -> None:
    """train.precision=auto: bf16 on CPUs with native bf16, fp32 on the others (read at run time)."""
    import torch

    import reslab.device as device

    assert load_config("fast", ["train.precision=auto"]).train.precision == "auto"
    monkeypatch.setattr(device, "native_bf16_supported", lambda: True)
    assert device.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(device, "native_bf16_supported", lambda: False)
    assert device.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert device.resolve_precision("fp32", torch.device("cpu")) == "fp32"
