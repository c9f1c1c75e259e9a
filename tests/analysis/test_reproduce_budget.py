"""`reslab reproduce --budget` (issue 23): one wall time shared by an experiment's runs.

The planning is a pure function of measured costs (`reslab.analysis.budget`), tested on given
costs; the wiring is tested end to end with the measurement replaced by fixed costs, so that the
decision does not depend on this machine's speed: it is recorded in experiment.json, every run
trains with it (its length, its curve points, the images each point uses, the last evaluation on
every image), and a second invocation measures nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from reslab.analysis.budget import MARGIN, MIN_EVAL_IMAGES, MIN_POINTS, NetCost, choose, makespan, predict
from reslab.cli import main
from reslab.errors import ConfigError
from reslab.train.budget import Speed
from reslab.train.loop import RunCost


def net(model: str, step_s: float, eval_s: float, images: int = 10_000, runs: int = 1) -> NetCost:
    return NetCost(model, runs, step_s, {"test": eval_s}, {"test": images}, save_s=0.0, start_s=3.0)


def test_makespan_packs_the_longest_runs_first() -> None:
    assert makespan([3.0, 2.0, 2.0, 1.0], 2) == 4.0
    assert makespan([3.0, 2.0, 2.0, 1.0], 1) == 8.0
    assert makespan([5.0, 1.0], 4) == 5.0


def test_the_most_iterations_that_fit() -> None:
    nets = [net("plain20", 0.05, 2.0), net("plain56", 0.15, 6.0)]
    choice = choose(600, nets, slots=2, train_images=5000, spent_s=10)
    assert choice.seconds <= 600 * (1 - MARGIN)
    assert predict(choice.iterations + 1, nets, 2, 5000, 10).seconds > 600 * (1 - MARGIN)
    assert choice.train_images == min(5000, choice.images)


def test_costly_evaluations_lose_images_then_points() -> None:
    """The issue's quick look: evaluating the whole 10,000-image test set at each point dominated."""
    cheap = choose(600, [net("resnet20", 0.05, 0.5)], slots=1, train_images=0, spent_s=5)
    assert (cheap.points, cheap.images) == (32, 10_000)  # cheap evaluations: every image, every point
    costly = choose(600, [net("resnet20", 0.05, 60.0)], slots=1, train_images=0, spent_s=5)
    assert costly.images == MIN_EVAL_IMAGES and MIN_POINTS <= costly.points < 32
    some = choose(600, [net("resnet20", 0.05, 8.0)], slots=1, train_images=0, spent_s=5)
    assert MIN_EVAL_IMAGES < some.images < 10_000 and some.points == 32


def test_a_budget_too_short_names_the_smallest_that_works() -> None:
    nets = [net("plain56", 0.5, 10.0, runs=2)]
    with pytest.raises(ConfigError, match=r"smallest budget that works is (\d+)s") as info:
        choose(60, nets, slots=1, train_images=0, spent_s=5)
    smallest = int(re.search(r"is (\d+)s", str(info.value)).group(1))
    assert choose(smallest, nets, slots=1, train_images=0, spent_s=5).iterations >= 100


@pytest.fixture
def fixed_costs(monkeypatch) -> list[str]:
    """reslab.train.loop.measure replaced by fixed costs: 0.5 s per step, 4 s per evaluation of
    the 1,200 test images (so the curve points must shrink); returns the models measured."""
    measured: list[str] = []

    def measure(cfg, seconds):
        measured.append(cfg.model.name)
        speed = Speed(step_s=0.5, eval_s=4.0, parts={"test": 4.0})
        return RunCost(speed, steps_per_epoch=125, part_images={"test": 1200})

    monkeypatch.setattr("reslab.train.loop.measure", measure)
    return measured


def test_budget_is_decided_once_recorded_and_followed_by_every_run(
    tmp_path: Path, fixed_costs: list[str], capsys
) -> None:
    out = tmp_path / "exp"
    args = ["reproduce", "degradation", "--data", "synthetic", "--depths", "8", "--budget", "280s", "--out", str(out)]
    args += ["--set", "data.synthetic_size=1200", "--set", "data.image_size=16", "--set", "train.batch_size=8"]
    assert main(args) == 0
    assert sorted(fixed_costs) == ["plain_cifar_8", "resnet_cifar_8"]  # each network measured once
    decision = json.loads((out / "experiment.json").read_text())["budget"]
    assert decision["eval_images"] == MIN_EVAL_IMAGES and decision["train_images"] == MIN_EVAL_IMAGES
    assert decision["budget"] == "280s" and decision["iterations"] >= 100
    assert decision["line"] in capsys.readouterr().err
    for run in ("plain_cifar_8-seed0", "resnet_cifar_8-seed0"):
        t = yaml.safe_load((out / "runs" / run / "config.yaml").read_text())["train"]
        assert (t["iterations"], t["eval_every"], t["eval_images"]) == (
            decision["iterations"],
            decision["eval_every"],
            MIN_EVAL_IMAGES,
        )
        records = [json.loads(line) for line in (out / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if "test_top1_error" in r]
        assert all(r["eval_images"] == MIN_EVAL_IMAGES for r in evals[:-1])
        assert "eval_images" not in evals[-1] and evals[-1]["step"] == decision["iterations"]  # the last: all
    results = json.loads((out / "results.json").read_text())
    assert results["iterations"] == decision["iterations"]

    fixed_costs.clear()
    assert main(args) == 0  # a second invocation: every run reused, nothing measured
    assert fixed_costs == [] and "decided when the experiment started" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budget", "40s", "--iterations", "5"], "not allowed with argument --budget"),
        (["--budget", "ten minutes"], "expected a duration such as 90s, 10m or 2h"),
        (["--budget", "1s"], "smallest budget that works is"),
    ],
)
def test_budget_mistakes_are_one_line(extra: list[str], message: str, tmp_path: Path, fixed_costs, capsys) -> None:
    out = tmp_path / "exp"
    args = ["reproduce", "degradation", "--data", "synthetic", "--depths", "8", "--out", str(out), *extra]
    try:
        status = main(args)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not out.exists()
