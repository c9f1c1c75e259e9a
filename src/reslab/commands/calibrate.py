"""`reslab calibrate`: fit a temperature on held-out images and store it with the weights (wiring
only; the workflow, its checks and its report are reslab.infer.calibrate's)."""

from __future__ import annotations

import argparse
import sys

from reslab.commands.args import add_device, positive_int


def calibrate_command(args: argparse.Namespace) -> int:
    from reslab.infer.calibrate import calibrate

    result = calibrate(
        args.weights,
        dataset=args.data,
        data_dir=args.data_dir,
        part=args.part,
        out=args.out,
        batch_size=args.batch_size,
        device=args.device,
        warn=lambda line: print(f"reslab calibrate: warning: {line}", file=sys.stderr),
    )
    print("\n".join(result.lines()))
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
    p.add_argument("--batch-size", type=positive_int, help="images per batch (default 256)")
    add_device(p)
    p.set_defaults(func=calibrate_command)
