"""Experiment directories and their runs: experiment.json, resuming, parallel training.

Layout of an experiment directory (default runs/reproduce/EXPERIMENT-DATA):
    experiment.json     the experiment's name, its settings, and every command that ran it
    runs/NAME/          one training run each (reslab.train.loop's run directory)
    report.html, *.png, results.json

Running an experiment again resumes it: a run with summary.json is reused, a run with
checkpoints but no summary.json continues from its newest checkpoint, the rest are trained.
`parallel` > 1 trains that many runs at once, each in its own `python -m reslab train`
process with an equal share of the cores (one run is spread over processes by torchrun instead).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from reslab.atomic import atomic_write_bytes
from reslab.errors import ConfigError, DataError, ReslabError
from reslab.models import model_info
from reslab.rundir import RunDir

EXPERIMENT_FILE = "experiment.json"
DEFAULT_ROOT = Path("runs") / "reproduce"


class RunFailedError(ReslabError):
    """One or more training runs of an experiment failed; the others are kept."""


@dataclass
class Settings:
    """What an experiment was asked to do. The FIXED ones decide what each run trains, so an
    existing experiment directory only resumes under the same values."""

    data: str  # dataset name (cifar10, fashion-mnist, synthetic, imagefolder, ...)
    data_dir: str | None = None  # where the dataset files are
    seeds: int = 1  # runs per model, seeds 0 .. seeds-1
    epochs: float | None = None  # training length in epochs (converted to iterations)
    iterations: int | None = None  # training length in iterations
    depths: list[int] = field(default_factory=list)  # network depths
    overrides: list[str] = field(default_factory=list)  # --set section.key=value, applied last
    train_images: int = 5000  # degradation: training images for the training-error curve
    images: int = 1000  # layer-responses: test images whose responses are measured
    source: str | None = None  # layer-responses: an experiment directory whose runs to analyse
    runs: list[str] = field(default_factory=list)  # layer-responses: run directories
    weights: list[str] = field(default_factory=list)  # imagenet-table: [NAME=]PATH
    batch_size: int = 32  # imagenet-table: images per evaluation batch
    compare: str | None = None  # degradation: another schedule's experiment (or its results.json) drawn beside

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIXED = ("data", "epochs", "iterations", "overrides")
# What only this invocation's report shows: recorded, but not carried over to the next invocation
# (a --compare folder may be gone or elsewhere by then).
PER_INVOCATION = ("compare",)


@dataclass
class Execution:
    """How to run an experiment, not what it is (not saved, free to change between invocations)."""

    parallel: int = 1  # training runs at once, each in its own process
    workers: int = 2  # DataLoader workers (imagenet-table)
    device: str = "auto"  # device for evaluations (auto: cuda if available)
    # How a run trains in this process: train(cfg, run_dir, resume=...) -> summary and
    # resolve_resume(run_dir, overrides) -> cfg, from reslab.train.loop. The command line passes
    # them in; the analysis does not import the training package.
    train: Callable[..., dict[str, Any]] | None = None
    resolve_resume: Callable[..., Any] | None = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ExperimentDir:
    """An experiment's directory and its experiment.json."""

    def __init__(self, path: Path, name: str, settings: Settings, record: dict[str, Any]) -> None:
        self.path, self.name, self.settings, self.record = path, name, settings, record
        self.command = ""  # the command line of this invocation, recorded by start()

    @classmethod
    def open(cls, path: Path, name: str, explicit: dict[str, Any], defaults: Settings) -> ExperimentDir:
        """Open `path` for experiment `name` (new or existing) without writing anything yet; see
        start(). Settings: explicit > saved > defaults. A directory that holds another experiment,
        or something else, is an error."""
        file = path / EXPERIMENT_FILE
        saved: dict[str, Any] = {}
        record: dict[str, Any] = {"experiment": name, "created": _now(), "invocations": []}
        if file.is_file():
            try:
                record = json.loads(file.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{file} is damaged ({exc}); repair it or choose another --out") from None
            if record.get("experiment") != name:
                raise ConfigError(
                    f"{path} belongs to the {record.get('experiment')!r} experiment (see {file}), not {name!r}; "
                    f"choose another directory with --out (e.g. --out {DEFAULT_ROOT / name}), or delete {path} "
                    "to start over"
                )
            saved = record.get("settings", {})
            for key in FIXED:
                if key in explicit and key in saved and explicit[key] != saved[key]:
                    raise ConfigError(
                        f"{path} holds a {name} experiment with {key}={saved[key]!r}, but this command asks for "
                        f"{key}={explicit[key]!r}; rerun with the same value (or leave it out) to resume it, "
                        "or choose another --out for the new settings"
                    )
        elif path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(
                f"{path} exists and is not a reslab experiment directory (no {EXPERIMENT_FILE}); "
                "choose a new or empty directory with --out"
            )
        carried = {k: v for k, v in saved.items() if k in defaults.to_dict() and k not in PER_INVOCATION}
        merged = {**defaults.to_dict(), **carried, **explicit}
        settings = Settings(**merged)
        record["settings"] = settings.to_dict()
        return cls(path, name, settings, record)

    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    def start(self) -> None:
        """Create the directory (once the experiment has checked its inputs) and record the command."""
        self.record.setdefault("invocations", []).append({"time": _now(), "command": self.command})
        self.save()

    def save(self) -> None:
        from reslab import __version__

        self.path.mkdir(parents=True, exist_ok=True)
        self.record["reslab_version"] = __version__
        atomic_write_bytes(self.path / EXPERIMENT_FILE, json.dumps(self.record, indent=2).encode())


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


# ---- Runs ----------------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """One training run of an experiment: a recipe plus --set overrides (model, seed, length...)."""

    name: str  # directory name under runs/, e.g. "plain56-seed0"
    model: str
    seed: int
    recipe: str
    overrides: list[str]

    def train_args(self, run_dir: Path) -> list[str]:
        sets = [arg for o in self.overrides for arg in ("--set", o)]
        return ["train", "--recipe", self.recipe, "--run-dir", str(run_dir), *sets]

    def command(self, run_dir: Path) -> str:
        """The equivalent `reslab train` command line (for the report)."""
        return shlex.join(["reslab", *self.train_args(run_dir)])


def train_runs(specs: list[RunSpec], runs_dir: Path, execution: Execution) -> dict[str, str]:
    """Train what is not finished yet; returns {run name: state before this call}."""
    parallel = execution.parallel
    states = {s.name: RunDir(runs_dir / s.name).state() for s in specs}
    counts = {k: sum(v == k for v in states.values()) for k in ("finished", "partial", "new")}
    print(
        f"{len(specs)} runs: {counts['finished']} finished (reused), {counts['partial']} to resume, "
        f"{counts['new']} to train" + (f", {parallel} at a time" if parallel > 1 and len(specs) > 1 else ""),
        file=sys.stderr,
    )
    todo = [s for s in specs if states[s.name] != "finished"]
    if parallel > 1 and len(todo) > 1:
        _train_in_subprocesses(todo, runs_dir, states, parallel)
    else:
        _train_here(todo, runs_dir, states, execution)
    return states


def _fresh(run_dir: Path) -> None:
    """A run that never wrote a checkpoint starts over (its metrics.jsonl would be appended to)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)


def _train_here(todo: list[RunSpec], runs_dir: Path, states: dict[str, str], execution: Execution) -> None:
    from reslab.config import load_config

    train, resolve_resume = execution.train, execution.resolve_resume
    if train is None or resolve_resume is None:
        raise RuntimeError("Execution.train and Execution.resolve_resume are needed to train in this process")

    failed = []
    for spec in todo:
        run_dir = runs_dir / spec.name
        resume = states[spec.name] == "partial"
        print(f"{'resuming' if resume else 'training'} {spec.name}", file=sys.stderr)
        try:
            if resume:
                # Threads as a fresh run here would have them (a run started by --parallel K had fewer).
                summary = train(resolve_resume(run_dir, ["train.threads=0"]), run_dir, resume=True)
            else:
                cfg = load_config(spec.recipe, spec.overrides)
                _fresh(run_dir)
                summary = train(cfg, run_dir)
        except (ConfigError, DataError):
            raise  # the same mistake would fail every run
        except ReslabError as exc:  # e.g. a diverged run: keep going with the others
            failed.append(f"{spec.name}: {exc}")
            continue
        if "stopped" in summary:
            raise KeyboardInterrupt
    if failed:
        raise RunFailedError(
            f"{len(failed)} of {len(todo)} runs failed ({'; '.join(failed)}); the finished runs "
            "are kept: fix the cause and rerun the same command to resume"
        )


def _train_in_subprocesses(todo: list[RunSpec], runs_dir: Path, states: dict[str, str], parallel: int) -> None:
    threads = max(1, available_cores() // parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # Longest runs first (deepest nets): with K slots the last run to start is then a short one,
    # so the experiment ends close to (total work) / K instead of waiting on a deep net started last.
    pending = sorted(todo, key=lambda spec: -model_info(spec.model).depth)
    running, failed, stopped = [], [], []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                spec = pending.pop(0)
                run_dir = runs_dir / spec.name
                if states[spec.name] == "partial":
                    args = ["train", "--resume", str(run_dir), "--set", f"train.threads={threads}"]
                else:
                    _fresh(run_dir)
                    args = [*spec.train_args(run_dir), "--no-progress", "--set", f"train.threads={threads}"]
                log = open(RunDir(run_dir).train_log, "ab")
                proc = subprocess.Popen(
                    [sys.executable, "-m", "reslab", *args], stdout=log, stderr=subprocess.STDOUT, env=env
                )
                running.append((spec, proc, log))
                print(
                    f"started {spec.name}: pid {proc.pid}, {threads} thread(s), log {RunDir(run_dir).train_log}",
                    file=sys.stderr,
                )
            time.sleep(0.2)
            for item in list(running):
                spec, proc, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                log.close()
                if proc.returncode == 3:  # stopped by a signal after writing a checkpoint
                    stopped.append(spec.name)
                    pending.clear()  # someone is stopping the experiment: start nothing new
                elif proc.returncode != 0:
                    tail = RunDir(runs_dir / spec.name).train_log.read_text(errors="replace").strip().splitlines()
                    failed.append(f"{spec.name} (exit {proc.returncode}: {tail[-1] if tail else 'no output'})")
                else:
                    print(f"finished {spec.name}", file=sys.stderr)
    except KeyboardInterrupt:
        for _, proc, _ in running:  # each writes a checkpoint and exits; the next call resumes
            proc.send_signal(signal.SIGTERM)
        for _, proc, log in running:
            proc.wait()
            log.close()
        raise
    if stopped and not failed:
        print(f"stopped (checkpoint written): {', '.join(stopped)}; rerun the same command to resume", file=sys.stderr)
        raise KeyboardInterrupt
    if failed:
        raise RunFailedError(
            f"{len(failed)} of {len(todo)} runs failed: {'; '.join(failed)}; see each run's "
            "train.log. Finished runs are kept: rerun the same command to retry the others"
        )
