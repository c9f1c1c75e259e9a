"""Calibration of the shipped Fashion-MNIST networks on real data: ECE / NLL / Brier score of the
10,000 test images before and after temperature scaling (what `reslab calibrate` does).

Where T is fitted: the shipped networks were trained on all 60,000 training images
(data.split=full, read from the command recorded in their metadata), so the only labelled images
they never saw are the test images, and those must not choose T. T is therefore fitted on a
stratified slice of the *training* images (data.split=auto's val part: --val-fraction of each
class, seed --seed). That slice is disjoint from the test set but NOT from training: a network
is more confident on images it was trained on, so the T found there is too low (it corrects
less over-confidence than a held-out set would). The output says so per network. The test set is
only evaluated, once before and once after.

Each network runs as `reslab eval` runs it (its recorded flip TTA, fp32); T divides the logits as
in predict / serve. Metrics: ECE over 15 equal-width confidence bins (top-1), NLL = mean
cross-entropy, Brier = mean over images of the sum over classes of (p - onehot)^2 (range [0, 2]).

    python benchmarks/bench_calibration.py [--data-dir /usr/share/datasets/fashion-mnist]
        [--nets resnet20-fashion-mnist fast_resnet10-fashion-mnist] [--val-fraction 0.1] [--limit N]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import re
import shlex
import time

import torch

from reslab.config import load_config
from reslab.evaluation import EvalRequest, calibration_metrics, collect_logits, fit_temperature, plan_evaluation
from reslab.machine import cpu_model
from reslab.weights import WeightsMeta, load_weights

DEFAULT_NETS = ("resnet20-fashion-mnist", "fast_resnet10-fashion-mnist")


def trained_split(meta: WeightsMeta) -> str:
    """data.split of the run that made the weights, from the `reslab train` command in the metadata."""
    words = shlex.split(meta.command.split("  (")[0])
    recipe = words[words.index("--recipe") + 1] if "--recipe" in words else None
    overrides = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--set"]
    overrides = [o for o in overrides if re.match(r"data\.split=", o)]
    return load_config(recipe, overrides).data.split


def row(name: str, m: dict) -> str:
    return f"  {name:<28} {100 * m['ece']:6.2f}%  {m['nll']:7.4f}  {m['brier']:7.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--nets", nargs="+", default=list(DEFAULT_NETS))
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of each class of train to fit T on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified slice")
    parser.add_argument("--limit", type=int, help="at most this many images per part (a quick smoke run)")
    args = parser.parse_args()

    device = torch.device("cpu")
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {cpu_model()}, {threads} threads, Python {platform.python_version()}")
    for name in args.nets:
        start = time.perf_counter()
        weights = load_weights(name)
        split = trained_split(weights.meta)
        plan = plan_evaluation(weights, None, EvalRequest("fashion-mnist", args.data_dir))
        plan = dataclasses.replace(plan, precision="fp32")
        fit_source = plan.source.with_overrides(split="auto", val_fraction=args.val_fraction, seed=args.seed)
        fit_plan = dataclasses.replace(plan, source=fit_source, part="val")
        test_plan = dataclasses.replace(plan, part="test")

        fit_logits, fit_labels = collect_logits(weights, fit_plan, device, args.limit)
        temperature = fit_temperature(fit_logits, fit_labels)
        test_logits, test_labels = collect_logits(weights, test_plan, device, args.limit)
        fit_before = calibration_metrics(fit_logits, fit_labels)
        fit_after = calibration_metrics(fit_logits / temperature, fit_labels)
        before = calibration_metrics(test_logits, test_labels)
        after = calibration_metrics(test_logits / temperature, test_labels)
        accuracy = (test_logits.argmax(1) == test_labels).float().mean().item()

        tta = "flip TTA" if plan.tta_flip else "no TTA"
        print(f"\n{name} ({weights.meta.model}, trained with data.split={split}; {tta})")
        print(
            f"  T = {temperature:.4f}, fitted on {len(fit_labels)} training images "
            f"({fit_source.describe_val()}); test accuracy {100 * accuracy:.2f}% (T does not change it)"
        )
        if split == "full":
            print(
                "  NOTE: these fitting images were TRAINED ON (split=full): disjoint from the test set, not from "
                "training; T is biased low. The test set was not used to fit."
            )
        print(f"  {'':<28} {'ECE':>7}  {'NLL':>7}  {'Brier':>7}")
        print(row("fit set, T = 1", fit_before))
        print(row(f"fit set, T = {temperature:.3f}", fit_after))
        print(row(f"test ({len(test_labels)}), T = 1", before))
        print(row(f"test ({len(test_labels)}), T = {temperature:.3f}", after))
        print(f"  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
