"""The learning-rate schedules against hand-computed values, and the `Schedule` object."""

from __future__ import annotations

import math

import pytest

from reslab.config import ScheduleConfig, load_config
from reslab.errors import ConfigError
from reslab.train.build import apply_depth_rules
from reslab.train.schedule import (
    Schedule,
    ScheduleState,
    constant,
    cosine,
    linear,
    linear_warmup,
    lr_at,
    multistep,
    onecycle,
    step_decay,
    warmup_steps_of,
)

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


def test_warmup_epochs_become_steps_when_the_schedule_is_bound() -> None:
    cfg = ScheduleConfig(name="cosine", warmup_epochs=2.5, warmup_lr=0.01)
    schedule = Schedule(cfg, 0.1, 1000, steps_per_epoch=40)  # 2.5 epochs of 40 steps = 100 steps
    by_steps = ScheduleConfig(name="cosine", warmup_steps=100, warmup_lr=0.01)
    steps = (0, 50, 99, 100, 500)
    assert [schedule.lr(s) for s in steps] == [lr_at(s, 1000, by_steps, 0.1) for s in steps]
    assert schedule.lr(50) == pytest.approx(0.01 + (cosine(50, 1000, 0.1, 0.0) - 0.01) * 0.5)
    assert warmup_steps_of(ScheduleConfig(warmup_epochs=0.001), 40) == 1  # a warm-up asked for is never 0 steps
    assert warmup_steps_of(ScheduleConfig(warmup_steps=7), 40) == 7
    with pytest.raises(ValueError, match="steps_per_epoch"):
        lr_at(0, 1000, cfg, 0.1)  # unbound: the epoch's length is unknown
    with pytest.raises(ValueError, match="steps_per_epoch"):
        Schedule(cfg, 0.1, 1000)


def test_warmup_set_twice_or_under_onecycle_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"warmup_steps=10 and schedule\.warmup_epochs=2 both set the warm-up"):
        load_config("fast", ["schedule.name=cosine", "schedule.warmup_steps=10", "schedule.warmup_epochs=2"])
    with pytest.raises(ConfigError, match="onecycle rises from warmup_lr"):
        load_config("fast", ["schedule.warmup_epochs=1"])  # fast.yaml's schedule is onecycle
    assert load_config("fast", ["schedule.name=cosine", "schedule.warmup_epochs=1"]).schedule.warmup_epochs == 1


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


def test_the_schedule_object_binds_its_settings_once() -> None:
    cfg = load_config("cifar-paper", ["model.name=resnet110"])
    apply_depth_rules(cfg)
    schedule = Schedule(cfg.schedule, cfg.optim.lr, 64_000)
    assert schedule.lr(0) == lr_at(0, 64_000, cfg.schedule, cfg.optim.lr, ScheduleState()) == pytest.approx(0.01)
    assert schedule.watches_train_error
    schedule.observe_train_error(10, 0.5)
    assert not schedule.watches_train_error and schedule.lr(11) == pytest.approx(0.1)
    restored = Schedule(cfg.schedule, cfg.optim.lr, 64_000)
    restored.load_state_dict(schedule.state_dict())
    assert restored.state == schedule.state and restored.lr(40_000) == pytest.approx(0.01)
