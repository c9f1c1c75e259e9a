"""The degradation experiment (paper sec. 4.1-4.2, Fig. 1 and Fig. 6): plain nets versus ResNets.

Plain-D and ResNet-D (default D = 20, 56) train with the same recipe. The paper's finding: the
deeper PLAIN net has the higher training error (degradation), while the deeper ResNet has the
lower one. The figures plot, against iterations, the training error (thin dashed; the top-1 error
on a fixed subset of training images, evaluated from the checkpoint kept at each evaluation step)
and the test error (bold), averaged over seeds.
"""

from __future__ import annotations

from pathlib import Path

from reslab.analysis import paper
from reslab.analysis.degradation_results import CurvePair, DegradationResults, FinalErrors, NetworkRow
from reslab.analysis.experiment import Execution, Experiment
from reslab.analysis.figures import Panel, Schedules, Series, curves_figure, palette
from reslab.analysis.plan import TrainingPlan, check_data, check_depths, cifar_model, fit_budget, training_plan
from reslab.analysis.report_page import Page, environment
from reslab.analysis.runs import Curve, Run, mean_curve, mean_std, pct
from reslab.analysis.schedules import OtherSchedule, load_other_schedule, schedule_label
from reslab.analysis.train_error import training_error_curve
from reslab.analysis.training_experiment import (
    claim_records,
    claims_section,
    commands_section,
    method_section,
    not_reproduced_reasons,
    reasons_shown,
    runs_results,
    runs_section,
    train_experiment,
    training_environment,
    write_run_reports,
)
from reslab.expdir import FIG1, FIG6, FIG_SCHEDULES, ExperimentDir

NAME = "degradation"
DEFAULT_DATA = "cifar10"
DEFAULT_DEPTHS = [20, 56]
TAKES = {
    "data",
    "data_dir",
    "seeds",
    "epochs",
    "iterations",
    "budget",
    "depths",
    "overrides",
    "train_images",
    "compare",
}
SUMMARY = "plain-D versus ResNet-D training/test error curves (Fig. 1, Fig. 6)"


def label(residual: bool, depth: int) -> str:
    return f"{'ResNet' if residual else 'plain'}-{depth}"


def run(exp: Experiment, execution: Execution) -> Path:
    s = exp.settings
    check_depths(s.depths)
    check_data(s)
    other = load_other_schedule(s.compare, s.data, NAME, exp.path) if s.compare else None  # before any training
    depths = sorted(set(s.depths))
    nets = [(residual, d, cifar_model(d, residual)) for residual in (False, True) for d in depths]
    budget = fit_budget(exp, execution, [model for _, _, model in nets], train_images=s.train_images)
    plan = training_plan(s, checkpoint_each_eval=True, budget=budget)
    exp.start()
    specs = [plan.spec(model, seed) for _, _, model in nets for seed in range(s.seeds)]
    runs, states = train_experiment(exp, specs, execution)
    curve_images = budget.train_images if budget else s.train_images
    train_images = min(training_error_curve(r.path, curve_images).images for r in runs)
    write_run_reports(runs)

    by_net = {(residual, depth): [r for r in runs if r.model == model] for residual, depth, model in nets}
    stats = {key: _net_stats(group) for key, group in by_net.items()}
    table = _table(by_net, stats)
    synthetic = any(r.synthetic for r in runs)
    claims = _claims(stats, depths)
    reasons = not_reproduced_reasons(s.data, plan.iterations, s.seeds, synthetic)
    fig6, fig1 = _figures(exp.dir, stats, depths, s.data, synthetic, plan.milestones)
    this_schedule = schedule_label(plan.iterations, s.epochs)
    if other and other.label == this_schedule:
        other.label += " (--compare)"
    what_train = runs[0].train_error_curve()[1]
    exp.dir.write_results(_results(exp, plan, runs, stats, table, claims, reasons, other))

    page = Page(f"Degradation: plain vs residual networks on {s.data}", synthetic=synthetic)
    page.paragraph(f"Reproduces {paper.PAPER}, Fig. 1 and Fig. 6: {SUMMARY}.")
    claims_section(page, claims, reasons)
    _summary_section(page, table, fig6, fig1, what_train)
    if other:
        fig = _schedules_figure(exp.dir, stats, depths, s.data, synthetic, plan.milestones, this_schedule, other)
        _schedules_section(page, table, this_schedule, plan.milestones, other, other.differences(s), fig)
    method_section(page, plan, runs[0], s.seeds, [_training_error_note(plan.eval_every, train_images)])
    runs_section(page, exp, runs, states)
    commands_section(page, exp, specs)
    page.paragraph(f"Next: layer responses (Fig. 7) of these runs: reslab reproduce layer-responses --from {exp.path}")
    page.environment(training_environment(runs))
    return page.write(exp.dir.report)


