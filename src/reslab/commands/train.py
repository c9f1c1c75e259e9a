"""`reslab train` and `reslab demo`: parse, resolve the config, hand it to the loop.

`--data-dir DIR` without `--data` (or `--set data.dataset=...`) trains on what DIR holds: an
ImageFolder tree (DIR/train/<class>/ with images) or a CSV file (DIR is the file), each said in
one line; else the recipe's dataset if DIR holds its files; else a one-line error. `--resume` of
a finished run (summary.json and weights.safetensors written) says so and touches nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from reslab.commands.args import add_device, positive_int
from reslab.config import Config, list_recipes, load_config
from reslab.errors import ConfigError, DataError
from reslab.records import from_json
from reslab.rundir import RunDir, RunSummary


def _quoted(text: str) -> str:
    """`text` as a YAML double-quoted string: any character that is not printable, a quote or a
    backslash escaped (YAML's \\UXXXXXXXX), so the setting holds exactly the characters typed."""
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in text) + '"'


def _overrides(args: argparse.Namespace) -> list[str]:
    """Shorthand flags are --set overrides; explicit --set comes last and wins. The text flags are
    quoted: a directory named `on` or `2020-13-45` is a name, not YAML's true or a bad date."""
    pairs = [
        ("model.name", args.model),
        ("data.dataset", args.data),
        ("data.data_dir", args.data_dir),
        ("train.device", args.device),
    ]
    out = [f"{k}={_quoted(v) if v else 'null'}" for k, v in pairs if v is not None]  # "" is unset, as before
    numbers = [("train.epochs", args.epochs), ("train.iterations", args.iterations), ("train.seed", args.seed)]
    out += [f"{k}={v}" for k, v in numbers if v is not None]
    if args.epochs is not None:
        out.append("train.iterations=0")
    if args.iterations is not None:
        out.append("train.epochs=0")
    if args.epochs is not None or args.iterations is not None:
        out.append('train.budget=""')  # a length given in steps replaces a recipe's time budget
    if getattr(args, "budget", None) is not None:
        if args.epochs is not None or args.iterations is not None:
            raise ConfigError("--budget sets the run's length from the time it has: drop --epochs / --iterations")
        out.append(f"train.budget={_quoted(args.budget)}")
    if args.deterministic:
        out.append("train.deterministic=true")
    if args.no_progress:
        out.append("train.progress=false")
    return out + list(args.set or [])


def kept_text(summary: RunSummary) -> str:
    """Which weights the run ended with, and why."""
    kept = summary.kept
    if kept is None or kept.keep != "best":
        return "the last step's (train.keep=last)"
    if kept.top1_error is None:  # nothing was evaluated
        return "the last step's (train.keep=best, but no evaluation to choose by)"
    return (
        f"best {kept.part} top-1 error {100 * kept.top1_error:.2f}% at step {kept.step} of {summary.total} "
        "(train.keep=best)"
    )


