"""Run and experiment files as types (reslab.records): what a writer fills reads back the same, files
written by older reslab versions and the committed docs/results/ still load, and a damaged or
hand-edited file is one line naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reslab.analysis.degradation_results import DegradationResults
from reslab.analysis.layer_responses import LayerResponsesResults
from reslab.analysis.run_report import RunsReportResults
from reslab.commands.train import kept_text
from reslab.errors import ConfigError
from reslab.expdir import ExperimentDir, ExperimentRecord, Invocation, Settings
from reslab.records import RecordError, from_json, load_json, to_json
from reslab.rundir import KeptWeights, RunDir, RunSummary, StoppedEarly

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results"
RESULTS_TYPES = {"degradation": DegradationResults, "layer-responses": LayerResponsesResults}


def a_summary(**changes: object) -> RunSummary:
    summary = RunSummary(
        run_dir="runs/x",
        model="resnet20",
        dataset="cifar10",
        steps=12,
        total_steps=16,
        epochs=0.5,
        wall_time_s=3.25,
        final={"step": 12, "test_top1_error": 0.5, "test_loss": 1.25},
        kept=KeptWeights(keep="best", step=8, part="val", top1_error=0.25, evaluation={"step": 8}),
        environment={"reslab": "0.1.0", "cpus": 2, "cuda": None},
        stopped_early=StoppedEarly(step=12, evaluations_without_improvement=3, early_stop=3),
    )
    for key, value in changes.items():
        setattr(summary, key, value)
    return summary


def test_a_summary_reads_back_as_written(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.read_summary() is None  # not finished
    run.write_summary(a_summary())
    assert run.read_summary() == a_summary()
    written = json.loads(run.summary.read_text())
    assert "distributed" not in written and written["stopped_early"]["early_stop"] == 3  # optional keys
    assert kept_text(run.read_summary()) == "best val top-1 error 25.00% at step 8 of 16 (train.keep=best)"


def test_an_older_summary_loads_with_defaults(tmp_path: Path) -> None:
    """No total_steps, kept, class_weights, environment: as an early reslab wrote summary.json."""
    run = RunDir(tmp_path)
    old = {"model": "resnet20", "dataset": "cifar10", "steps": 4, "final": {"step": 4}, "a_newer_key": [1]}
    run.summary.write_text(json.dumps(old))
    summary = run.read_summary()
    assert summary.total == 4 and summary.kept is None and summary.class_weights == "none"
    assert kept_text(summary) == "the last step's (train.keep=last)"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "summary.json is not valid JSON"),
        ("[1, 2]", "summary.json is not an object"),
        ('{"model": "m", "dataset": "d", "steps": "12", "final": {}}', "summary.json: steps is not an integer"),
        ('{"model": "m", "dataset": "d", "steps": 1, "final": {"x": true}}', "final['x'] is not a number"),
        ('{"model": "m", "dataset": "d", "steps": 1, "final": {}, "kept": {"keep": 1}}', "kept.keep is not a str"),
    ],
)
def test_a_damaged_summary_is_one_line_naming_the_file(content: str, message: str, tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.summary.write_text(content)
    with pytest.raises(ConfigError) as error:
        run.read_summary()
    text = str(error.value)
    assert message in text and str(run.summary) in text and "\n" not in text and "--resume" in text


def test_experiment_record_round_trip_and_damage(tmp_path: Path) -> None:
    folder = ExperimentDir(tmp_path / "exp")
    assert folder.read_record() is None
    record = ExperimentRecord(
        experiment="degradation",
        created="2026-01-01T00:00:00+00:00",
        invocations=[Invocation(time="t", command="reslab reproduce degradation")],
        settings=Settings(data="synthetic", depths=[8, 14], epochs=2.0),
    )
    folder.write_record(record)
    assert folder.read_record() == record and "runs" not in json.loads(folder.record_file.read_text())
    folder.record_file.write_text('{"experiment": "degradation", "settings": {"seeds": "three"}}')
    with pytest.raises(ConfigError, match=r"experiment.json: settings.seeds is not an integer; repair it"):
        folder.read_record()


def test_record_errors_name_the_key_path() -> None:
    raw = {"experiment": "degradation", "data": "d", "iterations": 9, "milestones": [4], "curves": {}, "table": []}
    with pytest.raises(RecordError, match=r"^curves is not an object of 1 to 64 networks$"):
        from_json(DegradationResults, raw)
    raw["curves"] = {"plain-8": {"train": {"steps": [1, 12], "values": [0.5, 0.4]}, "test": {}}}
    with pytest.raises(RecordError, match=r"^curves\['plain-8'\]\.train\.steps are not increasing iterations within"):
        from_json(DegradationResults, raw)


@pytest.mark.parametrize("path", sorted(DOCS.rglob("results.json")), ids=lambda p: str(p.relative_to(DOCS)))
def test_committed_results_load_and_write_back_the_same(path: Path) -> None:
    """docs/results/ holds results.json of older reslab versions: each parses into its type and writes
    back the same numbers (an older degradation file lacks only settings.compare)."""
    raw = load_json(path)
    kind = RESULTS_TYPES.get(raw.get("experiment"), RunsReportResults)
    back = to_json(from_json(kind, raw))
    if kind is DegradationResults:
        back["settings"] = {k: v for k, v in back["settings"].items() if k in raw["settings"]}
    assert back == raw


def test_a_results_file_that_is_too_large_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "results.json"
    file.write_text(json.dumps({"experiment": "degradation", "pad": "x" * 100}))
    with pytest.raises(RecordError, match=r"is \d+ bytes, over the 50 a results.json may have"):
        load_json(file, max_bytes=50)
