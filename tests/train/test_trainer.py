"""`Trainer` used directly: what it owns, what a run directory holds, and resume's content checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reslab.checkpoint import load_checkpoint, save_checkpoint
from reslab.config import load_config
from reslab.errors import CheckpointError, ConfigError
from reslab.rundir import RunDir
from reslab.train.distributed import Dist
from reslab.train.trainer import Trainer

SETTINGS = ["data.dataset=synthetic", "data.synthetic_size=32", "data.split=full", "model.name=resnet_cifar_8",
            "train.batch_size=8", "train.epochs=2", "train.iterations=0", "train.progress=false",
            "train.checkpoint_every=1", "train.keep_checkpoints=3", "optim.ema_decay=0.9"]  # fmt: skip


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))


def make_trainer(path: Path, *extra: str, resume: bool = False) -> Trainer:
    torch.manual_seed(0)
    cfg = load_config(None, [*SETTINGS, *extra])
    run = RunDir(path)
    run.path.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, run, Dist(), torch.device("cpu"), resume=resume)


def test_the_trainer_owns_its_run_and_writes_the_run_directory(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "run")
    assert (trainer.steps_per_epoch, trainer.total) == (4, 8)
    assert trainer.eval_model is trainer.ema.module  # evaluations and final weights use the EMA copy
    summary = trainer.fit()
    run = trainer.run
    assert summary["steps"] == 8 and trainer.state.step == 8 and trainer.state.epoch == 2
    assert [r["step"] for r in run.read_metrics()] == [4, 8]
    assert [RunDir.step_of(p) for p in run.list_checkpoints()] == [6, 7, 8]
    assert run.config.is_file() and run.weights.is_file() and json.loads(run.summary.read_text())["steps"] == 8


def test_a_checkpoint_restores_the_trainer_exactly(tmp_path: Path) -> None:
    first = make_trainer(tmp_path / "run")
    first.fit()
    newest = first.run.list_checkpoints()[-1]
    second = make_trainer(tmp_path / "run", resume=True)
    assert second.state.step == 8 and second.schedule.state == first.schedule.state
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()))
    assert load_checkpoint(newest)["state"]["step"] == 8


def test_resume_sets_aside_a_checkpoint_that_does_not_fit_and_falls_back(tmp_path: Path, capsys) -> None:
    """A checksum-valid checkpoint whose weights have other shapes is set aside; the previous one is used."""
    trainer = make_trainer(tmp_path / "run")
    trainer.fit()
    run = trainer.run
    newest = run.list_checkpoints()[-1]
    payload = load_checkpoint(newest)
    key = next(k for k in payload["model"] if k.endswith("conv1.weight"))
    payload["model"][key] = torch.zeros(1, 1, 1, 1)  # wrong shape; the checksum is rewritten to match
    save_checkpoint(run, RunDir.step_of(newest), payload, keep=0)
    resumed = make_trainer(tmp_path / "run", resume=True)
    assert resumed.state.step == 7
    err = capsys.readouterr().err
    assert "other shapes" in err and f"set aside damaged {newest.name}" in err
    assert newest.with_name(newest.name + ".damaged").exists()


def test_resume_with_no_usable_checkpoint_names_the_problem(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "run")
    trainer.fit()
    for path in trainer.run.list_checkpoints():
        payload = load_checkpoint(path)
        del payload["optimizer"]
        save_checkpoint(trainer.run, RunDir.step_of(path), payload, keep=0)
    with pytest.raises(CheckpointError, match="no usable checkpoint.*lacks the optimizer state"):
        make_trainer(tmp_path / "run", resume=True)


def test_the_ema_is_updated_every_nth_step(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path / "run", "optim.ema_every=3", "train.checkpoint_every=0")
    trainer.fit()
    assert trainer.state.step == 8 and int(trainer.ema.n_averaged) == 3  # after steps 0, 3 and 6 (not all 8)
    with pytest.raises(ConfigError, match=r"optim\.ema_every=3 needs an EMA"):
        load_config(None, ["optim.ema_every=3", "train.epochs=1"])


def test_accumulation_that_does_not_divide_the_batch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.accum_steps=3 does not divide the 8 images"):
        make_trainer(tmp_path / "run", "train.accum_steps=3")
    trainer = make_trainer(tmp_path / "ok", "train.accum_steps=4", "train.epochs=1", "train.checkpoint_every=0")
    assert trainer.settings.accum_steps == 4
    assert trainer.fit()["steps"] == 4  # step counting is per batch, not per micro-batch