def print_summary(summary: dict) -> None:
    """The last evaluation's errors (every part), which weights were kept and whether the run stopped early."""
    final = summary["final"]
    rows = [
        ("model", summary["model"]),
        ("data", summary["dataset"] + (" (SYNTHETIC)" if summary["synthetic_data"] else "")),
        ("steps / epochs", f"{summary['steps']} / {summary['epochs']}"),
    ]
    for key in sorted(final):
        if key.endswith("error"):
            rows.append((key.replace("_", " "), f"{100 * final[key]:.2f}%"))
    kept_evaluation = (summary.get("kept") or {}).get("evaluation") or {}
    for key in sorted(k for k in kept_evaluation if k.endswith("error") and k not in final):
        # train.eval_parts=watched: these parts were evaluated once, on the kept weights
        rows.append((f"kept {key.replace('_', ' ')}", f"{100 * kept_evaluation[key]:.2f}%"))
    rows.append(("kept", kept_text(from_json(RunSummary, summary))))
    calibrated = summary.get("calibrated")
    if calibrated:
        rows.append(
            (
                "calibrated",
                f"T = {calibrated['temperature']:.4g} on {calibrated['images']} val images: ECE "
                f"{100 * calibrated['ece_before']:.2f}% -> {100 * calibrated['ece_after']:.2f}%, NLL "
                f"{calibrated['nll_before']:.4f} -> {calibrated['nll_after']:.4f}",
            )
        )
    early = summary.get("stopped_early")
    if early:
        total = summary.get("total_steps", summary["steps"])
        rows.append(
            (
                "stopped early",
                f"at step {early['step']} of {total}: {early['evaluations_without_improvement']} evaluations "
                f"without a lower {summary['kept']['part']} top-1 error (train.early_stop={early['early_stop']})",
            )
        )
    rows += [("wall time", f"{summary['wall_time_s']:.1f} s"), ("run dir", summary["run_dir"])]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _folds(args: argparse.Namespace) -> int:
    """--folds K, or --resume of a K-fold run: the folds one after the other, then their table."""
    from reslab.train.folds import Stopped, folds_lines, resume_folds, train_folds

    def say(line: str) -> None:
        print(f"reslab train: {line}", file=sys.stderr, flush=True)

    try:
        if args.resume:
            summary = resume_folds(args.resume, say)
        else:
            summary = train_folds(resolve_new(args), args.run_dir, args.folds, say, ensemble=args.ensemble)
    except Stopped as stop:
        parent = Path(stop.result["run_dir"]).parent
        say(f"fold {stop.k} was stopped; resume the K-fold run with: reslab train --resume {parent}")
        return 3
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, once
        print(f"{summary.folds}-fold cross-validation (val = each fold of train in turn; kept weights' evaluations):")
        print("\n".join(folds_lines(summary)))
    return 0


def _train(args: argparse.Namespace) -> int:
    from reslab.train.loop import RUNTIME_SETTINGS, resolve_resume, train

    if args.ensemble and args.folds is None:
        raise ConfigError("--ensemble keeps the K networks of --folds K as one: add --folds K")
    if args.folds is not None or (args.resume and RunDir(args.resume).folds_file.is_file()):
        if args.folds is not None and args.resume:
            raise ConfigError("--resume continues a K-fold run with the folds it was started with: drop --folds")
        return _folds(args)
    if args.resume:
        run = RunDir(args.resume)
        if run.state() == "finished":
            print(f"{run} is finished: nothing to resume; its weights are {run.weights}")
            return 0
        # Runtime settings (threads, progress bar) may change on resume, e.g. more threads once
        # the cores are free; everything else comes from the run's config.yaml.
        runtime = [s for s in args.set or [] if s.split("=", 1)[0].strip() in RUNTIME_SETTINGS]
        if args.recipe or len(runtime) < len(args.set or []):
            print(
                "note: --resume uses the run's saved config.yaml; --recipe and --set are ignored "
                f"(except {', '.join(RUNTIME_SETTINGS)})",
                file=sys.stderr,
            )
        cfg = resolve_resume(Path(args.resume), runtime)
        summary = train(cfg, args.resume, resume=True)
    else:
        summary = train(resolve_new(args), args.run_dir)
    if "stopped" in summary:
        return 3
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print_summary(summary)
    return 0


def resolve_new(args: argparse.Namespace) -> Config:
    """The config of a new run; with --data-dir alone, the dataset is what the directory holds
    (reslab.data.detect; with data.download, what the settings name: the download fills it)."""
    from reslab.data.detect import dataset_in_dir

    overrides = _overrides(args)
    cfg = load_config(args.recipe, overrides)
    named = args.data is not None or any(o.split("=", 1)[0].strip() == "data.dataset" for o in args.set or [])
    if args.data_dir is None or named:
        return cfg
    found = dataset_in_dir(args.data_dir, cfg.data.dataset, cfg.data.download)
    if found is None or found.dataset == cfg.data.dataset:
        return cfg
    print(found.note, file=sys.stderr)
    return load_config(args.recipe, [f"data.dataset={found.dataset}", *overrides])


DEMO_BUDGET = "5m"  # `reslab demo` (and `make demo`): the whole command, on any CPU


