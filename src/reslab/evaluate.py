"""`reslab eval`: evaluate weights on a dataset: top-1/top-5 error, loss, per-class accuracy and a
confusion-matrix PNG; flip test-time augmentation; 10-crop and multi-scale (fully convolutional)
evaluation for ImageFolder data, as in the paper's Tables 2-4.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from reslab.data import InMemoryBatches, NormStats, load_cached
from reslab.errors import ConfigError
from reslab.train.engine import evaluate
from reslab.weights import WeightsMeta, load_weights, resolve_weights


def ten_crop_predict(model: nn.Module) -> callable:
    """(B, 10, C, S, S) crops -> log of the crops' mean softmax (the paper's score averaging)."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[:2]
        probs = model(x.flatten(0, 1)).float().softmax(1).view(b, n, -1).mean(1)
        return probs.clamp_min(1e-12).log()

    return predict


def multi_scale_predict(model: nn.Module, device: torch.device, flip: bool) -> callable:
    """Per image: the whole image at each scale (fully convolutional), scores averaged."""

    def predict(images: list[list[torch.Tensor]]) -> torch.Tensor:
        out = []
        for scales in images:
            probs = []
            for img in scales:
                x = img[None].to(device)
                probs.append(model(x).float().softmax(1))
                if flip:
                    probs.append(model(torch.flip(x, dims=[3])).float().softmax(1))
            out.append(torch.cat(probs).mean(0))
        return torch.stack(out).clamp_min(1e-12).log()

    return predict


class _ToDevice:
    """Moves DataLoader batches to the device (lists of images stay on the CPU for multi-scale)."""

    def __init__(self, loader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self):
        for x, y in self.loader:
            yield (x.to(self.device) if isinstance(x, torch.Tensor) else x), y.to(self.device)


def save_confusion_png(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = torch.tensor(confusion, dtype=torch.float64)
    normalised = matrix / matrix.sum(1, keepdim=True).clamp(min=1)
    n = len(classes)
    size = min(4 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(
                            j,
                            i,
                            f"{int(matrix[i, j])}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if normalised[i, j] > 0.5 else "black",
                        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    weights_path = resolve_weights(args.weights)
    model, meta, mean, std = load_weights(weights_path, device)
    stats = NormStats(mean, std)
    from reslab.data import make_folder_loader  # torchvision: imported only when used

    dataset = args.data or meta.dataset.split(":")[0] or ""
    if not dataset:
        raise ConfigError("say which dataset to evaluate on with --data (cifar10, fashion-mnist, imagefolder, ...)")
    if args.crops == 10 or args.scales:
        if dataset != "imagefolder":
            raise ConfigError("--crops 10 and --scales need --data imagefolder (full-size images)")
        mode = "ten-crop" if args.crops == 10 else "multi-scale"
        loader = make_folder_loader(
            args.data_dir,
            "test",
            batch_size=1 if args.scales else args.batch_size,
            train=False,
            image_size=meta.input_size,
            workers=args.workers,
            eval_mode=mode,
            stats=stats,
        )
        if args.scales:
            loader.dataset.transform.scales = tuple(args.scales)  # type: ignore[attr-defined]
        predict = (
            ten_crop_predict(model) if args.crops == 10 else multi_scale_predict(model, device, args.tta == "flip")
        )
        batches = _ToDevice(loader, device)
    elif dataset == "imagefolder" and not args.in_memory and mean.shape[1:] == (1, 1):
        # Workers decode full-size images; weights trained in memory with a per-pixel mean
        # (or --in-memory) take the in-memory path below instead.
        loader = make_folder_loader(
            args.data_dir,
            "test",
            batch_size=args.batch_size,
            train=False,
            image_size=meta.input_size,
            workers=args.workers,
            stats=stats,
        )
        batches, predict = _ToDevice(loader, device), None
    else:
        ds = load_cached(
            dataset,
            "test",
            args.data_dir,
            image_size=meta.input_size if dataset == "imagefolder" else None,
            in_chans=meta.in_chans,
        )
        if ds.num_classes != meta.num_classes:
            raise ConfigError(f"{dataset} has {ds.num_classes} classes but the weights predict {meta.num_classes}")
        batches = InMemoryBatches(ds, args.batch_size, train=False, device=device, stats=stats).epoch(0)
        predict = None
    m = evaluate(
        model,
        batches,
        meta.num_classes,
        device=device,
        tta_flip=args.tta == "flip" and predict is None,
        predict=predict,
    )
    out_dir = Path(args.out) if args.out else (weights_path.parent / f"eval-{dataset}")
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = meta.classes or [str(i) for i in range(meta.num_classes)]
    title = f"{meta.model} on {dataset}: top-1 error {100 * m['top1_error']:.2f}%"
    save_confusion_png(m["confusion"], classes, out_dir / "confusion.png", title)
    report = {
        "weights": str(weights_path),
        "model": meta.model,
        "dataset": dataset,
        "crops": args.crops,
        "scales": args.scales,
        "tta": args.tta,
        **m,
        "per_class_accuracy": dict(zip(classes, m["per_class_accuracy"])),
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "confusion"}, indent=2))
        return 0
    print(
        f"{meta.model} on {dataset} ({m['images']} images"
        f"{', flip TTA' if args.tta == 'flip' else ''}{', 10-crop' if args.crops == 10 else ''}"
        f"{', scales ' + ','.join(map(str, args.scales)) if args.scales else ''})"
    )
    print(f"  top-1 error {100 * m['top1_error']:6.2f}%   (accuracy {100 * m['accuracy']:.2f}%)")
    print(f"  top-5 error {100 * m['top5_error']:6.2f}%")
    print(f"  loss        {m['loss']:.4f}")
    width = max(len(c) for c in classes)
    if len(classes) <= 30:
        print("  per-class accuracy:")
        for c, acc in zip(classes, m["per_class_accuracy"]):
            print(f"    {c:<{width}}  {100 * acc:6.2f}%")
    print(f"  confusion matrix: {out_dir / 'confusion.png'}; all metrics: {out_dir / 'metrics.json'}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate weights: top-1/top-5 error, per-class accuracy, confusion matrix",
        description="Evaluate a run directory, weights file or shipped weights name on a dataset's test "
        "split (ImageFolder: val/). Writes confusion.png and metrics.json.",
    )
    p.add_argument("weights", metavar="RUN_OR_WEIGHTS", help="run directory, .safetensors file or shipped name")
    p.add_argument("--data", help="dataset (default: the one the weights were trained on)")
    p.add_argument("--data-dir", help="where the dataset files are")
    p.add_argument("--tta", choices=["none", "flip"], default="none", help="test-time augmentation")
    p.add_argument(
        "--crops", type=int, choices=[1, 10], default=1, help="10: the paper's 10-crop testing (ImageFolder)"
    )
    p.add_argument(
        "--scales",
        type=lambda s: [int(v) for v in s.split(",")],
        help="fully convolutional multi-scale testing, shorter sides e.g. 224,256,384,480,640",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (ImageFolder)")
    p.add_argument("--in-memory", action="store_true", help="decode an ImageFolder into memory first (small sets)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="output directory (default: eval-DATASET beside the weights)")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=_run)


__all__ = ["WeightsMeta", "register"]
