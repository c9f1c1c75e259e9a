"""One way to train a tiny real run for tests: `reslab train` in process on a small ImageFolder
tree, a few steps of resnet_cifar_8 on one thread. Tests that need a finished run (weights, a
config, checkpoints) build it here instead of spelling out their own command line."""

from __future__ import annotations

from pathlib import Path

from dataset_files import write_class_tree

from reslab.cli import main

# Two classes of 16x16 RGB images, a val/ folder and a test/ folder (imagefolder's own parts).
TINY_TREE = {"train": {"a": 12, "b": 12}, "val": {"a": 4, "b": 4}, "test": {"a": 4, "b": 4}}
TINY_MODEL = "resnet_cifar_8"


def tiny_tree(root: Path, counts: dict[str, dict[str, int]] | None = None, **options) -> Path:
    """root holding train/ (and the other parts of `counts`) of class-coloured PNGs."""
    write_class_tree(root, counts or TINY_TREE, **options)
    return root


def train_tiny_run(
    run: Path,
    tree: Path,
    *settings: str,
    iterations: int = 2,
    model: str = TINY_MODEL,
    extra: tuple[str, ...] = (),
) -> Path:
    """Train `iterations` steps on `tree` into `run` (asserting success); `settings` are `--set`
    values (section.key=value) on top of batch 8, one thread and a cache beside the run."""
    args = ["train", "--data", "imagefolder", "--data-dir", str(tree), "--model", model]
    args += ["--iterations", str(iterations), "--no-progress", "--run-dir", str(run), *extra]
    defaults = ("train.batch_size=8", "train.threads=1", f"data.cache_dir={run.parent / 'cache'}")
    for setting in (*defaults, *settings):
        args += ["--set", setting]
    assert main(args) == 0, f"tiny run failed: {' '.join(args)}"
    return run