def _results(
    exp: Experiment,
    plan: TrainingPlan,
    runs: list[Run],
    stats: dict,
    table: list[NetworkRow],
    claims: list[dict],
    reasons: list[str],
    other: OtherSchedule | None,
) -> DegradationResults:
    """What results.json records: the summary table, claims, mean curves, runs and the --compare schedule."""
    return DegradationResults(
        experiment=NAME,
        synthetic_data=any(r.synthetic for r in runs),
        data=exp.settings.data,
        iterations=plan.iterations,
        milestones=plan.milestones,
        eval_every=plan.eval_every,
        settings=exp.settings,
        training_error_plotted=runs[0].train_error_curve()[1],
        curves=_curves_results(stats),
        table=table,
        claims=claim_records(claims),
        not_reproduced_reasons=reasons_shown(claims, reasons),
        compared_with=other.compared_with() if other else None,
        runs=runs_results(runs),
        environment=environment(),
    )


def _table(by_net: dict[tuple[bool, int], list[Run]], stats: dict) -> list[NetworkRow]:
    """The summary rows of results.json: each network's final errors (mean and std over seeds) and parameters."""
    return [
        NetworkRow(
            model=label(res, d),
            name=cifar_model(d, res),
            residual=res,
            depth=d,
            seeds=len(by_net[(res, d)]),
            train_error_mean=st["train_error_mean"],
            train_error_std=st["train_error_std"],
            test_error_mean=st["test_error_mean"],
            test_error_std=st["test_error_std"],
            best_test_error_mean=st["best_test_error_mean"],
            params=st["params"],
        )
        for (res, d), st in sorted(stats.items())
    ]


def _curves_results(stats: dict) -> dict[str, CurvePair]:
    """The mean training and test error curves of each network, for results.json."""
    return {label(res, d): CurvePair(train=st["train"], test=st["test"]) for (res, d), st in stats.items()}


def _summary_section(page: Page, table: list[NetworkRow], fig6: Path, fig1: Path, what_train: str) -> None:
    """The summary table of final errors and the Fig. 6 and Fig. 1 style figures."""
    page.heading("Summary")
    page.table(
        ["model", "seeds", "final training error %", "final test error %", "best test error %", "params"],
        [
            [
                row.model,
                row.seeds,
                pct(row.train_error_mean, row.train_error_std),
                pct(row.test_error_mean, row.test_error_std),
                pct(row.best_test_error_mean),
                f"{row.params:,}" if row.params else "n/a",
            ]
            for row in table
        ],
        caption="Degradation summary (mean \u00b1 std over seeds)",
        id="degradation-summary",
    )
    page.figure(
        fig6, "Fig. 6 style: plain nets (left) and ResNets (right); thin dashed = training error, bold = test error"
    )
    page.figure(fig1, "Fig. 1 style: plain nets, training error (left) and test error (right)")
    page.paragraph(
        f"Training error plotted: {what_train}. Test error: top-1 error on the whole test set, from metrics.jsonl."
    )


