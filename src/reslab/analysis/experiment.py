"""Running an experiment: its settings and experiment.json, resuming, parallel training.

The directory's files are named by `reslab.expdir.ExperimentDir` (default runs/reproduce/
EXPERIMENT-DATA); an `Experiment` is one opened for this invocation: its name, settings and record.

Running an experiment again resumes it: a run with summary.json is reused, a run with
checkpoints but no summary.json continues from its newest checkpoint, the rest are trained.
`parallel` > 1 trains that many runs at once, each in its own `python -m reslab train`
process with an equal share of the cores (one run is spread over processes by torchrun instead).
"""

from __future__ import annotations

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
from typing import IO, Any

from reslab.errors import ConfigError, DataError, ReslabError
from reslab.expdir import ExperimentDir, ExperimentRecord, Invocation, Settings
from reslab.models import model_info
from reslab.rundir import RunDir

DEFAULT_ROOT = Path("runs") / "reproduce"


class RunFailedError(ReslabError):
    """One or more training runs of an experiment failed; the others are kept."""


FIXED = ("data", "epochs", "iterations", "budget", "overrides")
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
    # measure(cfg, seconds) -> reslab.train.loop.RunCost: a run's cost here, for --budget
    measure: Callable[..., Any] | None = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Experiment:
    """An experiment opened for this invocation: its directory, name, settings and experiment.json."""

    def __init__(self, folder: ExperimentDir, name: str, settings: Settings, record: ExperimentRecord) -> None:
        self.dir, self.name, self.settings, self.record = folder, name, settings, record
        self.command = ""  # the command line of this invocation, recorded by start()

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def runs_dir(self) -> Path:
        return self.dir.runs_dir

    @classmethod
    def open(cls, path: Path, name: str, explicit: dict[str, object], defaults: Settings) -> Experiment:
        """Open `path` for experiment `name` (new or existing) without writing anything yet; see
        start(). Settings: explicit > saved > defaults. A directory that holds another experiment,
        or something else, is an error."""
        folder = ExperimentDir(path)
        record = folder.read_record()
        carried: dict[str, object] = {}
        if record is None:
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise ConfigError(
                    f"{path} exists and is not a reslab experiment directory (no {folder.record_file.name}); "
                    "choose a new or empty directory with --out"
                )
            record = ExperimentRecord(experiment=name, created=_now())
        else:
            _check_resumable(folder, record, name, explicit)
            carried = {k: v for k, v in record.settings.to_dict().items() if k not in PER_INVOCATION}
        record.settings = Settings(**{**defaults.to_dict(), **carried, **explicit})
        return cls(folder, name, record.settings, record)

    def start(self) -> None:
        """Create the directory (once the experiment has checked its inputs) and record the command."""
        self.record.invocations.append(Invocation(time=_now(), command=self.command))
        self.save()

    def save(self) -> None:
        from reslab import __version__

        self.record.reslab_version = __version__
        self.dir.write_record(self.record)


def _check_resumable(folder: ExperimentDir, record: ExperimentRecord, name: str, explicit: dict[str, object]) -> None:
    """An existing experiment directory resumes only the same experiment under the same FIXED settings."""
    if record.experiment != name:
        raise ConfigError(
            f"{folder.path} belongs to the {record.experiment!r} experiment (see {folder.record_file}), not "
            f"{name!r}; choose another directory with --out (e.g. --out {DEFAULT_ROOT / name}), or delete "
            f"{folder.path} to start over"
        )
    saved = record.settings.to_dict()
    for key in FIXED:
        if key in explicit and explicit[key] != saved[key]:
            raise ConfigError(
                f"{folder.path} holds a {name} experiment with {key}={saved[key]!r}, but this command asks for "
                f"{key}={explicit[key]!r}; rerun with the same value (or leave it out) to resume it, "
                "or choose another --out for the new settings"
            )


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
    pool = _Subprocesses(runs_dir, states, parallel, threads=max(1, available_cores() // parallel))
    # Longest runs first (deepest nets): with K slots the last run to start is then a short one,
    # so the experiment ends close to (total work) / K instead of waiting on a deep net started last.
    pending = sorted(todo, key=lambda spec: -model_info(spec.model).depth)
    try:
        while pending or pool.running:
            while pending and len(pool.running) < parallel:
                pool.start(pending.pop(0))
            time.sleep(0.2)
            if not pool.reap():
                pending.clear()  # someone is stopping the experiment: start nothing new
    except KeyboardInterrupt:
        pool.terminate()
        raise
    pool.raise_for_outcome(len(todo))


@dataclass
class _Subprocesses:
    """Training runs in `python -m reslab train` processes, each with `threads` threads and its
    output in its run's train.log."""

    runs_dir: Path
    states: dict[str, str]  # run name -> its state before this invocation
    parallel: int
    threads: int
    running: list[tuple[RunSpec, subprocess.Popen, IO[bytes]]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "NAME (exit CODE: last line of its log)"
    stopped: list[str] = field(default_factory=list)  # stopped by a signal, checkpoint written

    def start(self, spec: RunSpec) -> None:
        run = RunDir(self.runs_dir / spec.name)
        threads = ["--set", f"train.threads={self.threads}"]
        if self.states[spec.name] == "partial":
            args = ["train", "--resume", str(run.path), *threads]
        else:
            _fresh(run.path)
            args = [*spec.train_args(run.path), "--no-progress", *threads]
        log = open(run.train_log, "ab")
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        proc = subprocess.Popen([sys.executable, "-m", "reslab", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.running.append((spec, proc, log))
        print(f"started {spec.name}: pid {proc.pid}, {self.threads} thread(s), log {run.train_log}", file=sys.stderr)

    def reap(self) -> bool:
        """Take in the runs that ended; False when one was stopped by a signal."""
        carry_on = True
        for item in list(self.running):
            spec, proc, log = item
            if proc.poll() is None:
                continue
            self.running.remove(item)
            log.close()
            if proc.returncode == 3:  # stopped by a signal after writing a checkpoint
                self.stopped.append(spec.name)
                carry_on = False
            elif proc.returncode != 0:
                tail = RunDir(self.runs_dir / spec.name).train_log.read_text(errors="replace").strip().splitlines()
                self.failed.append(f"{spec.name} (exit {proc.returncode}: {tail[-1] if tail else 'no output'})")
            else:
                print(f"finished {spec.name}", file=sys.stderr)
        return carry_on

    def terminate(self) -> None:
        """Each running run writes a checkpoint and exits; the next invocation resumes them."""
        for _, proc, _ in self.running:
            proc.send_signal(signal.SIGTERM)
        for _, proc, log in self.running:
            proc.wait()
            log.close()

    def raise_for_outcome(self, runs: int) -> None:
        """A stop by a signal is a KeyboardInterrupt (when nothing failed); failures a RunFailedError."""
        if self.stopped and not self.failed:
            print(
                f"stopped (checkpoint written): {', '.join(self.stopped)}; rerun the same command to resume",
                file=sys.stderr,
            )
            raise KeyboardInterrupt
        if self.failed:
            raise RunFailedError(
                f"{len(self.failed)} of {runs} runs failed: {'; '.join(self.failed)}; see each run's "
                "train.log. Finished runs are kept: rerun the same command to retry the others"
            )