def _demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.epochs is not None and args.budget is not None:
        raise ConfigError("--budget sets the demo's length from the time it has: drop --epochs")
    length = (
        [f"train.epochs={args.epochs}", "train.iterations=0", 'train.budget=""']
        if args.epochs is not None
        else [f"train.budget={_quoted(args.budget or DEMO_BUDGET)}"]
    )
    cfg = load_config("fast", length + ([f"data.data_dir={_quoted(args.data_dir)}"] if args.data_dir else []))
    from reslab.train.loop import train

    try:
        summary = train(cfg, args.run_dir)
    except DataError as exc:
        raise DataError(
            f"{exc}\nThe demo trains on Fashion-MNIST: `apt-get install dataset-fashion-mnist` "
            "(Debian) or pass --data-dir DIR with the four *-ubyte.gz files"
        ) from None
    print_summary(summary)
    test_error = summary["final"]["test_top1_error"]
    length_text = f"budget {cfg.train.budget}: " if cfg.train.budget else ""
    print(
        f"\n{cfg.model.name} on Fashion-MNIST ({length_text}{summary['epochs']:g} epochs, fast recipe): "
        f"test accuracy {100 * (1 - test_error):.2f}%, wall time {time.perf_counter() - start:.1f} s"
    )
    return 0


def _add_folds(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--folds",
        type=positive_int,
        metavar="K",
        help="K-fold cross-validation: K runs RUN/fold-1..K, each validating on one stratified fold of the "
        "training images (test untouched), then every metric's mean and std over the folds (RUN/folds.json)",
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="with --folds K: keep the K networks as one weights set (RUN/weights.safetensors); eval, predict, "
        "serve and export average their probabilities (K times one network's compute)",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="run directory (default: train.out_dir/TIMESTAMP-MODEL-DATA)")
    p.add_argument("--data-dir", help="where the dataset files are (data.data_dir)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a network (recipes: " + ", ".join(list_recipes()) + ")",
        description="Train a network. Settings layer: defaults < --recipe < shorthand flags < --set. "
        "Every setting is section.key (model, data, optim, schedule, train); "
        "see src/reslab/config.py or a recipe file for the list.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  reslab train --recipe cifar-paper --model resnet110 --data-dir ~/data\n"
        "  reslab train --recipe fast --epochs 10 --set optim.lr=0.1\n"
        "  reslab train --recipe images --data-dir photos/ --budget 10m\n"
        "  reslab train --recipe images --data-dir photos/ --folds 5\n"
        "  reslab train --resume runs/20261122-101500-resnet20-cifar10\n"
        "  torchrun --nproc_per_node=2 -m reslab train --recipe cifar-paper",
    )
    p.add_argument("--recipe", help=f"built-in ({', '.join(list_recipes())}) or a .yaml path")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one setting (repeatable)")
    p.add_argument("--model", help="model.name, e.g. resnet56 (`reslab models` lists them)")
    p.add_argument("--data", help="data.dataset: cifar10, cifar100, fashion-mnist, mnist, imagefolder, synthetic")
    # --epochs / --iterations stay plain numbers: the settings' range checks name the setting and its range
    p.add_argument("--epochs", type=float, help="train.epochs (clears train.iterations)")
    p.add_argument("--iterations", type=int, help="train.iterations (clears train.epochs)")
    p.add_argument(
        "--budget",
        metavar="TIME",
        help="train.budget: end the whole run within TIME (90s, 10m, 2h): its speed is measured at the start "
        "and the steps (and the schedule) fitted to it; replaces the recipe's epochs",
    )
    p.add_argument("--seed", type=int, help="train.seed")
    _add_folds(p)
    add_device(p, default=None)
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact resume on CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest good checkpoint")
    _add_common(p)
    p.set_defaults(func=_train)

    d = subparsers.add_parser(
        "demo",
        help="train a ResNet on Fashion-MNIST with the fast recipe in 5 minutes",
        description="Train a residual network (the fast recipe's, fast_resnet10) on real Fashion-MNIST "
        f"(Debian's dataset-fashion-mnist) with the `fast` recipe on a {DEMO_BUDGET} budget (the whole command, "
        "on any CPU: the epochs come from the speed measured at the start); prints test accuracy and wall time.",
    )
    d.add_argument(
        "--budget",
        metavar="TIME",
        default=None,
        help=f"the whole demo's time (default {DEMO_BUDGET}): its speed is measured and the epochs fitted to it",
    )
    d.add_argument("--epochs", type=float, default=None, help="a fixed number of epochs instead of a budget")
    _add_common(d)
    d.set_defaults(func=_demo)