def _training_error_note(eval_every: int, train_images: int) -> str:
    """The Method item on how the training error curve was measured."""
    return (
        f"Training error: every {eval_every:,} iterations a checkpoint is kept; after training each is "
        f"evaluated on {train_images:,} fixed training images (--train-images), then the checkpoints are "
        "pruned to the newest two. The paper's curves may instead show the running mini-batch error."
    )


def _figures(
    out: ExperimentDir, stats: dict, depths: list[int], data: str, synthetic: bool, lr_drops: list[int]
) -> tuple[Path, Path]:
    """Fig. 6 style (plain left, ResNets right) and Fig. 1 style (plain nets: training | test error)."""
    colors = palette(depths)
    title = "SYNTHETIC DATA" if synthetic else None
    fig6 = curves_figure(
        [
            Panel(f"plain networks ({data})", _series(stats, False, colors)),
            Panel(f"ResNets ({data})", _series(stats, True, colors)),
        ],
        out.figure(FIG6),
        title=title,
        note="thin dashed: training error, bold: test error (mean over seeds); dotted: the learning rate / 10",
        lr_drops=lr_drops,
    )
    fig1 = curves_figure(
        [
            Panel(
                "training error",
                [Series(label(False, d), *_xy(stats[(False, d)]["train"]), colors[d], "train") for d in depths],
            ),
            Panel(
                "test error",
                [Series(label(False, d), *_xy(stats[(False, d)]["test"]), colors[d], "test") for d in depths],
            ),
        ],
        out.figure(FIG1),
        title=title,
        lr_drops=lr_drops,
    )
    return fig6, fig1


def _schedules_figure(
    out: ExperimentDir,
    stats: dict,
    depths: list[int],
    data: str,
    synthetic: bool,
    lr_drops: list[int],
    this_schedule: str,
    other: OtherSchedule,
) -> Path:
    """Both schedules in one figure (plain nets left, ResNets right): this one at full strength,
    the other (--compare) faded, each with its own lr drops."""
    colors = palette(depths)
    panels = []
    for residual in (False, True):
        series = []
        for d in depths:
            name = label(residual, d)
            for kind in ("train", "test"):
                pair = other.curves.get(name)
                theirs = getattr(pair, kind) if pair else None
                if theirs:
                    series.append(Series(name, *_xy(theirs), colors[d], kind, faded=True))
                series.append(Series(name, *_xy(stats[(residual, d)][kind]), colors[d], kind))
        panels.append(Panel(f"{'ResNets' if residual else 'plain networks'} ({data})", series))
    return curves_figure(
        panels,
        out.figure(FIG_SCHEDULES),
        title="SYNTHETIC DATA" if synthetic else None,
        note=f"bold: test error, thin dashed: training error; full colour: {this_schedule}, "
        f"faded: {other.label}; dotted: lr / 10 of each",
        lr_drops=lr_drops,
        schedules=Schedules(this_schedule, other.label, other.milestones),
    )


def _schedules_section(
    page: Page,
    table: list[NetworkRow],
    this_schedule: str,
    milestones: list[int],
    other: OtherSchedule,
    differences: list[str],
    fig: Path,
) -> None:
    """This experiment's final errors beside those of the --compare experiment, and both curves."""

    def at(steps: list[int]) -> str:
        return ", ".join(f"{m:,}" for m in steps)

    page.heading("Two schedules")
    page.paragraph(
        f"This experiment ({this_schedule}, lr / 10 at {at(milestones)}) beside {other.source} "
        f"({other.label}, lr / 10 at {at(other.milestones)}), on the same data. Other settings that differ: "
        + ("; ".join(differences) if differences else "none")
        + "."
    )
    rows = []
    for row in table:
        theirs = other.finals.get(row.model, FinalErrors())
        rows.append(
            [row.model, pct(theirs.train), pct(row.train_error_mean), pct(theirs.test), pct(row.test_error_mean)]
        )
    page.table(
        [
            "model",
            f"training error % ({other.label})",
            f"training error % ({this_schedule})",
            f"test error % ({other.label})",
            f"test error % ({this_schedule})",
        ],
        rows,
        caption="Final errors under both schedules (mean over seeds)",
        id="schedules",
    )
    page.figure(fig, f"both schedules against iterations: full colour {this_schedule}, faded {other.label}")


