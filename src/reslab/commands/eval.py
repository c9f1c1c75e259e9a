"""`reslab eval`: evaluate weights: top-1/top-5 error, loss, balanced accuracy and macro-F1 (for
imbalanced classes), per-class recall / precision / F1 / support, a confusion-matrix PNG, and the
calibration of the softmax (ECE, NLL, Brier score; reslab.evaluation.CalibrationTally) with a
reliability diagram PNG; also of the logits divided by the temperature `reslab calibrate` stored.

By default a run is evaluated exactly as it evaluated itself at its end: its own data settings
(config.yaml: dataset, data dir, split, image size, memory layout, precision, flip TTA) and the
preprocessing recorded with its weights (reslab.evaluation.plan_evaluation). Flags override one
setting each. Also 10-crop and multi-scale (fully convolutional) testing of ImageFolder data, as
in the paper's Tables 2-4.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from reslab.atomic import atomic_write, atomic_write_bytes
from reslab.errors import ConfigError


def save_confusion_png(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = torch.tensor(confusion, dtype=torch.float64)
    normalised = matrix / matrix.sum(1, keepdim=True).clamp(min=1)
    n = len(classes)
    size = min(4 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        color = "white" if normalised[i, j] > 0.5 else "black"
                        ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def save_reliability_png(m: dict, path: Path, title: str) -> None:
    """Reliability diagram: per confidence bin, accuracy against mean confidence (the diagonal is
    perfect calibration); the calibrated curve too when `m` has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [("softmax of the logits", m, "tab:blue")]
    if "calibrated" in m:
        curves.append((f"logits / T (T = {m['calibrated']['temperature']:.3g})", m["calibrated"], "tab:orange"))
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    for i, (label, metrics, color) in enumerate(curves):
        r = metrics["reliability"]
        filled = [b for b, n in enumerate(r["images"]) if n]
        if i == 0:  # bars of the first curve's bins: accuracy per equal-width bin
            ax.bar(
                [(b + 0.5) / r["bins"] for b in filled],
                [r["accuracy"][b] for b in filled],
                width=1 / r["bins"],
                color=color,
                alpha=0.25,
                edgecolor=color,
            )
        ax.plot(
            [r["confidence"][b] for b in filled],
            [r["accuracy"][b] for b in filled],
            "o-",
            color=color,
            markersize=4,
            label=f"{label}: ECE {100 * metrics['ece']:.2f}%",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"confidence (top-1 probability; {m['reliability']['bins']} bins)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def calibration_lines(m: dict, meta) -> list[str]:
    """What `reslab eval` prints about calibration: the logits' metrics, then the calibrated ones."""
    lines = [
        f"  calibration ECE {100 * m['ece']:.2f}%   NLL {m['nll']:.4f}   Brier {m['brier']:.4f}   "
        f"(softmax of the logits; ECE over {m['reliability']['bins']} confidence bins, Brier summed over classes)"
    ]
    if "calibrated" in m:
        c = m["calibrated"]
        fit = meta.temperature_fit
        source = f" on {fit['images']} {fit.get('part', '')} images of {fit.get('dataset', '?')}" if fit else ""
        lines.append(
            f"  calibrated  ECE {100 * c['ece']:.2f}%   NLL {c['nll']:.4f}   Brier {c['brier']:.4f}   "
            f"(logits / T, T = {c['temperature']:.4g} stored by `reslab calibrate`{source})"
        )
    return lines


PER_CLASS = (  # evaluate()'s per-class lists, keyed by class name in metrics.json and --json
    "per_class_accuracy",
    "per_class_recall",
    "per_class_precision",
    "per_class_f1",
    "per_class_support",
)
MAX_TABLE_CLASSES = 30  # the per-class table is printed up to this many classes (all are in metrics.json)


def per_class_table(classes: list[str], m: dict) -> str:
    """Recall, precision, F1 (percent) and support (images) per class, as printed by `reslab eval`."""
    width = max(len("class"), *(len(c) for c in classes))
    lines = [f"  {'class':<{width}}  {'recall':>7}  {'precision':>9}  {'F1':>7}  {'images':>7}"]
    for i, c in enumerate(classes):
        recall, precision, f1 = (100 * m[k][i] for k in ("per_class_recall", "per_class_precision", "per_class_f1"))
        lines.append(f"  {c:<{width}}  {recall:6.2f}%  {precision:8.2f}%  {f1:6.2f}%  {m['per_class_support'][i]:>7}")
    return "\n".join(lines)


def default_out_dir(source: str, weights_path: Path, run_dir, dataset: str) -> Path:
    """RUN/eval-DATASET for a run; ./eval-STEM-DATASET for a weights file or a shipped name (never
    beside a file that may sit in the installed package); ./eval-NAME-DATASET for hf-hub:USER/NAME."""
    if run_dir is not None:
        return run_dir.eval_dir(dataset)
    if source.startswith("hf-hub:"):  # the cached file is always weights.safetensors: name the repository
        return Path(f"eval-{source.partition('@')[0].rsplit('/', 1)[-1]}-{dataset}")
    return Path(f"eval-{weights_path.stem}-{dataset}")


def eval_command(args: argparse.Namespace) -> int:
    from reslab.data.decode import quiet_pillow_bomb_warning
    from reslab.device import resolve_device
    from reslab.evaluation import EvalRequest, evaluate_weights, plan_evaluation
    from reslab.rundir import RunDir
    from reslab.weights import load_weights, resolve_weights

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1; got {args.batch_size}")
    quiet_pillow_bomb_warning()
    device = resolve_device(args.device)
    weights_path = resolve_weights(args.weights)
    run = RunDir(args.weights) if Path(args.weights).is_dir() else None
    weights = load_weights(weights_path)
    tta = None if args.tta is None else args.tta == "flip"
    request = EvalRequest(
        dataset=args.data,
        data_dir=args.data_dir,
        part=args.part,
        tta_flip=tta,
        crops=args.crops,
        scales=tuple(args.scales) if args.scales else None,
        in_memory=True if args.in_memory else None,
        workers=args.workers,
        batch_size=args.batch_size,
    )
    plan = plan_evaluation(weights, run, request)
    m = evaluate_weights(weights, plan, device)
    meta, dataset = weights.meta, plan.source.dataset
    out_dir = Path(args.out) if args.out else default_out_dir(args.weights, weights_path, run, dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = meta.class_names
    title = f"{meta.model} on {dataset}: top-1 error {100 * m['top1_error']:.2f}%"
    save_confusion_png(m["confusion"], classes, out_dir / "confusion.png", title)
    save_reliability_png(m, out_dir / "reliability.png", f"{meta.model} on {dataset} ({plan.part} part)")
    report = {
        "weights": str(weights_path),
        "model": meta.model,
        "dataset": dataset,
        "part": plan.part,
        "crops": args.crops,
        "scales": args.scales,
        "tta": "flip" if plan.tta_flip else "none",
        "precision": plan.precision,
        **m,
        **{k: dict(zip(classes, m[k])) for k in PER_CLASS},
    }
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(report, indent=2).encode())
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "confusion"}, indent=2))
        return 0
    print(f"{meta.model} on {dataset} ({m['images']} images, {plan.describe()})")
    print(
        f"  top-1 error {100 * m['top1_error']:6.2f}%   (accuracy {100 * m['accuracy']:.2f}%, "
        f"balanced accuracy {100 * m['balanced_accuracy']:.2f}%, macro-F1 {100 * m['macro_f1']:.2f}%)"
    )
    print(f"  top-5 error {100 * m['top5_error']:6.2f}%")
    print(f"  loss        {m['loss']:.4f}")
    print("\n".join(calibration_lines(m, meta)))
    if len(classes) <= MAX_TABLE_CLASSES:
        print(per_class_table(classes, m))
    print(
        f"  confusion matrix: {out_dir / 'confusion.png'}; reliability diagram: {out_dir / 'reliability.png'}; "
        f"all metrics: {out_dir / 'metrics.json'}",
        file=sys.stderr,
    )
    return 0


