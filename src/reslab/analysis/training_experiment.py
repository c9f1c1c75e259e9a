"""What the training experiments (degradation, cifar10-table6) share: training their runs, the
per-run reports, the common parts of results.json, and the report sections on method, runs and
commands. Layer responses shares the claims and their reasons."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from reslab.analysis.experiment import Execution, Experiment, RunSpec, train_runs
from reslab.analysis.paper import PAPER_CIFAR_ITERATIONS
from reslab.analysis.plan import TrainingPlan
from reslab.analysis.report_page import Page
from reslab.analysis.run_report import runs_report
from reslab.analysis.runs import Run, load_run, pct
from reslab.expdir import Claim, RunResult

STATE_WORDS = {"finished": "reused (finished before)", "partial": "resumed from checkpoint", "new": "trained"}
TORCHRUN_NOTE = (
    "--parallel K trains K runs at once, each a `python -m reslab train` process with "
    "train.threads = cores // K. To spread ONE run over several processes or GPUs, train it with "
    "torchrun into the experiment's run directory, then rerun this command (it reuses finished runs): "
)


def train_experiment(exp: Experiment, specs: list[RunSpec], execution: Execution) -> tuple[list[Run], dict[str, str]]:
    """Train (or reuse, or resume) every run; write each run's own report; read them back."""
    exp.record.runs = {s.name: s.command(exp.runs_dir / s.name) for s in specs}
    exp.save()
    states = train_runs(specs, exp.runs_dir, execution)
    runs = [load_run(exp.dir.run(s.name).path) for s in specs]
    return runs, states


def write_run_reports(runs: list[Run]) -> None:
    for run in runs:
        runs_report([run], run.dir.report_files)


def claim_records(claims: list[dict]) -> list[Claim]:
    """The claims (as `_claims` of each experiment builds them) for results.json."""
    return [Claim(claim=c["claim"], reproduced=bool(c["reproduced"]), detail=c["detail"]) for c in claims]


def reasons_shown(claims: list[dict], reasons: list[str]) -> list[str]:
    """The possible reasons results.json gives: only when a claim did not reproduce."""
    return reasons if any(not c["reproduced"] for c in claims) else []


def runs_results(runs: list[Run]) -> list[RunResult]:
    """Each run's final metrics for results.json."""
    return [RunResult(name=r.name, model=r.model, seed=r.seed, final=r.final) for r in runs]


def training_environment(runs: list[Run]) -> dict[str, str | int | float | None] | None:
    """The software and hardware the first run trained on (its summary.json), for the report."""
    summary = runs[0].summary if runs else None
    return summary.environment if summary else None


def method_section(page: Page, plan: TrainingPlan, run: Run, seeds: int, extra: list[str] = ()) -> None:
    """How the runs were trained, read from a run's resolved config (all runs share it but the model)."""
    c = run.config
    d, o, t = c["data"], c["optim"], c["train"]
    page.heading("Method")
    items = [
        f"Dataset: {d['dataset']} (split {d['split']}; augment {d['augment']}, pad {d['pad']}; normalize "
        f"{d['normalize']}). Recipe {plan.recipe}: {o['name']} momentum {o['momentum']:g}, weight decay "
        f"{o['weight_decay']:g}, batch {t['batch_size']}, lr {o['lr']:g}; the overrides are under Commands.",
        f"Length: {plan.length_note}. Learning rate divided by 10 at iterations "
        f"{', '.join(f'{m:,}' for m in plan.milestones)} (50% and 75%: the paper's 32k/48k of 64k).",
        f"Evaluation every {plan.eval_every:,} iterations. {seeds} seed(s) per model; tables give mean "
        "\u00b1 sample std over seeds (no std for one seed).",
    ]
    if plan.iterations < PAPER_CIFAR_ITERATIONS:
        items.append(
            f"This is {100 * plan.iterations / PAPER_CIFAR_ITERATIONS:.2g}% of the paper's "
            f"{PAPER_CIFAR_ITERATIONS:,} iterations."
        )
    page.bullets(items + list(extra))


