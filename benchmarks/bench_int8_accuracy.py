"""Accuracy of `reslab export --int8` on real data: shipped weights, real test set, fp32 vs int8.

The speed benchmark (bench_inference.py) runs random-weight networks, whose numerical difference
says little about accuracy. This script takes trained weights (default: the shipped
`wrn_10_2-fashion-mnist`), exports them to fp32 ONNX, quantises them as `reslab export --int8`
does (calibration images sampled from the training split, one sample per seed), and runs the
fp32 file, the int8 file and the PyTorch network on the *whole* test split (Fashion-MNIST: 10,000
images), each through the predictor `reslab predict` would use (uint8 images in, logits out, no
test-time augmentation). Prints test accuracy of each, top-1 agreement of int8 with fp32 and
max |logit diff| relative to the logit scale, per seed and as mean +- std.

    python benchmarks/bench_int8_accuracy.py [--weights NAME_OR_FILE] [--seeds 0 1 2]
        [--calibration-images 512] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from reslab.data import load_cached
from reslab.infer.backends import OnnxPredictor
from reslab.infer.export import export_model
from reslab.infer.fast import FastPredictor
from reslab.infer.quantize import (
    calibration_set,
    dataset_from_meta,
    export_int8,
    fit_dataset_images,
)
from reslab.machine import cpu_model
from reslab.weights import load_weights


def logits_of(predictor, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([predictor(images[i : i + batch]) for i in range(0, len(images), batch)])


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {spread:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="wrn_10_2-fashion-mnist", help="weights file, run dir or shipped name")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="calibration samples (default 0 1 2)")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--data-dir", default=None, help="where the dataset is (default: reslab's search path)")
    args = parser.parse_args()

    model, meta, mean, std = load_weights(args.weights)
    name, recorded_dir = dataset_from_meta(meta)
    if not name:
        raise SystemExit(f"{args.weights}: the weights name no dataset reslab can load ({meta.dataset!r})")
    test = load_cached(name, "test", args.data_dir or recorded_dir)
    images, labels = fit_dataset_images(test.images, meta), test.labels

    print("reslab int8 accuracy benchmark")
    print(f"command:   {shlex.join([sys.executable, *sys.argv])}")
    print(f"hardware:  {cpu_model()}; threads: torch.get_num_threads() = {torch.get_num_threads()}")
    print(
        f"software:  torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"python {platform.python_version()}"
    )
    print(f"weights:   {args.weights} ({meta.model}, trained on {meta.dataset or '?'})")
    print(f"test set:  {len(images)} {name} test images, no test-time augmentation")
    print(f"int8:      calibrated on {args.calibration_images} random training images per seed; seeds {args.seeds}")
    print()

    def accuracy(logits: torch.Tensor) -> float:
        return 100 * (logits.argmax(1) == labels).float().mean().item()

    with tempfile.TemporaryDirectory(prefix="reslab-int8-acc-") as tmp:
        fp32 = export_model(model, meta, mean, std, "onnx", Path(tmp) / "model.onnx")
        torch_logits = logits_of(FastPredictor(model, mean, std, precision="fp32"), images)
        ref = logits_of(OnnxPredictor(fp32.path), images)
        print(f"PyTorch fp32 (FastPredictor)   test accuracy {accuracy(torch_logits):.2f}%")
        print(
            f"ONNX fp32 (OnnxPredictor)      test accuracy {accuracy(ref):.2f}%   "
            f"(top-1 agreement with PyTorch {100 * (ref.argmax(1) == torch_logits.argmax(1)).float().mean():.2f}%)"
        )
        accs, agreements, rel_diffs = [], [], []
        for seed in args.seeds:
            start = time.perf_counter()
            data = calibration_set(
                name, meta, data_dir=args.data_dir or recorded_dir, images=args.calibration_images, seed=seed
            )
            q = export_int8(fp32.path, data, mean, std, min_agreement=0.0, out=Path(tmp) / f"model-s{seed}.int8.onnx")
            took = time.perf_counter() - start
            got = logits_of(OnnxPredictor(q.path), images)
            accs.append(accuracy(got))
            agreements.append(100 * (got.argmax(1) == ref.argmax(1)).float().mean().item())
            rel_diffs.append(100 * (got - ref).abs().max().item() / ref.abs().max().item())
            print(
                f"ONNX int8, calibration seed {seed}  test accuracy {accs[-1]:.2f}%   top-1 agreement with fp32 "
                f"{agreements[-1]:.2f}%   max |logit diff| {rel_diffs[-1]:.1f}% of the logit scale "
                f"{ref.abs().max().item():.2f}   (export --int8 took {took:.1f} s; its own check on "
                f"{q.holdout}: {100 * q.agreement:.2f}%)"
            )
        print()
        print(
            f"int8 over {len(args.seeds)} calibration sample(s): test accuracy {mean_std(accs)}% "
            f"(fp32 {accuracy(ref):.2f}%), top-1 agreement {mean_std(agreements)}%, "
            f"max |logit diff| {mean_std(rel_diffs)}% of the logit scale"
        )


if __name__ == "__main__":
    main()
