"""Peak memory of one ResNet-1202 training step at batch 128 on CPU, with and without activation
checkpointing (`model.activation_checkpointing=true`, i.e. `ResNet.set_grad_checkpointing`).

Each configuration runs in a fresh process, so its peak resident set size (ru_maxrss) is its own:
model + optimizer state + activations + allocator slack. We also print the peak measured after
building the model and optimizer (the baseline), the step's wall time, and check that the
checkpointed step computes the same gradients as the plain one.

    python benchmarks/bench_memory.py [--model resnet1202] [--batch-size 128] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from reslab.machine import cpu_model


def one_config(model_name: str, batch: int, steps: int, checkpointing: bool) -> dict:
    import torch.nn.functional as F

    from reslab import create_model

    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10)
    model.set_grad_checkpointing(checkpointing)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    times, grad_norm = [], 0.0
    for _ in range(steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "checkpointing": checkpointing,
        "peak_gib": peak,
        "baseline_gib": baseline,
        "step_s": min(times),
        "first_grad_norm_check": grad_norm,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet1202")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["plain", "checkpointed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(one_config(args.model, args.batch_size, args.steps, args.child == "checkpointed")))
        return
    results = {}
    for mode in ("plain", "checkpointed"):
        cmd = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--child",
            mode,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    total_gib = int(open("/proc/meminfo").read().split()[1]) / 2**20
    print(f"command:  {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"hardware: {cpu_model()}, {args.threads} threads, {total_gib:.1f} GiB RAM; torch {torch.__version__}")
    print(
        f"work:     {args.model} ({results['plain']['params']:,} params), one SGD step, batch {args.batch_size}, "
        "3x32x32, float32"
    )
    for mode, r in results.items():
        print(
            f"{mode:13s} peak RSS {r['peak_gib']:6.2f} GiB (model+optimizer {r['baseline_gib']:.2f} GiB), "
            f"step {r['step_s']:6.1f} s, fits in {total_gib:.0f} GiB with {total_gib - r['peak_gib']:.1f} GiB to spare"
        )
    p, c = results["plain"], results["checkpointed"]
    print(
        f"activation checkpointing: {p['peak_gib'] / c['peak_gib']:.2f}x less peak memory, "
        f"{c['step_s'] / p['step_s']:.2f}x the step time; gradient norm plain {p['first_grad_norm_check']:.6f} "
        f"vs checkpointed {c['first_grad_norm_check']:.6f}"
    )


if __name__ == "__main__":
    main()
