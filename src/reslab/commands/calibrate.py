"""`reslab calibrate`: fit a temperature on held-out images and store it with the weights.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one number
T > 0 divides the logits before the softmax, chosen to minimise the negative log-likelihood on
images the network was not trained on (reslab.evaluation.fit_temperature). It changes how
confident the probabilities are, never which class comes first. From then on `reslab eval`
reports the calibrated metrics beside the network's own, `predict` and `serve` divide the logits
by T, and `export` records it (metadata reslab.temperature).

Which images: the run's val part (data.split=paper or auto, an ImageFolder tree's val/ folder, a
CSV's val rows), or held-out images named with --data/--data-dir. Never the test part unless
asked for with --part test, since the test numbers are then no longer unbiased. A run trained with
data.split=full has no val part, and a bare weights file does not record how its training images
were split: both are refused with a message naming what to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from reslab.errors import ConfigError

PART_WARNINGS = {
    "train": "the network was trained on these images, on which it is more confident than on new ones: "
    "T comes out too low",
    "test": "the test part now chose T: test metrics with T are no longer an unbiased estimate",
}


def no_val_part(where: str, reason: str) -> ConfigError:
    """The refusal when there is no val part to fit on, naming the ways forward."""
    return ConfigError(
        f"{where} has no val part to fit the temperature on: {reason}; name held-out images with "
        "--data imagefolder --data-dir DIR (a tree whose val/ folder the network was not trained on), or "
        "choose a part yourself: --part train (biased: the network was trained on it) or --part test "
        "(test numbers are then no longer unbiased)"
    )


def calibrate_command(args: argparse.Namespace) -> int:
    from reslab.device import resolve_device
    from reslab.evaluation import EvalRequest, calibration_metrics, collect_logits, fit_temperature, plan_evaluation
    from reslab.rundir import RunDir
    from reslab.weights import TEMPERATURE_RANGE, load_weights, resolve_weights, write_meta

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1; got {args.batch_size}")
    named = Path(args.weights)
    if args.out is None and not (named.is_file() or named.is_dir()):
        raise ConfigError(
            f"{args.weights!r} names shipped or downloaded weights, which are not rewritten in place; "
            "write the calibrated copy with --out FILE.safetensors"
        )
    if args.out is not None and Path(args.out).suffix != ".safetensors":
        raise ConfigError(f"--out must name a .safetensors file; got {args.out}")
    weights_path = resolve_weights(args.weights)
    run = RunDir(named) if named.is_dir() else None
    weights = load_weights(weights_path)
    request = EvalRequest(args.data, args.data_dir, part=args.part or "val", batch_size=args.batch_size)
    plan = plan_evaluation(weights, run, request)
    source = plan.source
    if plan.part == "val" and "val" not in source.parts:
        where = f"{source.dataset} {source.data_dir}" if source.data_dir else source.dataset
        if args.data is not None:
            reason = "it has no val part of its own (an ImageFolder tree's val/ folder, a CSV's val rows)"
        elif run is not None:
            reason = f"the run trained with data.split={source.split}, which holds out nothing"
        else:
            reason = (
                "a weights file does not record how its training images were split (for a run's val part, "
                "calibrate the run directory)"
            )
        raise no_val_part(where, reason)
    if plan.part in PART_WARNINGS:
        print(
            f"reslab calibrate: warning: fitting on the {plan.part} part: {PART_WARNINGS[plan.part]}", file=sys.stderr
        )

    logits, labels = collect_logits(weights, plan, resolve_device(args.device))
    before = calibration_metrics(logits, labels)
    temperature = fit_temperature(logits, labels)
    after = calibration_metrics(logits / temperature, labels)
    what = source.describe_val() if plan.part == "val" else None
    fit = {
        "dataset": source.dataset,
        "part": plan.part,
        "images": len(labels),
        "tta": "flip" if plan.tta_flip else "none",
        "nll_before": round(before["nll"], 6),
        "nll_after": round(after["nll"], 6),
        "ece_before": round(before["ece"], 6),
        "ece_after": round(after["ece"], 6),
        **({"val_part": what} if what else {}),
    }
    meta = dataclasses.replace(weights.meta, temperature=temperature, temperature_fit=fit)
    written = write_meta(weights_path, meta, args.out)

    print(
        f"{weights.meta.model}: T = {temperature:.4g} fitted on {len(labels)} images "
        f"({source.dataset} {plan.part} part{': ' + what if what else ''})"
    )
    print(f"  {'':6}  {'NLL':>7}  {'ECE':>7}  {'Brier':>7}")
    for name, m, note in (
        ("before", before, "T = 1: the logits as they are"),
        ("after", after, f"T = {temperature:.4g}"),
    ):
        print(f"  {name:6}  {m['nll']:7.4f}  {100 * m['ece']:6.2f}%  {m['brier']:7.4f}  ({note})")
    low, high = TEMPERATURE_RANGE
    if min(temperature / low, high / temperature) < 1.01:
        print(f"reslab calibrate: warning: T is at the edge of the allowed range [{low:g}, {high:g}]", file=sys.stderr)
    if weights.meta.calibrated:
        print(f"  (replaced T = {weights.meta.temperature:.4g}, fitted before)")
    print(f"wrote T into {written}; eval, predict, serve and export use it from now on")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="fit a temperature (softmax calibration) on held-out images and store it with the weights",
        description="Temperature scaling: fit one number T > 0 that divides the logits before the softmax, "
        "minimising the NLL on the run's val part (never the test part unless --part test), print NLL / ECE / "
        "Brier before and after, and store T in the weights' metadata (atomically, in place; --out for a copy). "
        "The top-1 class never changes; eval, predict, serve and export use T from then on.",
    )
    p.add_argument("weights", metavar="RUN_OR_WEIGHTS", help="run directory, .safetensors file or shipped name")
    p.add_argument("--data", help="dataset of held-out images (default: the one the weights were trained on)")
    p.add_argument("--data-dir", help="where the dataset files are (default: the run's)")
    p.add_argument(
        "--part",
        choices=["val", "train", "test"],
        help="images to fit on (default val; train and test only when asked, with a warning)",
    )
    p.add_argument("--out", help="write the calibrated weights to this .safetensors file instead of in place")
    p.add_argument("--batch-size", type=int, help="images per batch (default 256)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=calibrate_command)
