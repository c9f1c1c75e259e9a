"""The `images` recipe (train on your own images) on a real ImageFolder tree, on this machine's CPU.

The tree is written once from Debian's Fashion-MNIST files as a user's photos would be: one PNG per
image, train/<class>/ (the 60,000 training images, or --train-images of them, seeded), test/<class>/
(the official 10,000 test images) and no val/, so the recipe carves its validation images from
train/ itself (stratified, seeded). For each seed it runs the whole command

    reslab train --recipe images --data-dir TREE --seed S

in a fresh process and reports the wall time of that command (start-up, decoding the PNGs,
training, evaluations, writing the weights) and the test accuracy the run reports once, at its end,
for the weights it kept (chosen on validation).

    python benchmarks/bench_own_images.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reslab.device import native_bf16_supported
from reslab.machine import cpu_model

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_tree(root: Path, train_images: int | None) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png from the IDX files (once; reused after)."""
    done = root / ".complete"
    if done.is_file():
        return root
    parts = {"train": "train", "test": "t10k"}
    for split, prefix in parts.items():
        images = read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
        index = np.arange(len(labels))
        if split == "train" and train_images:
            index = np.sort(np.random.default_rng(0).permutation(len(labels))[:train_images])
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in index:
            Image.fromarray(images[i], "L").save(root / split / CLASSES[labels[i]] / f"{i:05d}.png")
    done.write_text("")
    return root


def run_once(tree: Path, seed: int, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"seed{seed}"
    cmd = [sys.executable, "-m", "reslab", "train", "--recipe", "images", "--data-dir", str(tree),
           "--seed", str(seed), "--run-dir", str(run_dir), "--no-progress", *extra]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"wall": wall, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-images", type=int, help="a seeded subset of the 60,000 training images")
    parser.add_argument("--tree", help="where to write (or find) the PNG tree (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], help="extra --set overrides for the recipe")
    parser.add_argument("--out", help="where to keep the runs (default: a temp dir)")
    args = parser.parse_args()
    tree = Path(args.tree or tempfile.mkdtemp(prefix="reslab-fmnist-png-"))
    start = time.perf_counter()
    write_tree(tree, args.train_images)
    print(f"command:  {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"hardware: {cpu_model()} (ATen {torch.backends.cpu.get_cpu_capability()}, native bf16 "
        f"{native_bf16_supported()}), {torch.get_num_threads()} threads; torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
    print(f"tree:     {tree} (written or found in {time.perf_counter() - start:.0f} s; no val/)")
    out = Path(args.out or tempfile.mkdtemp(prefix="reslab-own-images-"))
    extra = [arg for s in args.set for arg in ("--set", s)]
    accs, walls = [], []
    for seed in args.seeds:
        result = run_once(tree, seed, out, extra)
        summary, wall = result["summary"], result["wall"]
        kept = summary.get("kept") or {}
        record = kept.get("evaluation") or summary["final"]  # the kept weights' evaluation (keep=best)
        acc = 1.0 - record["test_top1_error"]
        accs.append(acc)
        walls.append(wall)
        val_acc = 1 - record.get("val_top1_error", float("nan"))
        print(
            f"  seed {seed}: test accuracy {100 * acc:.2f}% (kept {kept.get('keep', 'last')} weights of step "
            f"{kept.get('step', summary['steps'])}, val accuracy {100 * val_acc:.2f}%), "
            f"wall {wall:.1f} s, {summary['steps']} steps",
            flush=True,
        )
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(
        f"test accuracy {100 * statistics.mean(accs):.2f} +- {100 * sd:.2f}% (min {100 * min(accs):.2f}), "
        f"wall {statistics.mean(walls):.0f} s (max {max(walls):.0f} s) over {len(accs)} seed(s); runs in {out}"
    )


if __name__ == "__main__":
    main()
