"""`reslab reproduce` and `reslab report`: argument parsing and wiring only.

The experiments live in their own modules (degradation, table6, layer_responses, imagenet_table);
each exposes NAME, SUMMARY and run(experiment_dir, execution) -> path of its report.html.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import shlex
import sys
from pathlib import Path
from types import ModuleType

from reslab.commands.args import add_device, duration, non_negative_int, positive_float, positive_int
from reslab.errors import ConfigError
from reslab.expdir import ExperimentDir, Settings
from reslab.rundir import REPORT_FILE

# Each module exposes NAME, SUMMARY, DEFAULT_DATA, DEFAULT_DEPTHS, TAKES (the Settings it uses) and
# run(experiment_dir, execution) -> the path of its report.html.
EXPERIMENTS = {
    "degradation": "reslab.analysis.degradation",
    "cifar10-table6": "reslab.analysis.table6",
    "layer-responses": "reslab.analysis.layer_responses",
    "imagenet-table": "reslab.analysis.imagenet_table",
}
FLAGS = {
    "data": "--data",
    "data_dir": "--data-dir",
    "seeds": "--seeds",
    "epochs": "--epochs",
    "iterations": "--iterations",
    "budget": "--budget",
    "depths": "--depths",
    "overrides": "--set",
    "train_images": "--train-images",
    "source": "--from",
    "runs": "--runs",
    "images": "--images",
    "weights": "--weights",
    "batch_size": "--batch-size",
    "compare": "--compare",
}


def experiment_module(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(name, list(EXPERIMENTS), n=1)
        raise ConfigError(
            f"unknown experiment {name!r}"
            + (f" (did you mean {close[0]}?)" if close else "")
            + f"; choose one of: {', '.join(EXPERIMENTS)}"
        )
    return importlib.import_module(EXPERIMENTS[name])


def parse_depths(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ConfigError(f"--depths expects comma-separated integers such as 20,56; got {text!r}") from None


def explicit_settings(args: argparse.Namespace, module: ModuleType) -> dict[str, object]:
    """The settings given on the command line; giving one the experiment does not take is an error."""
    given = {
        "data": args.data,
        "data_dir": args.data_dir,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "iterations": args.iterations,
        "budget": args.budget,
        "depths": parse_depths(args.depths) if args.depths else None,
        "overrides": args.set,
        "train_images": args.train_images,
        "source": args.source,
        "runs": args.runs,
        "images": args.images,
        "weights": args.weights,
        "batch_size": args.batch_size,
        "compare": args.compare,
    }
    given = {k: v for k, v in given.items() if v is not None}
    takes = module.TAKES
    extra = sorted(FLAGS[k] for k in given if k not in takes)
    if extra:
        raise ConfigError(
            f"{module.NAME} does not take {', '.join(extra)}; it takes {', '.join(sorted(FLAGS[k] for k in takes))}"
        )
    return given


def canonical_command(module: ModuleType, s: Settings, out: Path, parallel: int) -> str:
    """The command line that reproduces this experiment exactly, every setting spelled out."""
    parts = ["reslab", "reproduce", module.NAME]
    for key in sorted(module.TAKES, key=list(FLAGS).index):
        value = getattr(s, key)
        if value in (None, [], "") or (key == "data" and (s.source or s.runs)):
            continue  # layer-responses: --data only names the default --from
        if key == "depths":
            parts += ["--depths", ",".join(map(str, value))]
        elif isinstance(value, list):
            for v in value:
                parts += [FLAGS[key], str(v)]
        else:
            parts += [FLAGS[key], f"{value:g}" if isinstance(value, float) else str(value)]
    parts += ["--out", str(out)] + (["--parallel", str(parallel)] if parallel > 1 else [])
    return shlex.join(parts)


def _source_data(source: str | None) -> str | None:
    """layer-responses --from DIR: the dataset of that experiment (names the default --out); None
    when DIR holds none, or a damaged experiment.json (the experiment then says what is missing)."""
    try:
        record = ExperimentDir(source).read_record() if source else None
    except ConfigError:
        return None
    return record.settings.data if record and record.settings.data else None


def reproduce_command(args: argparse.Namespace) -> int:
    from reslab.analysis.experiment import DEFAULT_ROOT, Execution, Experiment

    module = experiment_module(args.experiment)
    name = module.NAME
    explicit = explicit_settings(args, module)
    data = explicit.get("data") or _source_data(explicit.get("source")) or module.DEFAULT_DATA
    out = Path(args.out) if args.out else DEFAULT_ROOT / (name if name == "imagenet-table" else f"{name}-{data}")
    exp = Experiment.open(out, name, explicit, Settings(data=data, depths=list(module.DEFAULT_DEPTHS)))
    exp.command = canonical_command(module, exp.settings, out, args.parallel)
    print(f"{name}: {module.SUMMARY}\nexperiment directory: {out}", file=sys.stderr)
    from reslab.train.loop import measure, resolve_resume, train

    execution = Execution(
        parallel=args.parallel,
        workers=args.workers,
        device=args.device,
        train=train,
        resolve_resume=resolve_resume,
        measure=measure,
    )
    report = module.run(exp, execution)
    print(f"report: {report}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from reslab.analysis.run_report import report_command_output

    page = report_command_output(args.run_dirs, Path(args.out), args.title)
    print(f"report: {page}")
    return 0


EPILOG = """experiments:
  degradation      plain-D vs ResNet-D training/test error curves (Fig. 1, 6); --depths, default 20,56
  cifar10-table6   ResNet-20/32/44/56/110 test error and params vs Table 6 (add 1202 with --depths)
  layer-responses  std of each 3x3 layer's response (Fig. 7) of a finished degradation experiment
                   (--from DIR, default runs/reproduce/degradation-DATA) or of given --runs
  imagenet-table   1-crop / 10-crop top-1/top-5 of --weights [NAME=]PATH on an ImageFolder val/ tree
                   (--data-dir) beside the paper's Tables 2-3

