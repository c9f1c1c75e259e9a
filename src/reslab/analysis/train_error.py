"""The training error curve of a run, evaluated from its checkpoints.

The paper's Fig. 1 and Fig. 6 plot training error against iterations. metrics.jsonl has only the
running error of each epoch (measured on augmented mini-batches while the weights change), so the
degradation experiment keeps a checkpoint at every evaluation step and, once the run is finished,
evaluates each one on a fixed subset of the training images: eval mode (BN running statistics),
no augmentation, the preprocessing of the run's weights. The result goes to train_error.json and
the checkpoints are then pruned to the newest `keep`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from reslab.analysis.runs import TrainErrorCurve
from reslab.atomic import atomic_write_bytes
from reslab.checkpoint import read_checkpoint
from reslab.data.array_dataset import ArrayDataset
from reslab.data.batches import InMemoryEvalBatches
from reslab.data.sources import fit_arrays
from reslab.data.spec import EvalBatchSpec
from reslab.evaluation import data_source, evaluate
from reslab.records import dumps
from reslab.rundir import RunDir
from reslab.weights import load_weights

SUBSET_SEED = 1234  # which training images form the fixed subset (the same for every run)


def training_subset(run_dir: Path, images: int) -> ArrayDataset:
    """`images` fixed, seeded training images of the split the run trained on."""
    run = RunDir(run_dir)
    cfg = run.load_config()
    train = data_source(cfg).arrays("train")
    n = min(images, len(train))
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n].sort().values
    return train.subset(pick)


def training_error_curve(
    run_dir: Path, images: int, keep: int = 2, device: str | torch.device = "cpu"
) -> TrainErrorCurve:
    """Evaluate every checkpoint of a finished run on the training subset; write and return the
    curve (train_error.json). A curve already written is reused."""
    run = RunDir(run_dir)
    saved = TrainErrorCurve.read(run)
    if saved is not None:
        return saved
    weights = load_weights(run.weights, device)
    subset = fit_arrays(training_subset(run.path, images), weights.preprocess)
    batches = InMemoryEvalBatches(subset, EvalBatchSpec(256, stats=weights.stats, device=device))
    steps, errors = [], []
    paths = run.list_checkpoints()
    print(
        f"  {run.name}: training error of {len(paths)} checkpoints on {len(subset)} training images",
        file=sys.stderr,
    )
    for path in paths:
        checkpoint = read_checkpoint(path)
        weights.model.load_state_dict(checkpoint.eval_state_dict())
        m = evaluate(weights.model, batches.epoch(0), weights.meta.num_classes, device=torch.device(device))
        steps.append(checkpoint.step)
        errors.append(m["top1_error"])
    result = TrainErrorCurve(
        images=len(subset),
        steps=steps,
        train_top1_error=errors,
        what="top-1 error on a fixed subset of the training images (eval mode, no augmentation), "
        "evaluated from the checkpoint written at each step",
    )
    atomic_write_bytes(run.train_error, dumps(result))
    for old in paths[:-keep] if keep > 0 else []:
        run.remove_checkpoint(old)
    return result
