"""Reports on training runs: one page per run, or one page comparing several (`reslab report`).

The page has a table of final metrics, the runs' training and test error curves overlaid, each
run's settings and command, and the software and hardware. Beside it go the figure (PNG) and a
results JSON with the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reslab.analysis.figures import Panel, Series, curves_figure, palette
from reslab.analysis.report_page import Page, environment
from reslab.analysis.runs import Curve, Run, load_run, pct
from reslab.atomic import atomic_write_bytes
from reslab.errors import ConfigError, DataError
from reslab.expdir import ExperimentDir
from reslab.records import dumps
from reslab.rundir import ReportFiles


@dataclass(kw_only=True)
class RunEntry:
    """One run in a report's results JSON: final metrics and curves."""

    label: str
    run_dir: str
    model: str
    dataset: str
    seed: int
    synthetic_data: bool
    finished: bool
    final: dict[str, float | str]  # summary.json's final evaluation, else metrics.jsonl's last record
    wall_time_s: float | None
    train_error_final: float | None
    train_error_what: str  # what the training error curve is
    curves: dict[str, Curve]  # "test_top1_error", "train_error" -> fractions against iterations


@dataclass(kw_only=True)
class RunsReportResults:
    """The results JSON beside a runs report (a run's results.json, `reslab report`'s NAME_results.json)."""

    runs: list[RunEntry]
    synthetic_data: bool
    environment: dict[str, str]


def expand_run_dirs(paths: list[str]) -> list[Path]:
    """Run directories as given; an experiment directory stands for all of its runs."""
    out: list[Path] = []
    for p in map(Path, paths):
        experiment = ExperimentDir(p)
        if experiment.holds_experiment() and experiment.runs_dir.is_dir():
            found = [run.path for run in experiment.list_runs()]
            if not found:
                raise DataError(f"experiment directory {p} has no runs yet")
            out += found
        else:
            out.append(p)
    return out


def labels_of(runs: list[Run]) -> list[str]:
    """Run directory names, qualified by their experiment (or parent) where two would read the same."""
    names = [r.name for r in runs]

    def qualified(run: Run) -> str:
        parent = run.path.parent.parent if run.path.parent.name == "runs" else run.path.parent
        return f"{parent.name}/{run.name}"

    return [qualified(r) if names.count(r.name) > 1 else r.name for r in runs]


def _settings_row(label: str, run: Run) -> list[str]:
    c = run.config
    t, s, o, d = c["train"], c["schedule"], c["optim"], c["data"]
    length = f"{t['iterations']:,} it" if t["iterations"] else f"{t['epochs']:g} ep"
    sched = s["name"] + (f" {s['milestones']}" if s["name"] == "multistep" else "")
    return [
        label,
        c.get("recipe", ""),
        length,
        str(t["batch_size"]),
        f"{o['name']} lr {o['lr']:g}",
        sched,
        f"{d['split']}",
        d["augment"],
        d["normalize"],
    ]


def runs_report(runs: list[Run], files: ReportFiles, *, title: str | None = None) -> Path:
    """Write the page (and the figure and results beside it); returns the page's path."""
    files.page.parent.mkdir(parents=True, exist_ok=True)
    labels = labels_of(runs)
    synthetic = [lbl for lbl, r in zip(labels, runs) if r.synthetic]
    title = title or (f"Training run {labels[0]}" if len(runs) == 1 else f"Comparison of {len(runs)} training runs")
    page = Page(title, synthetic=bool(synthetic))
    _banners(page, labels, runs, synthetic)
    _final_metrics_table(page, labels, runs)
    _curves_section(page, labels, runs, files.figure, bool(synthetic))
    _settings_section(page, labels, runs)
    _commands_section(page, labels, runs)
    page.environment(next((r.summary.environment for r in runs if r.summary), None))
    results = RunsReportResults(
        runs=[_run_results(label, run) for label, run in zip(labels, runs)],
        synthetic_data=bool(synthetic),
        environment=environment(),
    )
    atomic_write_bytes(files.results, dumps(results))
    return page.write(files.page)


def _banners(page: Page, labels: list[str], runs: list[Run], synthetic: list[str]) -> None:
    """Which runs are synthetic (when not all are; the page's own banner says when all are) and which unfinished."""
    if synthetic and len(synthetic) < len(runs):
        page.banner("synthetic", f"Synthetic data in: {', '.join(synthetic)}")
    unfinished = [lbl for lbl, r in zip(labels, runs) if not r.finished]
    if unfinished:
        page.banner(
            "failed",
            f"Not finished (no summary.json; the numbers are the last evaluation so far): {', '.join(unfinished)}",
        )


def _final_metrics_table(page: Page, labels: list[str], runs: list[Run]) -> None:
    page.table(
        [
            "run",
            "model",
            "data",
            "seed",
            "steps",
            "epochs",
            "wall time",
            "train error %",
            "test top-1 %",
            "test top-5 %",
            "val top-1 %",
            "test loss",
        ],
        [_final_metrics_row(label, run) for label, run in zip(labels, runs)],
        caption="Final metrics",
        id="final-metrics",
    )


