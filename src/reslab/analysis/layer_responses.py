"""Layer responses (paper sec. 4.2, Fig. 7): the standard deviation of each 3x3 layer's response.

A response is the output of the BN that follows a 3x3 conv, before the addition and the ReLU
(the stem's conv counts as layer 1). Forward hooks on those BN modules measure it on test images
in eval mode; the std is taken per channel over all images and positions, then averaged over the
channels. The paper's finding: ResNets respond less than their plain twins (the residual
functions are closer to zero), and deeper ResNets less still.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from reslab.analysis import paper
from reslab.analysis.experiment import DEFAULT_ROOT, Execution, Experiment
from reslab.analysis.figures import layer_responses_figure, palette
from reslab.analysis.report_page import Page, environment
from reslab.analysis.run_report import expand_run_dirs
from reslab.analysis.runs import Run, load_run
from reslab.analysis.training_experiment import (
    claim_records,
    claims_section,
    invocation_lines,
    not_reproduced_reasons,
    reasons_shown,
)
from reslab.data.batches import InMemoryEvalBatches
from reslab.data.sources import fit_arrays
from reslab.data.spec import EvalBatchSpec
from reslab.errors import ConfigError
from reslab.evaluation import data_source
from reslab.expdir import FIG7, Claim, ExperimentDir, ExperimentResults
from reslab.models import ResNet, model_info
from reslab.weights import load_weights

NAME = "layer-responses"
DEFAULT_DATA = "cifar10"  # names the default --from: runs/reproduce/degradation-DATA
DEFAULT_DEPTHS: list[int] = []
TAKES = {"data", "source", "runs", "images"}
SUMMARY = "std of each 3x3 layer's response, plain nets versus ResNets (Fig. 7)"
WHAT = (
    "per-channel std of each BN output that follows a 3x3 conv (before addition and ReLU), eval mode, "
    "averaged over channels"
)


@dataclass(kw_only=True)
class RunResponses:
    run_dir: str
    model: str
    seed: int
    responses: list[float]  # one std per 3x3 layer, in forward order


@dataclass(kw_only=True)
class LayerResponsesResults(ExperimentResults):
    """results.json of `reslab reproduce layer-responses`."""

    synthetic_data: bool = False
    images: int  # test images measured
    claims: list[Claim] = field(default_factory=list)
    not_reproduced_reasons: list[str] = field(default_factory=list)
    mean_response_std: dict[str, float]  # network -> mean over its layers (and seeds)
    responses: dict[str, list[float]]  # network -> per layer, mean over seeds
    runs: list[RunResponses] = field(default_factory=list)
    what: str = WHAT
    environment: dict[str, str] = field(default_factory=dict)


def response_norms(model: ResNet) -> list[nn.BatchNorm2d]:
    """The BN right after each 3x3 conv, in forward order (modules are registered in that order)."""
    if model.preact:
        raise ConfigError(
            f"{model.name} is a pre-activation net: no BN follows its 3x3 convs; Fig. 7 is about "
            "the paper's post-activation nets (plainD, resnetD)"
        )
    norms, pending = [], False
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            pending = module.kernel_size == (3, 3)
        elif isinstance(module, nn.BatchNorm2d) and pending:
            norms.append(module)
            pending = False
    return norms


@torch.no_grad()
def layer_response_stds(model: ResNet, batches: Iterable[tuple[torch.Tensor, object]]) -> list[float]:
    """Per 3x3 layer: the per-channel std of its BN output over all images and positions, averaged
    over channels. Sums are accumulated in float64, so the result does not depend on batching."""
    norms = response_norms(model)
    sums = [None] * len(norms)

    def hook(index: int) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = output.detach().double().transpose(0, 1).flatten(1)  # (B, C, H, W) -> (C, B*H*W)
            s = torch.stack([x.sum(1), (x * x).sum(1), torch.full_like(x[:, 0], x.shape[1])])
            sums[index] = s if sums[index] is None else sums[index] + s

        return record  # computed at once: the block adds the shortcut into this tensor in place

    handles = [bn.register_forward_hook(hook(i)) for i, bn in enumerate(norms)]
    try:
        model.eval()
        for x, _ in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    stds = []
    for s in sums:
        total, squares, n = s
        var = (squares - total * total / n) / (n - 1).clamp(min=1)
        stds.append(var.clamp(min=0).sqrt().mean().item())
    return stds


def run_responses(run: Run, images: int) -> list[float]:
    """Layer responses of a finished run's weights on its first `images` test images, prepared as
    the run evaluated them."""
    weights = load_weights(run.path)
    cfg = run.dir.load_config()
    test = fit_arrays(data_source(cfg).arrays("test"), weights.preprocess)
    test = test.subset(torch.arange(min(images, len(test))))
    batches = InMemoryEvalBatches(test, EvalBatchSpec(250, stats=weights.stats)).epoch(0)
    return layer_response_stds(weights.model, batches)


def net_label(model: str) -> tuple[str, bool, int]:
    info = model_info(model)
    residual = not info.family.startswith("plain")
    return f"{'ResNet' if residual else 'plain'}-{info.depth}", residual, info.depth


def find_runs(exp: Experiment) -> list[Run]:
    s = exp.settings
    if s.runs:
        dirs = expand_run_dirs(s.runs)
    else:
        source = ExperimentDir(s.source if s.source else DEFAULT_ROOT / f"degradation-{s.data}")
        if not source.runs_dir.is_dir():
            raise ConfigError(
                f"no finished experiment at {source}: run `reslab reproduce degradation --data {s.data}` "
                "first, or pass --from EXPERIMENT_DIR or --runs RUN_DIR ..."
            )
        dirs = expand_run_dirs([str(source.path)])
    runs = [load_run(d) for d in dirs]
    done = [r for r in runs if r.dir.weights.is_file()]
    if not done:
        raise ConfigError(
            f"none of the {len(runs)} run(s) is finished (no weights.safetensors); finish them "
            "first (rerun the experiment's command)"
        )
    return done


def run(exp: Experiment, execution: Execution) -> Path:
    s = exp.settings
    runs = find_runs(exp)
    exp.start()
    print(f"layer responses of {len(runs)} run(s) on {s.images} test images", flush=True)
    per_run = {r.name: run_responses(r, s.images) for r in runs}
    groups, info = _group_by_net(runs, per_run)
    order = sorted(groups, key=lambda k: (info[k][0], info[k][1]))
    means = {k: [statistics.fmean(v) for v in zip(*groups[k])] for k in order}
    overall = {k: statistics.fmean(v) for k, v in means.items()}
    synthetic = any(r.synthetic for r in runs)
    claims = _claims(info, overall)
    iterations = min(r.summary.steps if r.summary else 0 for r in runs)
    reasons = not_reproduced_reasons(runs[0].dataset, iterations, min(len(v) for v in groups.values()), synthetic)
    fig = _figure(exp.dir.figure(FIG7), means, info, synthetic)
    results = LayerResponsesResults(
        experiment=NAME,
        synthetic_data=synthetic,
        images=s.images,
        claims=claim_records(claims),
        not_reproduced_reasons=reasons_shown(claims, reasons),
        mean_response_std=overall,
        responses=means,
        runs=[RunResponses(run_dir=str(r.path), model=r.model, seed=r.seed, responses=per_run[r.name]) for r in runs],
        environment=environment(),
    )
    exp.dir.write_results(results)

    page = Page("Layer responses: plain nets vs ResNets", synthetic=synthetic)
    page.paragraph(f"Reproduces {paper.PAPER}, Fig. 7: {SUMMARY}.")
    claims_section(page, claims, reasons)
    page.figure(
        fig,
        "std of each 3x3 layer's response; top: in layer order, bottom: sorted by magnitude "
        "(dashed: plain nets, solid: ResNets)",
    )
    page.table(
        ["network", "runs", "3x3 layers", "mean std", "max std"],
        [[k, len(groups[k]), len(means[k]), f"{overall[k]:.4f}", f"{max(means[k]):.4f}"] for k in order],
        caption="Response std per network (mean over seeds)",
        id="responses",
    )
    _method_section(page, s.images)
    page.heading("Runs analysed")
    page.table(
        ["run", "model", "seed", "dataset", "steps"],
        [[str(r.path), r.model, r.seed, r.dataset, r.summary.steps if r.summary else ""] for r in runs],
    )
    page.heading("Commands")
    page.code(invocation_lines(exp))
    page.environment()
    return page.write(exp.dir.report)


def _group_by_net(
    runs: list[Run], per_run: dict[str, list[float]]
) -> tuple[dict[str, list[list[float]]], dict[str, tuple[bool, int]]]:
    """The runs' responses grouped by network label (one list per seed), and each label's (residual, depth)."""
    groups: dict[str, list[list[float]]] = {}
    info: dict[str, tuple[bool, int]] = {}
    for r in runs:
        lbl, residual, depth = net_label(r.model)
        groups.setdefault(lbl, []).append(per_run[r.name])
        info[lbl] = (residual, depth)
    return groups, info


def _figure(path: Path, means: dict[str, list[float]], info: dict[str, tuple[bool, int]], synthetic: bool) -> Path:
    """Fig. 7 style: each network's layer responses, one colour per depth, plain nets dashed."""
    colors = palette(sorted({d for _, d in info.values()}))
    return layer_responses_figure(
        means,
        {k: colors[info[k][1]] for k in means},
        {k for k in means if not info[k][0]},
        path,
        title=("SYNTHETIC DATA: " if synthetic else "") + "std of layer responses",
    )