def runs_section(page: Page, exp: Experiment, runs: list[Run], states: dict[str, str]) -> None:
    page.heading("Runs")
    rows = []
    for run in runs:
        s = run.summary
        rows.append(
            [
                run.name,
                run.model,
                run.seed,
                STATE_WORDS[states.get(run.name, "finished")],
                f"{s.steps if s else 0:,}",
                f"{(s.wall_time_s if s else None) or 0:.0f} s",
                pct(run.final.get("test_top1_error")),
            ]
        )
    page.table(["run", "model", "seed", "this time", "steps", "wall time", "test top-1 %"], rows)
    # Relative to the experiment's page, which `Page.write` puts in exp.path. A copy of report.md
    # committed elsewhere (docs/results/) needs runs/*/report.md and their figures copied beside it;
    # tests/analysis/test_report_links.py checks that every link under docs/results/ resolves.
    page.link_list([(Path(os.path.relpath(r.dir.report, exp.path)), f"{r.name}: report") for r in runs])


def commands_section(page: Page, exp: Experiment, specs: list[RunSpec]) -> None:
    page.heading("Commands")
    page.paragraph("This experiment was run with (each line one invocation; later ones resume):")
    page.code(invocation_lines(exp))
    page.paragraph("Each run is equivalent to:")
    page.code([s.command(exp.runs_dir / s.name) for s in specs])
    example = specs[0]
    page.paragraph(
        TORCHRUN_NOTE
        + shlex.join(
            ["torchrun", "--nproc_per_node=2", "-m", "reslab", *example.train_args(exp.runs_dir / example.name)]
        )
    )


def invocation_lines(exp: Experiment) -> list[str]:
    """Each command that ran the experiment, with its time (experiment.json's invocations)."""
    return [f"{i.time}  {i.command}" for i in exp.record.invocations]


def not_reproduced_reasons(data: str, iterations: int, seeds: int, synthetic: bool) -> list[str]:
    """Plain reasons why a claimed effect may not show up in these runs."""
    reasons = []
    if synthetic:
        reasons.append("the data is synthetic (random images with a class colour): it says nothing about depth")
    if iterations < PAPER_CIFAR_ITERATIONS:
        reasons.append(
            f"too short: {iterations:,} iterations against the paper's {PAPER_CIFAR_ITERATIONS:,}; "
            "the gaps between depths open as training goes on and after the lr drops"
        )
    if data != "cifar10":
        reasons.append(
            f"{data} is not CIFAR-10, where the paper measured it; on an easier dataset a deep plain "
            "net may fit the training set as well as a shallow one"
        )
    if seeds == 1:
        reasons.append(
            "one seed per model: seed-to-seed differences of a few tenths of a percent are normal, "
            "so small gaps may be noise (use --seeds 3 or more)"
        )
    return reasons


def claims_section(page: Page, claims: list[dict], reasons: list[str]) -> None:
    """The paper's claims with our numbers, and a plain verdict."""
    page.heading("Does it reproduce?")
    if not claims:
        page.banner(
            "note",
            "None of the paper's claims can be checked with these runs (they need two depths, "
            "or plain and residual nets of one depth).",
        )
        return
    page.table(
        ["paper's claim", "reproduced here?", "our numbers"],
        [
            [c["claim"], ("yes" if c["reproduced"] else "no", "yes" if c["reproduced"] else "NO"), c["detail"]]
            for c in claims
        ],
        id="claims",
    )
    failed = [c for c in claims if not c["reproduced"]]
    if failed:
        why = "; ".join(reasons or ["none known: the settings match the paper's"])
        page.banner(
            "failed",
            f"{len(failed)} of {len(claims)} of the paper's claims did NOT reproduce in these "
            f"runs. Possible reasons: {why}.",
        )
    else:
        page.banner(
            "ok", "All claims checked here reproduced" + (" (caveats: " + "; ".join(reasons) + ")." if reasons else ".")
        )
