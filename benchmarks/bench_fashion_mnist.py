"""Time to accuracy on real Fashion-MNIST with the `fast` recipe, on this machine's CPU cores.

For each epoch budget and seed, runs the whole command `reslab train --recipe fast --epochs E
--seed S` in a fresh process and reports wall time from the command's start to the end of its
final evaluation (inclusive: start-up, data loading, training, test evaluation with flip TTA,
writing weights), and the final test accuracy on the 10,000 test images. Prints mean +- std
over seeds and whether each budget met its target.

    python benchmarks/bench_fashion_mnist.py --budget 5:4.5 --budget 10:9.5 --seeds 0 1 2
    (--budget MINUTES:EPOCHS, checked against >= 93% within 5 min and >= 94% within 10 min)

Choosing settings: with --validate each run holds out a stratified 10% of the training images
(data.split=auto) and the benchmark reports the accuracy on those validation images only; the test
images are not shown. Settings are compared that way; the test set is then used once, for the
numbers reported (without --validate: all 60,000 training images, test accuracy).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from reslab.machine import cpu_model

TARGETS = {5: 0.93, 10: 0.94}  # minutes -> test accuracy (issue 3)


def run_once(
    epochs: float, seed: int, extra: list[str], out: Path, batch: int, part: str
) -> tuple[float, float, float]:
    run_dir = out / f"e{epochs:g}-s{seed}"
    cmd = [
        sys.executable,
        "-m",
        "reslab",
        "train",
        "--recipe",
        "fast",
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *extra,
    ]
    start = time.perf_counter()
    if part == "val":  # choosing settings: the run's own output (which shows test numbers too) goes to a file
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir.parent / f"{run_dir.name}.log", "wb") as log:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=log)
    else:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final"]
    img_per_s = final["step"] * batch / final["elapsed_s"]  # start to end of training: data + steps
    return wall, 1.0 - final[f"{part}_top1_error"], img_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--budget", action="append", default=[], help="MINUTES:EPOCHS, e.g. 5:4.5 (default: 5:4.5 and 10:9.5)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="extra --set overrides for the recipe")
    parser.add_argument("--out", help="where to keep the runs (default: a temp dir)")
    parser.add_argument(
        "--validate",
        action="store_true",
        help="hold out 10%% of train (stratified) and report accuracy on it, not test",
    )
    args = parser.parse_args()
    budgets = [tuple(float(v) for v in b.split(":")) for b in (args.budget or ["5:4.5", "10:9.5"])]
    sets = [*args.set, *(["data.split=auto", "data.val_fraction=0.1"] if args.validate else [])]
    extra = [arg for s in sets for arg in ("--set", s)]
    part = "val" if args.validate else "test"
    out = Path(args.out or tempfile.mkdtemp(prefix="reslab-fmnist-"))
    from reslab.config import load_config
    from reslab.device import native_bf16_supported, resolve_precision

    cfg = load_config("fast", sets)
    print(f"command:  {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"hardware: {cpu_model()} (ATen {torch.backends.cpu.get_cpu_capability()}, native bf16 "
        f"{native_bf16_supported()}), {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
    print(
        f"recipe:   fast: model {cfg.model.name}, batch {cfg.train.batch_size}, {cfg.schedule.name} lr {cfg.optim.lr}, "
        f"precision {cfg.train.precision} (here {resolve_precision(cfg.train.precision, torch.device('cpu'))}), "
        f"channels_last {cfg.train.channels_last}, flip TTA {cfg.train.tta_flip}"
    )
    rows = []
    for minutes, epochs in budgets:
        results = []
        for seed in args.seeds:
            wall, acc, img_per_s = run_once(epochs, seed, extra, out, cfg.train.batch_size, part)
            results.append((wall, acc))
            print(
                f"  {epochs:g} epochs, seed {seed}: {part} accuracy {100 * acc:.2f}%, wall {wall:.1f} s "
                f"({img_per_s:.0f} training img/s)",
                flush=True,
            )
        walls, accs = [r[0] for r in results], [r[1] for r in results]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        target = TARGETS.get(int(minutes))
        ok = all(w <= minutes * 60 for w in walls) and (target is None or min(accs) >= target)
        rows.append((minutes, epochs, statistics.mean(accs), sd, min(accs), max(walls), target, ok))
    print()
    print(f"{'budget':>7} {'epochs':>6} {part + ' accuracy (mean +- std, min)':>34} {'max wall':>9} {'target':>7}  met")
    for minutes, epochs, mean, sd, lo, wall, target, ok in rows:
        tgt = f">={100 * target:.0f}%" if target else "-"
        print(
            f"{minutes:>5g} m {epochs:>6g} {100 * mean:>20.2f} +- {100 * sd:.2f} ({100 * lo:.2f}) {wall:>8.1f}s "
            f"{tgt:>7}  {'yes' if ok else 'NO'}"
        )
    print(f"runs kept in {out}")


if __name__ == "__main__":
    main()
