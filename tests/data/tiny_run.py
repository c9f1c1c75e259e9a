"""One way to train a tiny real run for tests: `reslab train` in process, a few steps of
resnet_cifar_8 on one thread, on a small ImageFolder tree (`train_tiny_run`) or on synthetic
images (`train_tiny_synthetic`). Tests that need a finished run (weights, a config, checkpoints),
or a run that stops with a given exit status, build it here instead of spelling out their own
command line; a run that differs from the tiny one passes its settings (`--set` values, which come
after the defaults and win) and options."""

from __future__ import annotations

from pathlib import Path

from dataset_files import write_class_tree

from reslab.cli import main

# Two classes of 16x16 RGB images, a val/ folder and a test/ folder (imagefolder's own parts).
TINY_TREE = {"train": {"a": 12, "b": 12}, "val": {"a": 4, "b": 4}, "test": {"a": 4, "b": 4}}
TINY_MODEL = "resnet_cifar_8"
# Synthetic runs: 32 images (4 steps an epoch in batches of 8), all of them trained on.
TINY_SYNTHETIC = ("data.synthetic_size=32", "data.split=full")


def tiny_tree(root: Path, counts: dict[str, dict[str, int]] | None = None, **options) -> Path:
    """root holding train/ (and the other parts of `counts`) of class-coloured PNGs."""
    write_class_tree(root, counts or TINY_TREE, **options)
    return root


def tiny_run_args(
    run: Path,
    tree: Path | None,
    *settings: str,
    data: str | None = "imagefolder",
    iterations: int | None = 2,
    epochs: float | str | None = None,
    model: str | None = TINY_MODEL,
    progress: bool = False,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The `reslab train` command line of a tiny run into `run`: `iterations` steps (or `epochs`)
    of `model` on `data` read from `tree`, without a progress bar unless `progress`, with batch 8,
    one thread and a data cache beside the run, then `settings` (section.key=value) and `extra`
    arguments. `data`, `tree` or `model` None leaves that flag out (a recipe or the data decides)."""
    args = ["train"]
    args += ["--data", data] if data is not None else []
    args += ["--data-dir", str(tree)] if tree is not None else []
    args += ["--model", model] if model is not None else []
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    elif iterations is not None:  # None and None: the recipe's length (or a --budget in `extra`)
        args += ["--iterations", str(iterations)]
    args += [] if progress else ["--no-progress"]
    args += ["--run-dir", str(run), *extra]
    defaults = ("train.batch_size=8", "train.threads=1", f"data.cache_dir={run.parent / 'cache'}")
    for setting in (*defaults, *settings):
        args += ["--set", setting]
    return args


def tiny_synthetic_args(run: Path, *settings: str, **options) -> list[str]:
    """tiny_run_args on TINY_SYNTHETIC images (data.synthetic_size=32, data.split=full)."""
    return tiny_run_args(run, None, *TINY_SYNTHETIC, *settings, data="synthetic", **options)


def train_tiny_run(run: Path, tree: Path | None, *settings: str, status: int = 0, **options) -> Path:
    """Train the tiny run of tiny_run_args into `run`, asserting that `reslab train` exits with
    `status` (0: it finished)."""
    args = tiny_run_args(run, tree, *settings, **options)
    rc = main(args)
    assert rc == status, f"reslab {' '.join(args)} exited {rc}, not {status}"
    return run


def train_tiny_synthetic(run: Path, *settings: str, status: int = 0, **options) -> Path:
    """train_tiny_run on TINY_SYNTHETIC images (data.synthetic_size=32, data.split=full)."""
    return train_tiny_run(run, None, *TINY_SYNTHETIC, *settings, data="synthetic", status=status, **options)
