"""`reslab eval`: evaluate weights (wiring only; the report, its files and figures are
reslab.analysis.eval_report's): top-1/top-5 error, loss, balanced accuracy and macro-F1 (for
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

from reslab.commands.args import add_device, add_tta, non_negative_int, positive_int


def eval_command(args: argparse.Namespace) -> int:
    from reslab.analysis.eval_report import evaluate_to_dir
    from reslab.data.decode import quiet_pillow_bomb_warning
    from reslab.evaluation import EvalRequest

    quiet_pillow_bomb_warning()
    overrides = EvalRequest(
        dataset=args.data,
        data_dir=args.data_dir,
        part=args.part,
        tta_flip=args.tta_flip,
        crops=args.crops,
        scales=tuple(args.scales) if args.scales else None,
        in_memory=True if args.in_memory else None,
        workers=args.workers,
        batch_size=args.batch_size,
    )
    outcome = evaluate_to_dir(args.weights, overrides, device=args.device, out=args.out)
    if args.json:
        print(json.dumps({k: v for k, v in outcome.report.to_json().items() if k != "confusion"}, indent=2))
        return 0
    print("\n".join(outcome.lines()))
    print(outcome.files_line(), file=sys.stderr)
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
    add_tta(p, "default: the run's")
    p.add_argument(
        "--crops", type=int, choices=[1, 10], default=1, help="10: the paper's 10-crop testing (ImageFolder)"
    )
    p.add_argument(
        "--scales",
        type=_scales,
        help="fully convolutional multi-scale testing, shorter sides e.g. 224,256,384,480,640",
    )
    p.add_argument("--batch-size", type=positive_int, help="images per batch (default 256, as training evaluates)")
    p.add_argument(
        "--workers", type=non_negative_int, help="DataLoader workers for streamed ImageFolder data (default: the run's)"
    )
    p.add_argument("--in-memory", action="store_true", help="decode an ImageFolder into memory first (small sets)")
    add_device(p)
    p.add_argument("--out", help="output directory (default: RUN/eval-DATASET, or ./eval-WEIGHTS-DATASET)")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=eval_command)
