"""A finished degradation experiment read back from its results.json, to draw beside another
schedule's (`reslab reproduce degradation --compare DIR`).

The file may come from anywhere (a copy in docs/results/, a colleague's run): its size is bounded
and it is parsed into `DegradationResults`, whose fields check themselves; a file that fails a
check is refused with one line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reslab.analysis.degradation_results import ComparedWith, CurvePair, DegradationResults, FinalErrors
from reslab.errors import ConfigError
from reslab.expdir import ExperimentDir, Settings
from reslab.records import RecordError, from_json, load_json, short
from reslab.rundir import RESULTS_FILE

MAX_RESULTS_BYTES = 16 * 2**20  # a degradation results.json of 5 seeds x 4 nets x 1,000 points is < 2 MiB
COMPARED_SETTINGS = ("seeds", "overrides", "train_images")  # shown in the report when they differ


@dataclass
class OtherSchedule:
    source: str  # as given to --compare
    label: str  # "3 epochs, 1,404 iterations"
    iterations: int
    milestones: list[int]
    curves: dict[str, CurvePair]  # network ("ResNet-56") -> its training and test error curves
    finals: dict[str, FinalErrors]  # network -> its final training and test errors
    settings: Settings  # as recorded (its COMPARED_SETTINGS are shown when they differ)

    def differences(self, settings: Settings) -> list[str]:
        """Each COMPARED_SETTINGS value that differs from `settings`' ("seeds 3 there, 1 here"); of the
        --set overrides, the ones only one side has."""
        out = []
        for key in COMPARED_SETTINGS:
            theirs, ours = getattr(self.settings, key), getattr(settings, key)
            if theirs == ours:
                continue
            if key == "overrides":
                there = [str(o) for o in theirs if o not in ours]
                here = [str(o) for o in ours if o not in theirs]
                out.append(
                    f"--set only there: {short(', '.join(there)) if there else 'none'}, only here: "
                    f"{short(', '.join(here)) if here else 'none'}"
                )
            else:
                out.append(f"{key} {short(theirs)} there, {short(ours)} here")
        return out

    def compared_with(self) -> ComparedWith:
        """What this experiment's results.json records of the other one."""
        return ComparedWith(
            source=self.source,
            label=self.label,
            iterations=self.iterations,
            milestones=self.milestones,
            final=self.finals,
        )


def schedule_label(iterations: int, epochs: float | None) -> str:
    return (f"{epochs:g} epochs, " if epochs else "") + f"{iterations:,} iterations"


def load_other_schedule(text: str, data: str, experiment: str, own_dir: Path) -> OtherSchedule:
    """--compare TEXT: a degradation experiment's directory, or a folder holding its results.json
    (or the file itself), on the same dataset `data`; not the experiment `own_dir` itself."""
    where = f"--compare {text}"
    file = _results_file(text, experiment, own_dir)
    try:
        raw = load_json(file, MAX_RESULTS_BYTES)
        header = raw if isinstance(raw, dict) else {}
        if header.get("experiment") != experiment:
            raise RecordError("experiment", f"is {short(header.get('experiment'))}, not {experiment!r}")
        if header.get("data") != data:
            raise ConfigError(
                f"{where}: that experiment ran on {short(header.get('data'))}, this one on {data!r}; "
                "compare schedules on the same data"
            )
        results = from_json(DegradationResults, raw)
    except RecordError as exc:
        written = f"; it was not written by reslab reproduce {experiment}" if exc.key else ""
        raise ConfigError(f"{where}: {exc.about(file)}{written}") from None
    return OtherSchedule(
        source=text,
        label=schedule_label(results.iterations, results.settings.epochs),
        iterations=results.iterations,
        milestones=list(results.milestones),
        curves=results.curves,
        finals={row.model: FinalErrors(train=row.train_error_mean, test=row.test_error_mean) for row in results.table},
        settings=results.settings,
    )


def _results_file(text: str, experiment: str, own_dir: Path) -> Path:
    """The results.json that --compare TEXT names: there, and not this experiment's own."""
    where = f"--compare {text}"
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where}: give a directory or a {RESULTS_FILE} file")
    path = Path(text)
    file = ExperimentDir(path).results if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"{where}: no {RESULTS_FILE} there; give a finished {experiment} experiment's directory "
            f"(or the folder its {RESULTS_FILE} was copied to, e.g. docs/results/degradation-fashion-mnist)"
        )
    if file.resolve().parent == own_dir.resolve():
        raise ConfigError(f"{where}: that is this experiment's own {RESULTS_FILE}; compare with another experiment")
    return file
