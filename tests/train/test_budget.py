"""Time budgets (train.budget, `reslab train --budget`): the plan is a pure function of measured
speeds; a budgeted run records its steps in config.yaml, resumes without measuring again and ends
bit-identical to an uninterrupted run of the same steps; a budget that fits no epoch, or a budget
beside --epochs, is one line."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_resume import finish, reslab, wait_for_checkpoint
from tiny_run import tiny_synthetic_args

from reslab.checkpoint import load_checkpoint
from reslab.cli import main
from reslab.config import budget_seconds, load_config
from reslab.errors import ConfigError
from reslab.rundir import RunDir
from reslab.train.budget import MARGIN, Speed, apply_budget, evaluations_of, plan_budget


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1.5h", 5400), ("300", 300), ("2 min", 120)])
def test_budget_durations(text: str, seconds: float) -> None:
    assert budget_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0s", "10d", "1e9h"])
def test_bad_budgets_are_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match="train.budget must be a duration"):
        budget_seconds(text)


def test_evaluations_follow_the_trainer_rule() -> None:
    assert evaluations_of(100, 10, 0) == 10  # each epoch end
    assert evaluations_of(105, 10, 0) == 11  # and once after a last step between two
    assert evaluations_of(100, 10, 30) == 4  # every 30 steps: 30, 60, 90 and the end
    assert evaluations_of(100, 10, -1) == 1


def budget_cfg(budget: str, **train: object):
    cfg = load_config("images", [f"train.budget={budget}", "train.epochs=0"])
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_the_plan_fills_the_budget_and_no_more() -> None:
    speed = Speed(step_s=0.1, eval_s=1.0, save_s=0.05, epoch_s=0.01)  # evaluations: 10% of an epoch
    cfg = budget_cfg("5m")
    plan = plan_budget(cfg, speed, steps_per_epoch=100, spent_s=10.0)
    used = 10.0 + speed.seconds(plan.steps, 100, plan.eval_every)
    assert used <= 300 * (1 - MARGIN) < 10.0 + speed.seconds(plan.steps + 1, 100, plan.eval_every)
    assert plan.eval_every == 0 and plan.evaluations == evaluations_of(plan.steps, 100, 0)  # epochs cheap to evaluate
    assert plan.line().startswith(f"budget 5m: {plan.steps:,} steps = {plan.steps / 100:.1f} epochs at 1,280 img/s")


def test_costly_evaluations_are_made_fewer() -> None:
    speed = Speed(step_s=0.01, eval_s=5.0)  # an epoch of 100 steps takes 1 s, an evaluation 5 s
    plan = plan_budget(budget_cfg("10m"), speed, steps_per_epoch=100, spent_s=0.0)
    assert plan.evaluations * speed.eval_s <= 0.15 * plan.steps * speed.step_s + speed.eval_s
    assert plan.eval_every % 100 == 0 and plan.eval_every > 100 and plan.steps > 10_000  # every k-th epoch end


def test_too_small_a_budget_names_the_smallest_that_works() -> None:
    speed = Speed(step_s=0.5, eval_s=3.0)
    with pytest.raises(ConfigError) as err:
        plan_budget(budget_cfg("30s"), speed, steps_per_epoch=100, spent_s=5.0)
    smallest = int(str(err.value).rsplit(" ", 1)[1].rstrip("s"))
    assert "too short for one epoch and one evaluation" in str(err.value) and "\n" not in str(err.value)
    plan = plan_budget(budget_cfg(f"{smallest}s"), speed, steps_per_epoch=100, spent_s=5.0)
    assert plan.steps >= 100


def test_the_schedule_is_fitted_to_the_steps_chosen() -> None:
    cfg = load_config("cifar-paper", ["train.budget=1h"])  # 64k iterations, lr /10 at 32k and 48k
    plan = plan_budget(cfg, Speed(step_s=0.1, eval_s=1.0), steps_per_epoch=352, spent_s=0.0)
    apply_budget(cfg, plan, steps_per_epoch=352)
    t = cfg.train
    assert (t.iterations, t.budget_steps, t.epochs) == (plan.steps, plan.steps, 0.0)
    assert cfg.schedule.milestones == [round(32000 * plan.steps / 64000), round(48000 * plan.steps / 64000)]


# ---- through the command line ------------------------------------------------------------------------


def test_budget_and_epochs_together_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", "synthetic", "--budget", "5m", "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "reslab train: error: --budget sets the run's length from the time it has: drop --epochs / --iterations"
    )


def test_a_budget_too_small_is_one_line(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    assert main(tiny_synthetic_args(tmp_path / "run", extra=("--budget", "1s"), iterations=None)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the smallest budget that works is" in err[0]


def test_kill_9_of_a_budgeted_run_resumes_without_measuring_and_matches(tmp_path: Path) -> None:
    args = tiny_synthetic_args(
        tmp_path / "run",
        "train.checkpoint_every=1",
        "optim.ema_decay=0.9",
        "model.drop_rate=0.3",
        iterations=None,
        model="wrn_10_1",
    )
    args = [a for a in args if a not in ("--run-dir", str(tmp_path / "run"))]
    run = tmp_path / "run"
    proc = reslab(*args, "--deterministic", "--budget", "12s", "--run-dir", str(run), cwd=tmp_path)
    wait_for_checkpoint(proc, run / "checkpoints", 6)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert saved["budget"] == "12s" and saved["iterations"] == saved["budget_steps"] > 6 and saved["epochs"] == 0

    rc, out = finish(reslab("train", "--resume", str(run), cwd=tmp_path))
    assert rc == 0, out[-3000:]
    assert "budget 12s" not in out and "measured" not in out  # the steps come from config.yaml
    assert yaml.safe_load((run / "config.yaml").read_text())["train"] == saved

    # The same steps, asked for as iterations: every weight and state equal, bit for bit.
    reference = tmp_path / "reference"
    steps = ["--iterations", str(saved["iterations"]), "--set", f"train.eval_every={saved['eval_every']}"]
    rc, out = finish(reslab(*args, "--deterministic", *steps, "--run-dir", str(reference), cwd=tmp_path))
    assert rc == 0, out[-3000:]
    a, b = load_file(str(run / "weights.safetensors")), load_file(str(reference / "weights.safetensors"))
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    x, y = (load_checkpoint(RunDir(r).list_checkpoints()[-1]) for r in (run, reference))
    assert x["state"] == y["state"] and all(torch.equal(x["ema"][k], y["ema"][k]) for k in y["ema"])
    evaluations = [
        [{k: v for k, v in r.items() if k == "step" or k.endswith(("error", "loss"))} for r in RunDir(d).read_metrics()]
        for d in (run, reference)
    ]
    assert evaluations[0] == evaluations[1] and len(evaluations[0]) >= 2


def test_eval_images_evaluates_a_fixed_subset_until_the_last_evaluation(tmp_path: Path) -> None:
    """train.eval_images: evaluations during training use a fixed random subset of each part, the
    last one (and so the summary) every image; the subset is the same for every run."""
    from reslab.data.array_dataset import ArrayDataset
    from reslab.data.batches import InMemoryEvalBatches
    from reslab.data.norm import NormStats
    from reslab.data.spec import EvalBatchSpec

    run = tmp_path / "run"
    args = tiny_synthetic_args(
        run, "data.synthetic_size=64", "train.eval_images=16", "train.eval_every=1", iterations=3
    )
    assert main(args) == 0
    records = [r for r in RunDir(run).read_metrics() if "test_top1_error" in r]
    assert [r.get("eval_images") for r in records] == [16, 16, None]
    assert all(round(r["test_top1_error"] * 16, 6).is_integer() for r in records[:2])
    assert RunDir(run).read_summary().final["test_top1_error"] == records[-1]["test_top1_error"]

    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    ds = ArrayDataset(images, torch.arange(100) % 10, [str(c) for c in range(10)], "t")
    stats = NormStats(torch.zeros(3, 1, 1), torch.ones(3, 1, 1))
    batches = InMemoryEvalBatches(ds, EvalBatchSpec(batch_size=8, device="cpu", stats=stats))
    first, again = batches.subset(30), batches.subset(30)
    assert torch.equal(first.labels, again.labels) and len(first.labels) == 30
    picked = [int(x) for x in first.images[:, 0, 0, 0]]  # image i is all i
    assert picked == sorted(picked) and len(set(picked)) == 30
    assert batches.subset(100) is batches


def test_eval_images_refuses_streamed_parts(tmp_path: Path, capsys) -> None:
    from tiny_run import tiny_run_args, tiny_tree

    tree = tiny_tree(tmp_path / "tree")
    streamed = ("data.in_memory=false", "data.augment=scale", "data.normalize=channel")
    args = tiny_run_args(tmp_path / "run", tree, *streamed, "train.eval_images=4")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.eval_images=4 takes a subset of in-memory parts" in err and "Traceback" not in err
