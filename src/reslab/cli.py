"""The `reslab` command line: the dispatcher. The commands live in `reslab.commands`.

A `ReslabError` (a user mistake) is printed as one line with exit status 2; no traceback reaches
the user for those. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from reslab import __version__
from reslab.commands import COMMAND_MODULES
from reslab.errors import ReslabError
from reslab.machine import mark_command_start


def build_parser(modules: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The parser of every command. A command module that fails to import raises: a broken import
    is a bug, and a command that silently vanished from --help would hide it."""
    parser = argparse.ArgumentParser(
        prog="reslab",
        description="Deep residual networks: train, evaluate, reproduce the paper, predict, export, serve.",
    )
    parser.add_argument("--version", action="version", version=f"reslab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES if modules is None else modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # `reslab` alone: the help, not an error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    mark_command_start()  # the clock of a time budget (train.budget)
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