def _method_section(page: Page, images: int) -> None:
    page.heading("Method")
    page.bullets(
        [
            "Response: the output of the BN after each 3x3 conv (the stem conv is layer 1), before the shortcut "
            "addition and the ReLU; forward hooks on those BN modules, network in eval mode.",
            f"Images: the first {images} test images of each run's dataset, normalised as in training.",
            "Std: per channel over all images and positions, then averaged over channels; several seeds of one "
            "network are averaged layer by layer.",
        ]
    )


def _claims(info: dict[str, tuple[bool, int]], overall: dict[str, float]) -> list[dict]:
    claims = []
    pairs = [d for d in sorted({d for _, d in info.values()}) if f"ResNet-{d}" in overall and f"plain-{d}" in overall]
    if pairs:
        ok = all(overall[f"ResNet-{d}"] < overall[f"plain-{d}"] for d in pairs)
        claims.append(
            {
                "claim": paper.CLAIM_SMALLER,
                "reproduced": ok,
                "detail": "; ".join(
                    f"depth {d}: ResNet {overall[f'ResNet-{d}']:.3f} vs plain {overall[f'plain-{d}']:.3f}"
                    for d in pairs
                ),
            }
        )
    resnets = sorted(d for res, d in info.values() if res)
    if len(set(resnets)) > 1:
        a, b = resnets[0], resnets[-1]
        claims.append(
            {
                "claim": paper.CLAIM_SHRINK,
                "reproduced": overall[f"ResNet-{b}"] < overall[f"ResNet-{a}"],
                "detail": f"mean std ResNet-{b} {overall[f'ResNet-{b}']:.3f} vs ResNet-{a} "
                f"{overall[f'ResNet-{a}']:.3f}",
            }
        )
    return claims