Rerunning a command resumes it: finished runs (summary.json) are reused, half-finished runs
(checkpoints, no summary.json) resume from their newest checkpoint, the rest are trained.
Training length: CIFAR defaults to the paper's 64k iterations; other datasets to 10 epochs; the
lr drops /10 at 50% and 75% of the iterations (the paper's 32k/48k of 64k). --budget TIME instead
measures each network here and gives every run one length, the curve points and the images each
point uses so that the whole experiment ends within TIME (decided once, kept in experiment.json).
--parallel K trains K runs at once (each `python -m reslab train` with train.threads=cores//K).
To spread ONE run over several processes or GPUs use torchrun, e.g.
  torchrun --nproc_per_node=4 -m reslab train --recipe cifar-paper --run-dir EXP/runs/resnet110-seed0 ...
(the exact per-run commands are in EXP/experiment.json and the report), then rerun reproduce.

examples:
  reslab reproduce degradation --data fashion-mnist --epochs 10 --parallel 2
  reslab reproduce degradation --data fashion-mnist --epochs 16 --compare docs/results/degradation-fashion-mnist
  reslab reproduce degradation --data fashion-mnist --depths 20,32 --budget 10m --parallel 2
  reslab reproduce layer-responses --data fashion-mnist
  reslab reproduce cifar10-table6 --data-dir ~/data --seeds 3
  reslab reproduce imagenet-table --data-dir ~/imagenet --weights ResNet-50=r50.safetensors
  reslab reproduce degradation --data synthetic --iterations 8 --depths 8,14 --set train.batch_size=16
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's experiments, with HTML/PNG reports",
        description="Reproduce an experiment of He et al. 2015 and write report.html (self-contained), "
        "PNG figures and results.json into the experiment directory.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("experiment", metavar="EXPERIMENT", help=", ".join(EXPERIMENTS))
    _add_training_flags(p)
    _add_analysis_flags(p)
    p.add_argument("--out", help="experiment directory (default runs/reproduce/EXPERIMENT-DATA)")
    p.add_argument("--parallel", type=positive_int, default=1, metavar="K", help="train K runs at once in subprocesses")
    p.add_argument(
        "--workers", type=non_negative_int, default=2, help="imagenet-table: DataLoader workers (default 2; 0: none)"
    )
    add_device(p)  # of the evaluations
    p.set_defaults(func=reproduce_command)

    r = subparsers.add_parser(
        "report",
        help="one HTML page comparing training runs",
        description="Write one self-contained HTML page comparing training runs: a table of final metrics, "
        "their training and test error curves overlaid, settings, commands, versions. The figure "
        "(STEM_error_curves.png) and the numbers (STEM_results.json) go beside the page.",
    )
    r.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="run directories (an experiment directory stands for all of its runs)",
    )
    r.add_argument("--out", default=REPORT_FILE, help=f"the page to write (default ./{REPORT_FILE})")
    r.add_argument("--title", help="page title")
    r.set_defaults(func=report_command)


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    """What the training experiments train: data, seeds, length, depths, --set overrides."""
    p.add_argument("--data", help="dataset: cifar10 (default), cifar100, fashion-mnist, mnist, imagefolder, synthetic")
    p.add_argument("--data-dir", help="where the dataset files are")
    p.add_argument("--seeds", type=positive_int, help="runs per network, seeds 0..N-1 (default 1)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_float, help="training length in epochs (converted to iterations)")
    length.add_argument("--iterations", type=positive_int, help="training length in iterations")
    length.add_argument(
        "--budget",
        type=duration,
        metavar="TIME",
        help="wall time of the whole experiment (90s, 30m, 2h): the runs share it; one length for every run, "
        "curve points and the images each uses chosen to fit (the last evaluation uses the whole test set)",
    )
    p.add_argument("--depths", help="comma-separated depths 6n+2, e.g. 20,56 (default: the experiment's)")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a training setting of every run (repeatable)",
    )


def _add_analysis_flags(p: argparse.ArgumentParser) -> None:
    """The settings only one experiment takes (degradation, layer-responses, imagenet-table)."""
    p.add_argument(
        "--train-images",
        type=positive_int,
        help="degradation: training images for the training-error curve (default 5000)",
    )
    p.add_argument(
        "--compare",
        metavar="EXPERIMENT_DIR",
        help="degradation: another schedule's finished experiment (its directory, or a folder holding its "
        "results.json, e.g. docs/results/degradation-fashion-mnist) to draw and tabulate beside this one",
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="EXPERIMENT_DIR",
        help="layer-responses: the degradation experiment whose runs to analyse",
    )
    p.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="layer-responses: run directories to analyse")
    p.add_argument("--images", type=positive_int, help="layer-responses: test images to measure (default 1000)")
    p.add_argument(
        "--weights",
        action="append",
        metavar="[NAME=]PATH",
        help="imagenet-table: weights file or run directory to evaluate (repeatable)",
    )
    p.add_argument("--batch-size", type=positive_int, help="imagenet-table: images per batch (default 32)")