def _scales(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 224,256; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"scales must be positive integers; got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate weights: top-1/top-5 error, balanced accuracy, macro-F1, per-class table, confusion matrix",
        description="Evaluate a run directory, weights file or shipped weights name. A run is evaluated as it "
        "evaluated itself at its end (its dataset, data dir, split, preprocessing, precision and TTA); each flag "
        "overrides one of those. Writes confusion.png, reliability.png (calibration) and metrics.json; with a "
        "temperature stored by `reslab calibrate`, also reports the calibrated ECE / NLL / Brier score.",
    )
    p.add_argument(
        "weights",
        metavar="RUN_OR_WEIGHTS",
        help="run directory, .safetensors file, shipped name, or hf-hub:USER/NAME[@REVISION]",
    )
    p.add_argument("--data", help="dataset (default: the one the weights were trained on)")
    p.add_argument("--data-dir", help="where the dataset files are (default: the run's)")
    p.add_argument(
        "--part",
        choices=["test", "val", "train"],
        help="test (default; an ImageFolder tree's val/), val (the held-out part of data.split=paper), train",
    )
    p.add_argument("--tta", choices=["none", "flip"], help="test-time augmentation (default: the run's)")
    p.add_argument(
        "--crops", type=int, choices=[1, 10], default=1, help="10: the paper's 10-crop testing (ImageFolder)"
    )
    p.add_argument(
        "--scales",
        type=_scales,
        help="fully convolutional multi-scale testing, shorter sides e.g. 224,256,384,480,640",
    )
    p.add_argument("--batch-size", type=int, help="images per batch (default 256, as training evaluates)")
    p.add_argument("--workers", type=int, help="DataLoader workers for streamed ImageFolder data (default: the run's)")
    p.add_argument("--in-memory", action="store_true", help="decode an ImageFolder into memory first (small sets)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="output directory (default: RUN/eval-DATASET, or ./eval-WEIGHTS-DATASET)")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=eval_command)