def _final_metrics_row(label: str, run: Run) -> list:
    f, summary = run.final, run.summary
    wall_time = summary.wall_time_s if summary else None
    return [
        label,
        run.model,
        run.dataset + (" (SYNTHETIC)" if run.synthetic else ""),
        run.seed,
        f"{summary.steps if summary else f.get('step', 0):,}",
        summary.epochs if summary and summary.epochs is not None else f.get("epoch", ""),
        f"{wall_time:.0f} s" if wall_time is not None else "unfinished",
        pct(run.train_error_curve()[0].last),
        pct(f.get("test_top1_error")),
        pct(f.get("test_top5_error")),
        pct(f.get("val_top1_error")),
        f"{f['test_loss']:.4f}" if "test_loss" in f else "n/a",
    ]


def _curves_section(page: Page, labels: list[str], runs: list[Run], png_path: Path, synthetic: bool) -> None:
    """The runs' training and test error curves overlaid, one colour per run; the figure goes to `png_path`."""
    colors = palette(labels)
    panels = [
        Panel(
            "training error",
            [Series(lbl, *_xy(r.train_error_curve()[0]), colors[lbl], "train") for lbl, r in zip(labels, runs)],
        ),
        Panel(
            "test error",
            [Series(lbl, *_xy(r.curve("test_top1_error")), colors[lbl], "test") for lbl, r in zip(labels, runs)],
        ),
    ]
    drops = runs[0].lr_drops if all(r.lr_drops == runs[0].lr_drops for r in runs) else []
    png = curves_figure(panels, png_path, title="SYNTHETIC DATA" if synthetic else None, lr_drops=drops)
    caption = "training error (thin dashed) and test top-1 error (bold) against iterations"
    page.figure(png, caption + ("; dotted: learning rate / 10" if drops else ""))
    train_whats = {r.train_error_curve()[1] for r in runs}
    page.paragraph("Training error plotted: " + "; ".join(sorted(train_whats)) + ".")


def _settings_section(page: Page, labels: list[str], runs: list[Run]) -> None:
    page.heading("Settings")
    page.table(
        ["run", "recipe", "length", "batch", "optimizer", "schedule", "split", "augment", "normalize"],
        [_settings_row(lbl, r) for lbl, r in zip(labels, runs)],
    )


def _commands_section(page: Page, labels: list[str], runs: list[Run]) -> None:
    """How each run was trained, how to resume or evaluate it, and its config.yaml."""
    page.heading("Commands")
    lines = []
    for label, run in zip(labels, runs):
        command = run.summary.environment.get("command") if run.summary else None
        lines.append(f"# {label}: trained by: {command or 'unfinished run'}")
        equivalent = _experiment_train_command(run)
        if equivalent:
            lines.append(f"# equivalent to: {equivalent}")
        lines.append(f"reslab train --resume {run.path}" if not run.finished else f"reslab eval {run.path}")
    page.code(lines)
    for label, run in zip(labels, runs):
        config = run.dir.config
        page.details(f"{label}: {config.name}", config.read_text() if config.is_file() else "")


def _run_results(label: str, run: Run) -> RunEntry:
    """One run's entry in the results JSON: final metrics and curves."""
    train_curve, what = run.train_error_curve()
    return RunEntry(
        label=label,
        run_dir=str(run.path),
        model=run.model,
        dataset=run.dataset,
        seed=run.seed,
        synthetic_data=run.synthetic,
        finished=run.finished,
        final=run.final,
        wall_time_s=run.summary.wall_time_s if run.summary else None,
        train_error_final=train_curve.last,
        train_error_what=what,
        curves={"test_top1_error": run.curve("test_top1_error"), "train_error": train_curve},
    )


def _experiment_train_command(run: Run) -> str | None:
    """A run of a `reslab reproduce` experiment: its `reslab train` command from experiment.json
    (None when there is none, or it cannot be read: the page then shows only the recorded command)."""
    experiment = ExperimentDir(run.path.parent.parent)
    if experiment.runs_dir != run.path.parent:
        return None
    try:
        record = experiment.read_record()
    except ConfigError:
        return None
    return (record.runs or {}).get(run.name) if record else None


def _xy(curve: Curve) -> tuple[list[int], list[float]]:
    return curve.steps, curve.values


def report_command_output(run_dirs: list[str], out: Path, title: str | None) -> Path:
    """`reslab report`: the page at `out`, figure and results named after it."""
    if out.suffix == ".md":
        raise ConfigError(f"--out {out}: name the HTML page (e.g. {out.with_suffix('.html')}); its .md goes beside it")
    runs = [load_run(p) for p in expand_run_dirs(run_dirs)]
    if not any(r.metrics for r in runs):
        raise DataError("none of the runs has any evaluations yet (empty metrics.jsonl); nothing to report")
    return runs_report(runs, ReportFiles.named_after(out), title=title)
