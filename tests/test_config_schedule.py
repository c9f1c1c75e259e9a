"""Config layering and validation, and the learning-rate schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest

from reslab.config import ScheduleConfig, list_recipes, load_config
from reslab.errors import ConfigError
from reslab.train.build import apply_depth_rules
from reslab.train.schedule import (
    ScheduleState,
    constant,
    cosine,
    linear,
    linear_warmup,
    lr_at,
    multistep,
    onecycle,
    step_decay,
)

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


# ---- Schedule functions against hand-computed values --------------------------------------------


def test_pure_schedule_functions() -> None:
    assert constant(123, 0.1) == 0.1
    assert step_decay(29, 0.1, 30, 0.1) == 0.1
    assert step_decay(30, 0.1, 30, 0.1) == pytest.approx(0.01)
    assert step_decay(65, 0.1, 30, 0.1) == pytest.approx(0.001)
    assert multistep(5, 0.1, [10, 20], 0.5) == 0.1
    assert multistep(10, 0.1, [10, 20], 0.5) == pytest.approx(0.05)
    assert multistep(25, 0.1, [10, 20], 0.5) == pytest.approx(0.025)
    assert cosine(0, 100, 0.1, 0.0) == pytest.approx(0.1)
    assert cosine(50, 100, 0.1, 0.0) == pytest.approx(0.05)
    assert cosine(25, 100, 0.1, 0.0) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert cosine(100, 100, 0.1, 0.01) == pytest.approx(0.01)
    assert linear(0, 10, 0.2, 0.0) == 0.2
    assert linear(5, 10, 0.2, 0.0) == pytest.approx(0.1)
    assert linear(10, 10, 0.2, 0.0) == 0.0
    # onecycle: 0.02 -> 0.2 over the first 25 of 100 steps, then down to 0 at step 100.
    assert onecycle(0, 100, 0.2, 0.02, 0.0, 0.25) == pytest.approx(0.02)
    assert onecycle(10, 100, 0.2, 0.02, 0.0, 0.25) == pytest.approx(0.02 + 0.18 * 10 / 25)
    assert onecycle(25, 100, 0.2, 0.02, 0.0, 0.25) == pytest.approx(0.2)
    assert onecycle(55, 100, 0.2, 0.02, 0.0, 0.25) == pytest.approx(0.2 - 0.2 * 30 / 75)
    assert onecycle(100, 100, 0.2, 0.02, 0.0, 0.25) == pytest.approx(0.0)
    assert linear_warmup(0, 10, 0.0, 0.1) == 0.0
    assert linear_warmup(5, 10, 0.0, 0.1) == pytest.approx(0.05)


def test_warmup_steps_then_schedule() -> None:
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, warmup_lr=0.01)
    assert lr_at(0, 100, cfg, 0.1) == pytest.approx(0.01)
    assert lr_at(5, 100, cfg, 0.1) == pytest.approx(0.01 + (cosine(5, 100, 0.1, 0.0) - 0.01) * 0.5)
    assert lr_at(10, 100, cfg, 0.1) == pytest.approx(cosine(10, 100, 0.1, 0.0))


def test_plateau_decays_after_patience() -> None:
    cfg = ScheduleConfig(name="plateau", patience=2, gamma=0.1)
    state = ScheduleState()
    for loss in (1.0, 0.9, 0.95, 0.95):  # improves twice, then two bad evaluations
        state.observe_eval(loss, cfg)
    assert state.plateau_decays == 1
    assert lr_at(1000, 10_000, cfg, 0.1, state) == pytest.approx(0.01)


# ---- The paper's CIFAR recipe ------------------------------------------------------------------


def test_cifar_paper_lr_at_the_papers_iterations() -> None:
    cfg = load_config("cifar-paper", ["model.name=resnet56"])
    apply_depth_rules(cfg)
    s, total = cfg.schedule, cfg.train.iterations
    assert total == 64000
    assert lr_at(0, total, s, cfg.optim.lr) == pytest.approx(0.1)
    assert lr_at(31_999, total, s, cfg.optim.lr) == pytest.approx(0.1)
    assert lr_at(32_000, total, s, cfg.optim.lr) == pytest.approx(0.01)
    assert lr_at(47_999, total, s, cfg.optim.lr) == pytest.approx(0.01)
    assert lr_at(48_000, total, s, cfg.optim.lr) == pytest.approx(0.001)
    assert lr_at(63_999, total, s, cfg.optim.lr) == pytest.approx(0.001)


def test_resnet110_warms_up_until_train_error_below_80_percent() -> None:
    cfg = load_config("cifar-paper", ["model.name=resnet110"])
    apply_depth_rules(cfg)
    s, state = cfg.schedule, ScheduleState()
    assert lr_at(0, 64000, s, 0.1, state) == pytest.approx(0.01)
    state.observe_train_error(350, 0.85, s)  # still above 80%: keep warming up
    assert lr_at(350, 64000, s, 0.1, state) == pytest.approx(0.01)
    state.observe_train_error(400, 0.79, s)  # below 80%: back to 0.1
    assert state.warmup_done_step == 400
    assert lr_at(401, 64000, s, 0.1, state) == pytest.approx(0.1)
    assert lr_at(32_000, 64000, s, 0.1, state) == pytest.approx(0.01)
    # Shallower nets start at 0.1 directly (paper: the warm-up is for ResNet-110).
    cfg56 = load_config("cifar-paper", ["model.name=resnet56"])
    apply_depth_rules(cfg56)
    assert lr_at(0, 64000, cfg56.schedule, 0.1, ScheduleState()) == pytest.approx(0.1)
