"""`reslab models`: list networks with parameters and multiply-adds."""

from __future__ import annotations

import argparse
import json


def models_command(args: argparse.Namespace) -> int:
    from reslab.models import describe, list_models, model_info

    names = list_models(args.pattern)
    if not names:
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
    p.set_defaults(func=models_command)
