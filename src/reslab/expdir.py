"""An experiment's directory (`reslab reproduce`): every file name of an experiment is spelled here, once.

    experiment.json       which experiment, its settings, every command that ran it, each run's command
                          (`ExperimentRecord`)
    runs/NAME/            one training run each (`reslab.rundir.RunDir`)
    results.json          the experiment's numbers (an `ExperimentResults` of the experiment's kind)
    report.html, report.md   the report page and its Markdown twin (written together by the page)
    fig6_plain_vs_resnet.png, fig1_plain_train_test.png, fig_schedules.png      degradation
    table6_error_vs_depth.png, table6_test_curves.png                           cifar10-table6
    fig7_layer_responses.png                                                    layer-responses
    evals/NAME.json       imagenet-table: the saved evaluation of one weights file

The files are dataclasses of `reslab.records`: the experiment fills one, `ExperimentDir` writes
it, and whoever reads the file back parses it into the same type, with a one-line error naming
the file when it is damaged.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from reslab.atomic import atomic_write_bytes
from reslab.errors import ConfigError
from reslab.records import checked, dumps, load_record, optional
from reslab.rundir import CONFIG_FILE, REPORT_FILE, RESULTS_FILE, RunDir

RECORD_FILE, RUNS_DIR, EVALS_DIR = "experiment.json", "runs", "evals"
FIG6, FIG1, FIG_SCHEDULES = "fig6_plain_vs_resnet.png", "fig1_plain_train_test.png", "fig_schedules.png"
TABLE6_VS_DEPTH, TABLE6_CURVES = "table6_error_vs_depth.png", "table6_test_curves.png"
FIG7 = "fig7_layer_responses.png"
MAX_LENGTH = 10**8  # iterations (or epochs) a file may ask for: more is a damaged file


@dataclass(kw_only=True)
class Settings:
    """What an experiment was asked to do. The FIXED ones (reslab.analysis.experiment) decide what
    each run trains, so an existing experiment directory only resumes under the same values."""

    data: str = ""  # dataset name (cifar10, fashion-mnist, synthetic, imagefolder, ...)
    data_dir: str | None = None  # where the dataset files are
    seeds: int = 1  # runs per model, seeds 0 .. seeds-1
    epochs: float | None = checked(lambda e: 0 < e <= MAX_LENGTH, "is not a positive number", default=None)
    iterations: int | None = None  # training length in iterations
    budget: str | None = None  # wall time of the whole experiment ("30m"): its runs share it (--budget)
    depths: list[int] = field(default_factory=list)  # network depths
    overrides: list[str] = field(default_factory=list)  # --set section.key=value, applied last
    train_images: int = 5000  # degradation: training images for the training-error curve
    images: int = 1000  # layer-responses: test images whose responses are measured
    source: str | None = None  # layer-responses: an experiment directory whose runs to analyse
    runs: list[str] = field(default_factory=list)  # layer-responses: run directories
    weights: list[str] = field(default_factory=list)  # imagenet-table: [NAME=]PATH
    batch_size: int = 32  # imagenet-table: images per evaluation batch
    compare: str | None = None  # degradation: another schedule's experiment (or its results.json) drawn beside

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class Invocation:
    time: str  # ISO 8601 with the time zone, to the second
    command: str  # the canonical `reslab reproduce` command line


@dataclass(kw_only=True)
class BudgetDecision:
    """What an experiment's --budget came to (reslab.analysis.plan.fit_budget), decided once: a
    later invocation trains and resumes the runs with the same numbers, and measures nothing."""

    budget: str  # as given ("30m")
    iterations: int  # of every run
    eval_every: int  # iterations between curve points
    eval_images: int  # images of each part a curve point uses (0 = all); the last evaluation uses all
    train_images: int  # degradation: training images of the training-error curve
    line: str  # what was said when it was decided


@dataclass(kw_only=True)
class ExperimentRecord:
    """experiment.json."""

    experiment: str  # the experiment's name (degradation, cifar10-table6, ...)
    created: str = ""
    invocations: list[Invocation] = field(default_factory=list)  # oldest first; later ones resumed
    settings: Settings = field(default_factory=Settings)
    runs: dict[str, str] | None = optional()  # training experiments: run name -> its `reslab train` command
    budget: BudgetDecision | None = optional()  # what --budget came to (training experiments)
    reslab_version: str = ""


@dataclass(kw_only=True)
class Claim:
    """One of the paper's claims, our numbers and whether they bear it out."""

    claim: str
    reproduced: bool
    detail: str


@dataclass(kw_only=True)
class RunResult:
    """A training experiment's run in its results.json: which, and its last evaluation."""

    name: str  # directory name under runs/
    model: str
    seed: int
    final: dict[str, float | str]  # summary.json's final evaluation (unfinished: metrics.jsonl's last, notes too)


@dataclass(kw_only=True)
class ExperimentResults:
    """results.json: every experiment's results begin with its name; each experiment's own type
    (reslab.analysis: `DegradationResults`, `Table6Results`, ...) adds its numbers."""

    experiment: str


class ExperimentDir:
    """The files of one experiment directory (which may not exist yet)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ExperimentDir({str(self.path)!r})"

    @property
    def record_file(self) -> Path:
        return self.path / RECORD_FILE

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def runs_dir(self) -> Path:
        return self.path / RUNS_DIR

    def run(self, name: str) -> RunDir:
        return RunDir(self.runs_dir / name)

    def figure(self, name: str) -> Path:
        """A figure of the report (FIG6, TABLE6_CURVES, ...): beside the page, which links it."""
        return self.path / name

    def eval_cache(self, label: str) -> Path:
        """imagenet-table: evals/LABEL.json, the label made safe as a file name."""
        return self.path / EVALS_DIR / (re.sub(r"[^A-Za-z0-9_.-]+", "_", label) + ".json")

    def holds_experiment(self) -> bool:
        return self.record_file.is_file()

    def list_runs(self) -> list[RunDir]:
        """The run directories under runs/ (those with a config.yaml), by name."""
        if not self.runs_dir.is_dir():
            return []
        return [RunDir(d) for d in sorted(self.runs_dir.iterdir()) if (d / CONFIG_FILE).is_file()]

    def read_record(self) -> ExperimentRecord | None:
        """experiment.json, or None when there is none; a damaged file is a ConfigError naming it."""
        return load_record(ExperimentRecord, self.record_file, ConfigError, "repair it or choose another --out")

    def write_record(self, record: ExperimentRecord) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.record_file, dumps(record, indent=2))

    def write_results(self, results: ExperimentResults) -> None:
        atomic_write_bytes(self.results, dumps(results))
