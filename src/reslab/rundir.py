"""A training run's directory: every file name of a run is spelled here, once.

    config.yaml           the resolved configuration
    metrics.jsonl         one JSON line per evaluation
    tb/                   TensorBoard event files
    checkpoints/          ckpt-STEP.pt (+ .sha256), newest K kept; *.damaged: set aside by a resume
    weights.safetensors   final weights with preprocessing and metrics (for eval/predict/export);
                          under train.keep=best those of the best evaluation
    best.safetensors      train.keep=best: the weights of the best evaluation so far, written when it happens
    summary.json          final metrics, wall time, software and hardware
    train_error.json      training-set error curve from the checkpoints (`reslab reproduce`)
    train.log             output of a run trained in a subprocess (`reslab reproduce --parallel`)
    report.html, report.md, error_curves.png, results.json   the run's report (`reslab reproduce`)
    eval-DATASET/         what `reslab eval` writes for these weights

Training (`reslab.train`), checkpoints (`reslab.checkpoint`), evaluation and the analysis read
and write runs through `RunDir`; none of them names a file of a run itself. summary.json is a
`RunSummary`: the trainer fills it, `RunDir.write_summary` writes it and every reader gets it back
from `RunDir.read_summary` (see reslab.records).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from reslab.atomic import atomic_write_bytes, remove_stale_temps
from reslab.config import Config, config_from_dict
from reslab.errors import ConfigError
from reslab.records import dumps, load_record, optional

RunState = Literal["finished", "partial", "new"]

CONFIG_FILE, METRICS_FILE, TENSORBOARD_DIR = "config.yaml", "metrics.jsonl", "tb"
# Also the folder torch.hub downloads weights into (torch.hub.get_dir()/checkpoints, train/pretrained.py).
CHECKPOINTS_DIR = "checkpoints"
WEIGHTS_FILE, BEST_WEIGHTS_FILE = "weights.safetensors", "best.safetensors"
SUMMARY_FILE, TRAIN_ERROR_FILE, TRAIN_LOG_FILE = "summary.json", "train_error.json", "train.log"
# A report's files, of a run and of an experiment (reslab.expdir): the page (and its .md beside
# it), the numbers, and a run report's figure.
REPORT_FILE, RESULTS_FILE, CURVES_FIGURE = "report.html", "results.json", "error_curves.png"
# K-fold cross-validation (`reslab train --folds K`): RUN/folds.json, and each fold a run of its own.
FOLDS_FILE, FOLD_PREFIX = "folds.json", "fold-"
CHECKPOINT_PREFIX, CHECKPOINT_SUFFIX = "ckpt-", ".pt"
DIGEST_SUFFIX = ".sha256"
DAMAGED_SUFFIX = ".damaged"


# ---- summary.json --------------------------------------------------------------------------------

Metrics = dict[str, float]  # an evaluation record: {"step": 400, "test_top1_error": 0.0875, ...}
MetricsRecord = dict[str, float | str]  # a line of metrics.jsonl: an evaluation, and RunLog's notes


@dataclass(kw_only=True)
class KeptWeights:
    """Which weights the run ended with (train.keep) and their evaluation on the watched part."""

    keep: str  # "last" or "best"
    step: int  # the step whose weights were kept
    part: str | None  # the watched part ("val", "test"); None or "" when nothing is evaluated
    top1_error: float | None = optional()  # on `part`; absent when nothing is watched
    evaluation: Metrics = field(default_factory=dict)  # the whole evaluation of the kept weights


@dataclass(kw_only=True)
class ClassWeights:
    """optim.class_weights: the loss weight of each class and the counts it came from."""

    mode: str
    class_counts: list[int]
    weights: list[float]


@dataclass(kw_only=True)
class StoppedEarly:
    """train.early_stop ended the run before its last step."""

    step: int
    evaluations_without_improvement: int
    early_stop: int


@dataclass(kw_only=True)
class Distributed:
    """A run over several processes (torchrun) and whether they ended with the same weights."""

    world_size: int
    backend: str
    weights_sha256_per_rank: list[str] | None = None


@dataclass(kw_only=True)
class Calibrated:
    """train.calibrate: the temperature fitted on the val part at the end, and what it did."""

    temperature: float
    images: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float


@dataclass(kw_only=True)
class FlipDecision:
    """train.tta_flip at the end of a run: flip TTA kept in the weights only where it lowered the
    val error of the kept weights (errors as fractions, on `images` val images)."""

    kept: bool
    images: int
    val_error: float  # the images as they are
    val_error_flip_tta: float  # the mean of each image's and its mirror's logits
    val_error_mirrored: float  # the mirror images alone


@dataclass(kw_only=True)
class RunSummary:
    """summary.json: what the run did, what it kept, and on what. Written once, at the end of a
    run, after its weights; keys an older reslab did not write read as their defaults."""

    run_dir: str = ""
    model: str
    dataset: str
    synthetic_data: bool = False
    steps: int  # steps trained
    total_steps: int | None = optional()  # steps planned (more than `steps` when stopped early)
    epochs: float | None = optional()
    wall_time_s: float | None = optional()  # seconds, this process (a resumed run: since the resume)
    final: Metrics  # the last evaluation
    kept: KeptWeights | None = optional()  # the evaluation of the weights the run ended with
    skipped_steps: int = 0  # steps skipped for a non-finite loss
    class_weights: str | ClassWeights = "none"
    environment: dict[str, str | int | float | None] = field(default_factory=dict)  # machine.environment()
    stopped_early: StoppedEarly | None = optional()
    distributed: Distributed | None = optional()
    calibrated: Calibrated | None = optional()
    flip_tta: FlipDecision | None = optional()

    @property
    def total(self) -> int:
        """The steps the run was planned for (an older summary.json: the steps trained)."""
        return self.total_steps if self.total_steps is not None else self.steps


@dataclass(kw_only=True)
class FoldStats:
    """One number of every fold's kept evaluation: its mean and sample standard deviation."""

    mean: float
    std: float | None  # None with a single fold finished