def _net_stats(group: list[Run]) -> dict:
    """Means over seeds of one network's final errors and curves."""
    train_curves = [r.train_error_curve()[0] for r in group]
    test_curves = [r.curve("test_top1_error") for r in group]
    train_final = [c.last for c in train_curves if c]
    test_final = [r.final["test_top1_error"] for r in group if "test_top1_error" in r.final]
    best = [min(c.values) for c in test_curves if c]
    tm, ts = mean_std(train_final)
    em, es = mean_std(test_final)
    params = None
    if group and group[0].dir.weights.is_file():
        from reslab.weights import load_weights

        params = sum(p.numel() for p in load_weights(group[0].path).model.parameters())
    return {
        "train_error_mean": tm,
        "train_error_std": ts,
        "test_error_mean": em,
        "test_error_std": es,
        "best_test_error_mean": mean_std(best)[0],
        "params": params,
        "train": mean_curve(train_curves),
        "test": mean_curve(test_curves),
    }


def _series(stats: dict, residual: bool, colors: dict) -> list[Series]:
    out = []
    for (res, depth), st in sorted(stats.items()):
        if res == residual:
            out.append(Series(label(res, depth), *_xy(st["train"]), colors[depth], "train"))
            out.append(Series(label(res, depth), *_xy(st["test"]), colors[depth], "test"))
    return out


def _xy(curve: Curve) -> tuple[list[int], list[float]]:
    return curve.steps, curve.values


def _claims(stats: dict, depths: list[int]) -> list[dict]:
    """Each of the paper's claims, with our numbers and whether they bear it out."""
    claims = []
    shallow, deep = depths[0], depths[-1]

    def train(res: bool, d: int) -> float:
        return stats[(res, d)]["train_error_mean"]

    def test(res: bool, d: int) -> float:
        return stats[(res, d)]["test_error_mean"]

    if deep != shallow:
        p_s, p_d = train(False, shallow), train(False, deep)
        claims.append(
            {
                "claim": paper.CLAIM_PLAIN,
                "reproduced": bool(p_d > p_s),
                "detail": f"training error plain-{deep} {pct(p_d)}% vs plain-{shallow} {pct(p_s)}%",
            }
        )
        r_s, r_d = train(True, shallow), train(True, deep)
        claims.append(
            {
                "claim": paper.CLAIM_RESNET,
                "reproduced": bool(r_d < r_s),
                "detail": f"training error ResNet-{deep} {pct(r_d)}% vs ResNet-{shallow} {pct(r_s)}%",
            }
        )
    if deep != shallow and deep <= 110:  # Table 6: ResNet-1202 tests worse than ResNet-110 (overfitting)
        t_s, t_d = test(True, shallow), test(True, deep)
        claims.append(
            {
                "claim": paper.CLAIM_RESNET_TEST,
                "reproduced": bool(t_d < t_s),
                "detail": f"test error ResNet-{deep} {pct(t_d)}% vs ResNet-{shallow} {pct(t_s)}%",
            }
        )
    ok = train(True, deep) < train(False, deep) and test(True, deep) < test(False, deep)
    claims.append(
        {
            "claim": paper.CLAIM_RESIDUAL_WINS,
            "reproduced": bool(ok),
            "detail": f"depth {deep}: training error ResNet {pct(train(True, deep))}% vs plain "
            f"{pct(train(False, deep))}%; test error ResNet {pct(test(True, deep))}% vs plain "
            f"{pct(test(False, deep))}%",
        }
    )
    return claims
