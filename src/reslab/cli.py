"""The `reslab` command line: wiring only; the work lives in the packages.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func`, a
function of the parsed arguments returning an exit status. A `ReslabError` (a user mistake)
is printed as one line with exit status 2; no traceback reaches the user for those.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from reslab import __version__
from reslab.errors import ReslabError

# Command modules, imported lazily so `reslab models` does not pay for onnx, fastapi, ...
COMMANDS = {
    "models": "reslab.cli",
    "train": "reslab.train.cli",
    "eval": "reslab.evaluate",
    "demo": "reslab.train.cli",
    "predict": "reslab.infer.commands",
    "export": "reslab.infer.commands",
    "serve": "reslab.infer.commands",
    "reproduce": "reslab.analysis.commands",
    "report": "reslab.analysis.commands",
}


def _models_command(args: argparse.Namespace) -> int:
    from reslab.models import describe, list_models

    names = list_models(args.pattern)
    if not names:
        from reslab.models import model_info

        model_info(args.pattern)  # a parametric name (wrn_22_8) or an error with suggestions
        names = [args.pattern]
    rows = [describe(name) for name in names]
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
        return 0
    header = f"{'name':<20} {'family':<20} {'depth':>5} {'params':>13} {'mult-adds':>10}  {'input':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        macs = f"{r.macs / 1e9:.3f}G" if r.macs >= 1e9 else f"{r.macs / 1e6:.2f}M"
        print(
            f"{r.name:<20} {r.family:<20} {r.depth:>5} {r.params:>13,} {macs:>10}  {r.input_size:>3}x{r.input_size:<3}"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list networks with parameters and multiply-adds",
        description="List registered networks: family, depth, parameters and multiply-adds of "
        "convolutions + classifier at the native input size (32x32 CIFAR, 224x224 "
        "ImageNet), counted by running each network through torch's FLOP counter.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'resnet*' (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_models_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reslab",
        description="Deep residual networks: train, evaluate, reproduce the paper, predict, export, serve.",
    )
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    seen = set()
    for module_name in COMMANDS.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("reslab"):
                continue  # a command package not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ReslabError as exc:
        print(f"reslab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reslab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