@dataclass(kw_only=True)
class FoldsSummary:
    """folds.json of a K-fold run: how many folds, and once they are finished, every metric of
    their kept evaluations per fold and as mean and sample std over the folds."""

    folds: int
    seed: int
    finished: list[int] = field(default_factory=list)  # the folds whose runs ended (1-based)
    per_fold: dict[str, Metrics] = field(default_factory=dict)  # "fold-1" -> its kept evaluation
    stats: dict[str, FoldStats] = field(default_factory=dict)  # metric -> over the finished folds
    ensemble: bool = False  # --ensemble: the K networks are kept as one weights set (RUN/weights.safetensors)
    # the ensemble's own evaluation on the test part, once written: test_top1_error, ...
    ensemble_metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class ReportFiles:
    """A report on runs: the page (its Markdown twin beside it), its figure and its numbers."""

    page: Path
    figure: Path
    results: Path

    @classmethod
    def named_after(cls, page: Path) -> ReportFiles:
        """`reslab report --out DIR/NAME.html`: DIR/NAME_error_curves.png and DIR/NAME_results.json."""
        return cls(page, page.with_name(f"{page.stem}_{CURVES_FIGURE}"), page.with_name(f"{page.stem}_{RESULTS_FILE}"))


class RunDir:
    """The files of one run directory (which may not exist yet)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def new_path(cls, out_dir: str | Path, model: str, dataset: str) -> RunDir:
        """OUT_DIR/YYYYMMDD-HHMMSS-MODEL-DATASET, the default for a new run."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return cls(Path(out_dir) / f"{stamp}-{model}-{dataset}")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # ---- files ---------------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def best_weights(self) -> Path:
        return self.path / BEST_WEIGHTS_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def train_error(self) -> Path:
        return self.path / TRAIN_ERROR_FILE

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def report_files(self) -> ReportFiles:
        """The run's own report (`reslab reproduce`): report.html, error_curves.png, results.json."""
        return ReportFiles(self.report, self.path / CURVES_FIGURE, self.path / RESULTS_FILE)

    @property
    def folds_file(self) -> Path:
        return self.path / FOLDS_FILE

    def fold(self, k: int) -> RunDir:
        """The run of fold k (1-based) of a K-fold run: RUN/fold-k."""
        return RunDir(self.path / f"{FOLD_PREFIX}{k}")

    def read_folds(self) -> FoldsSummary | None:
        """folds.json (None: not a K-fold run); a damaged file is a ConfigError naming it."""
        return load_record(FoldsSummary, self.folds_file, ConfigError, "repair or delete it")

    def write_folds(self, folds: FoldsSummary) -> None:
        atomic_write_bytes(self.folds_file, dumps(folds, indent=2))

    def eval_dir(self, dataset: str) -> Path:
        return self.path / f"eval-{dataset}"

    # ---- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self, step: int) -> Path:
        """checkpoints/ckpt-00001234.pt: the zero-padded step makes name order step order."""
        return self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:08d}{CHECKPOINT_SUFFIX}"

    @staticmethod
    def digest_of(checkpoint: Path) -> Path:
        """The checksum file beside a checkpoint: ckpt-00001234.pt.sha256."""
        return checkpoint.with_name(checkpoint.name + DIGEST_SUFFIX)

    @staticmethod
    def step_of(checkpoint: Path) -> int:
        return int(checkpoint.name[len(CHECKPOINT_PREFIX) : -len(CHECKPOINT_SUFFIX)])

    def list_checkpoints(self) -> list[Path]:
        """Checkpoints oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}"))

    def remove_checkpoint(self, checkpoint: Path) -> None:
        checkpoint.unlink(missing_ok=True)
        self.digest_of(checkpoint).unlink(missing_ok=True)

    def set_aside(self, checkpoint: Path) -> None:
        """Rename a checkpoint and its checksum to *.damaged, so no resume tries it again."""
        for f in (checkpoint, self.digest_of(checkpoint)):
            if f.exists():
                f.replace(f.with_name(f.name + DAMAGED_SUFFIX))

    def remove_stale_temps(self) -> list[Path]:
        """Remove what writes cut short by a kill left: temp files of atomic writes (run directory
        and checkpoints/) and checksum files whose checkpoint never landed. Only while no other
        process writes to this run."""
        removed = [p for d in (self.path, self.checkpoints_dir) for p in remove_stale_temps(d)]
        if self.checkpoints_dir.is_dir():
            for digest in self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}{DIGEST_SUFFIX}"):
                if self._cut_short(digest):
                    digest.unlink(missing_ok=True)
                    removed.append(digest)
        return removed

    @staticmethod
    def _cut_short(path: Path) -> bool:
        """True for what a write cut short leaves in checkpoints/: the temp file of an atomic write,
        or a checksum file whose checkpoint never landed."""
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            return True
        return (
            path.name.endswith(CHECKPOINT_SUFFIX + DIGEST_SUFFIX)
            and not path.with_name(path.name[: -len(DIGEST_SUFFIX)]).exists()
        )

    # ---- state ---------------------------------------------------------------------------------

    def state(self) -> RunState:
        """finished: summary.json and weights.safetensors exist (written last, in this order; a run
        whose weights were deleted since is resumed to write them again); partial: checkpoints to
        resume from; new: anything else."""
        if self.summary.is_file() and self.weights.is_file():
            return "finished"
        return "partial" if self.list_checkpoints() else "new"

    def holds_run(self) -> bool:
        """True when a run has written checkpoints here (so starting another would mix two runs).
        What a write cut short by a kill left (see `remove_stale_temps`) does not count."""
        return self.checkpoints_dir.is_dir() and any(not self._cut_short(p) for p in self.checkpoints_dir.iterdir())

    def read_config(self) -> dict[str, Any]:
        """config.yaml as a mapping; a ConfigError names the file when it is missing or damaged."""
        if not self.config.is_file():
            raise ConfigError(f"{self.path} is not a reslab run directory (no {self.config.name})")
        try:
            settings = yaml.safe_load(self.config.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
            # PyYAML's constructors raise ValueError/KeyError for scalars that match a type's
            # pattern but not its values (a date like 2020-13-45); deep nesting hits the recursion limit.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{self.config} is damaged ({first}); repair it or start a new run") from None
        if not isinstance(settings, dict):
            raise ConfigError(f"{self.config} must be a mapping of sections, got {type(settings).__name__}")
        return settings

    def load_config(self) -> Config:
        """config.yaml as a `Config` (not validated); every error names the file."""
        return config_from_dict(self.read_config(), str(self.config))

    def read_summary(self) -> RunSummary | None:
        """summary.json, or None while the run is not finished; a damaged or hand-edited file is a
        ConfigError naming it."""
        hint = f"repair it, or delete it and resume the run to write it again (reslab train --resume {self.path})"
        return load_record(RunSummary, self.summary, ConfigError, hint)

    def write_summary(self, summary: RunSummary) -> None:
        atomic_write_bytes(self.summary, dumps(summary, indent=2))

    def read_metrics(self) -> list[MetricsRecord]:
        """metrics.jsonl records by step. A resumed run may have logged a step twice (evaluations
        after its last checkpoint are repeated); the later record wins. A line cut short by a
        crash is skipped."""
        by_step: dict[int, MetricsRecord] = {}
        if not self.metrics.is_file():
            return []
        for line in self.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            by_step[step] = {**by_step.get(step, {}), **record}
        return [by_step[s] for s in sorted(by_step)]

    def drop_metrics_after(self, step: int) -> None:
        """On resume: forget evaluations logged after the checkpoint (they will run again) and a
        line cut short by a kill."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, AttributeError):
                pass
        atomic_write_bytes(self.metrics, "".join(kept).encode())

    def append_metrics(self, record: MetricsRecord) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
