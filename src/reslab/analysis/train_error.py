"""The training error curve of a run, evaluated from its checkpoints.

The paper's Fig. 1 and Fig. 6 plot training error against iterations. metrics.jsonl has only the
running error of each epoch (measured on augmented mini-batches while the weights change), so the
degradation experiment keeps a checkpoint at every evaluation step and, once the run is finished,
evaluates each one on a fixed subset of the training images: eval mode (BN running statistics),
no augmentation, the preprocessing of the run's weights. The result goes to train_error.json and
the checkpoints are then pruned to the newest `keep`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml

from reslab.analysis.runs import TRAIN_ERROR_FILE
from reslab.config import config_from_dict
from reslab.data import InMemoryBatches, NormStats, load_cached, train_val_split
from reslab.data.array_dataset import ArrayDataset
from reslab.train import checkpoint as ckpt
from reslab.train.engine import evaluate
from reslab.weights import load_weights

SUBSET_SEED = 1234  # which training images form the fixed subset (the same for every run)


def training_subset(run_dir: Path, images: int) -> ArrayDataset:
    """`images` fixed, seeded training images of the split the run trained on."""
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    d = cfg.data
    train = load_cached(
        d.dataset, "train", d.data_dir, cache_dir=d.cache_dir, image_size=d.image_size, synthetic_size=d.synthetic_size
    )
    if d.split == "paper":
        train, _ = train_val_split(train, d.val_size, seed=cfg.train.seed)
    n = min(images, len(train))
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n].sort().values
    return train.subset(pick)


def _state_dict(payload: dict) -> dict[str, torch.Tensor]:
    """The weights the run evaluates with: the EMA copy when there is one (as the loop does)."""
    if "ema" in payload:
        return {k[len("module.") :]: v for k, v in payload["ema"].items() if k.startswith("module.")}
    return payload["model"]


def training_error_curve(run_dir: Path, images: int, keep: int = 2, device: str | torch.device = "cpu") -> dict:
    """Evaluate every checkpoint of a finished run on the training subset; write and return
    {"images", "steps", "train_top1_error"}. A curve already written is reused."""
    out = run_dir / TRAIN_ERROR_FILE
    if out.is_file():
        return json.loads(out.read_text())
    model, meta, mean, std = load_weights(run_dir / "weights.safetensors", device)
    subset = training_subset(run_dir, images)
    batches = InMemoryBatches(subset, 256, train=False, stats=NormStats(mean.cpu(), std.cpu()), device=device)
    ckpt_dir = run_dir / "checkpoints"
    steps, errors = [], []
    paths = ckpt.list_checkpoints(ckpt_dir)
    print(
        f"  {run_dir.name}: training error of {len(paths)} checkpoints on {len(subset)} training images",
        file=sys.stderr,
    )
    for path in paths:
        payload = ckpt.load_checkpoint(path)
        model.load_state_dict(_state_dict(payload))
        m = evaluate(model, batches.epoch(0), meta.num_classes, device=torch.device(device))
        steps.append(int(payload["state"]["step"]))
        errors.append(m["top1_error"])
    result = {
        "images": len(subset),
        "steps": steps,
        "train_top1_error": errors,
        "what": "top-1 error on a fixed subset of the training images (eval mode, no augmentation), "
        "evaluated from the checkpoint written at each step",
    }
    out.write_text(json.dumps(result, indent=1))
    for old in paths[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return result
