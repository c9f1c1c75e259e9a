"""Inference speed on this CPU: `reslab predict`'s default path, reslab's PyTorch fast path and int8
file vs torchvision eager fp32 vs plain onnxruntime.

What is timed (BENCHMARKING.md, "count what a user waits for"): from a batch of decoded images
in memory, a uint8 tensor (B, C, H, W), to float32 logits, normalisation included on every side.

Sides, all with the same weights (random init; no pretrained weights on this machine), saved as a
weights file the way a run writes them:
  reslab predict  what `reslab predict WEIGHTS` / `reslab serve WEIGHTS` run by default:
                  `load_predictor(WEIGHTS)`, i.e. (onnxruntime installed, CPU) OnnxPredictor on the
                  weights' cached ONNX export (reslab.infer.onnx_cache). Its first use (export +
                  verification against PyTorch) and a later use (checksums, session) are timed
                  separately, once per model, not as speed.
  reference     torchvision.models.resnet50() in eval mode under torch.inference_mode(), eager
                float32, NCHW (for ResNet-20, which torchvision lacks: the same reslab network,
                unfused, eager float32)
  reslab fast   FastPredictor(compile=True): BN folded, channels_last, torch.compile with Inductor
                weight freezing, bf16 only where the CPU has native bf16 ("auto")
  reslab eager  FastPredictor(compile=False): folded + channels_last, no compilation
  onnxruntime   the same .onnx file as `reslab predict` runs (folded float32, written by the
                exporter of `reslab export`), a plain InferenceSession: default CPU provider and
                options, intra_op_num_threads = torch.get_num_threads(), normalisation in numpy
  reslab int8   that file quantised as `reslab export --int8` does (reslab.infer.quantize: static
                QDQ, per-channel int8 weights, uint8 activations, stem conv float32), run through
                `OnnxPredictor` as `reslab predict model.int8.onnx` runs it. Calibrated on random
                uint8 images other than the timed ones (the weights are random too); its numerical
                difference from fp32 is printed with the speed, and the accuracy of the method on
                real data is measured by benchmarks/bench_int8_accuracy.py.

Protocol: one warm-up round (it also pays torch.compile's cold start, reported separately),
then interleaved rounds A, B, C, D, E, A, B, ...; per side the median time per batch; per round
the ratio reference / side, reported as min / median / max, and for reslab predict, reslab fast
and reslab int8 also onnxruntime fp32 / side (target for reslab predict: >= 1.0x). Numerical
difference of each side from the float32 reference is printed with the speed.

Usage:  python benchmarks/bench_inference.py [--quick] [--rounds N] [--case NAME ...] [--threads N]
        python benchmarks/bench_inference.py --sides predict                # reslab predict vs onnxruntime
        python benchmarks/bench_inference.py --model resnet20 --repeats 2   # a model at batch 1 and 16
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reslab.data.norm import NormStats
from reslab.infer.backends import OnnxPredictor, load_predictor
from reslab.infer.fast import FastPredictor, native_bf16_supported, resolve_precision
from reslab.infer.quantize import write_int8
from reslab.machine import cpu_model
from reslab.models import count_macs, create_model, model_info, to_torchvision
from reslab.weights import WeightsMeta, load_weights, save_weights

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
Side = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) uint8 -> (B, classes) float logits


@dataclass
class Case:
    name: str  # registry name
    input_size: int
    batch: int
    repeats: int  # model calls per side per round, so each timing is long enough to trust
    calibration: int  # random images the int8 side is calibrated on (set-up time, not timed)


CASES = {
    "resnet50-b16": Case("resnet50", 224, 16, 1, 32),
    "resnet50-b1": Case("resnet50", 224, 1, 8, 32),
    "resnet20-b256": Case("resnet20", 32, 256, 2, 256),
}
ONNX_LABEL = "onnxruntime (exported, fp32)"
INT8_LABEL = "reslab int8 (onnxruntime)"
BATCHES = (1, 16)  # with --model


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512"


def load() -> str:
    """1/5/15-minute load averages: a shared machine's other work shows up here."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def print_header(args: argparse.Namespace) -> None:
    import onnxruntime

    print("reslab inference benchmark")
    print(f"command:      {shlex.join([sys.executable, *sys.argv])}")
    print(f"hardware:     {cpu_model()}, {os.cpu_count()} logical CPUs; flags: {cpu_flags()}")
    print(
        f"software:     torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"python {platform.python_version()}, {torch.backends.cpu.get_cpu_capability()} kernels"
    )
    print(f"threads:      torch.get_num_threads() = {torch.get_num_threads()} (onnxruntime intra-op: same)")
    print(
        f"precision:    fast path '{args.precision}' -> {resolve_precision(args.precision)} "
        f"(native bf16 on this CPU: {native_bf16_supported()})"
    )
    print(f"rounds:       1 warm-up + {args.rounds} interleaved; timed = uint8 batch in memory -> float32 logits")
    print(f"load average: {load()} at start (other processes on these cores distort absolute times)")
    print()


def reference_side(case: Case, model: torch.nn.Module) -> tuple[str, Side]:
    """torchvision's ResNet-50 (eager fp32, NCHW) holding the same weights; else the reslab net unfused."""
    if case.name == "resnet50":
        import torchvision

        tv = torchvision.models.resnet50()
        tv.load_state_dict(to_torchvision(model))
        tv.eval()
        net, label = tv, "torchvision eager fp32"
    else:
        net, label = model, f"reslab {case.name} eager fp32 (unfused)"

    def run(u8: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net((u8.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)

    return label, run


def weights_file(model: torch.nn.Module, case: Case, workdir: Path) -> Path:
    """The network as a reslab weights file (ImageNet normalisation), one per model: the cases of a
    model share it, and so its cached ONNX export."""
    path = workdir / case.name / "weights.safetensors"
    if not path.is_file():
        meta = WeightsMeta(model=case.name, num_classes=model.num_classes, in_chans=3, input_size=case.input_size)
        save_weights(path, model, meta, NormStats(IMAGENET_MEAN, IMAGENET_STD))
    return path


def predict_side(path: Path) -> tuple[str, Side]:
    """`reslab predict`'s default predictor for the weights file; its first use and a later use timed."""
    first_use = not path.with_name(path.name + ".onnx").exists()
    lines: list[str] = []
    start = time.perf_counter()
    load_predictor(path, log=lines.append)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    predictor, _, _ = load_predictor(path)
    again = time.perf_counter() - start
    backend = predictor.describe()["backend"]
    print(f"   reslab predict default: {lines[-1] if lines else backend}")
    if first_use and getattr(predictor, "cache", None) is not None:
        print(
            f"   first use (ONNX export + verification against PyTorch, once per weights file): {loaded:.1f} s; "
            f"a later start (checksums + session): {again:.2f} s"
        )
    else:
        print(f"   load (export made earlier): {loaded:.2f} s; again: {again:.2f} s")
    return f"reslab predict default ({backend})", predictor


def onnx_side(path: Path) -> Side:
    """Plain onnxruntime on `path`: default session options, torch's thread count, numpy normalisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    scale = (1.0 / (255.0 * IMAGENET_STD)).numpy()[None].astype(np.float32)
    shift = (-IMAGENET_MEAN / IMAGENET_STD).numpy()[None].astype(np.float32)

    def run(u8: torch.Tensor) -> torch.Tensor:
        x = u8.numpy().astype(np.float32) * scale + shift
        return torch.from_numpy(session.run(["logits"], {"input": x})[0])

    return run


def int8_side(fp32_path: Path, case: Case, workdir: Path) -> OnnxPredictor:
    """reslab's int8 file of the fp32 export, through OnnxPredictor as `reslab predict model.int8.onnx`."""
    calibration = torch.randint(
        0,
        256,
        (case.calibration, 3, case.input_size, case.input_size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(2),
    )  # not the timed images (seed 1)
    int8_path = workdir / case.name / f"{case.name}.int8.onnx"
    if not int8_path.is_file():
        write_int8(fp32_path, int8_path, calibration, NormStats(IMAGENET_MEAN, IMAGENET_STD))
    return OnnxPredictor(int8_path)


def timed(fn: Side, x: torch.Tensor, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - start) / repeats


def numerics(out: torch.Tensor, ref: torch.Tensor) -> str:
    diff = (out.float() - ref).abs().max().item()
    scale = ref.abs().max().item()
    agree = (out.argmax(1) == ref.argmax(1)).sum().item()
    return (
        f"max |logit diff| {diff:.2e} ({100 * diff / scale:.2g}% of the logit scale {scale:.2f}), "
        f"top-1 agreement {agree}/{len(ref)}"
    )


def ratio_line(label: str, times: dict[str, list[float]]) -> str:
    ratios = [o / t for o, t in zip(times[ONNX_LABEL], times[label])]
    return (
        f"   {label} vs onnxruntime fp32, per round (onnxruntime time / its time): "
        f"{min(ratios):.2f}x / {statistics.median(ratios):.2f}x / {max(ratios):.2f}x"
    )


def build_sides(
    model: torch.nn.Module, case: Case, args: argparse.Namespace, path: Path, workdir: Path, predict: tuple[str, Side]
) -> tuple[dict[str, Side], str]:
    """The implementations to time, by label, the reference first (torchvision's or the unfused
    net with --sides all, else `reslab predict`'s default), and the fast path's label ("" if none)."""
    predict_label, predict_fn = predict
    fp32_file = predict_fn.path if predict_fn.describe()["backend"] == "onnxruntime" else None
    sides: dict[str, Side] = {}
    if args.sides == "all":
        ref_label, ref_fn = reference_side(case, model)
        sides[ref_label] = ref_fn
    sides[predict_label] = predict_fn
    if fp32_file is not None:
        sides[ONNX_LABEL] = onnx_side(fp32_file)
    if args.sides != "all":
        return sides, ""
    preprocess = load_weights(path).preprocess
    fast = FastPredictor(model, preprocess, precision=args.precision, compile=not args.no_compile, dynamic=False)
    fast_label = f"reslab fast ({'compiled, ' if not args.no_compile else ''}{fast.precision})"
    sides[fast_label] = fast
    sides[f"reslab eager folded+CL ({fast.precision})"] = FastPredictor(model, preprocess, precision=args.precision)
    if fp32_file is not None:
        sides[INT8_LABEL] = int8_side(fp32_file, case, workdir)
    return sides, fast_label


def warm_up(sides: dict[str, Side], model: torch.nn.Module, u8: torch.Tensor) -> None:
    """One untimed call of each side (first calls build oneDNN primitives, compile, allocate), its
    logits compared with reslab's unfused fp32 network."""
    with torch.inference_mode():
        expected = model((u8.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)  # reslab unfused fp32
    for label, fn in sides.items():
        t0 = time.perf_counter()
        out = fn(u8)
        warm = time.perf_counter() - t0
        print(f"   warm-up {label:<40} {warm:8.2f} s   numerics vs fp32 reference: {numerics(out, expected)}")


def print_times(times: dict[str, list[float]], batch: int, compared: tuple[str, ...]) -> None:
    """Each side's median and its per-round ratios to the first side; then each of `compared`
    (those timed) against plain onnxruntime."""
    ref = next(iter(times.values()))
    print(
        f"   {'side':<40} {'median ms/batch':>15} {'images/s':>9}   ratio reference/side per round: min / median / max"
    )
    for label, ts in times.items():
        med = statistics.median(ts)
        ratios = [r / t for r, t in zip(ref, ts)]
        print(
            f"   {label:<40} {med * 1e3:15.1f} {batch / med:9.1f}   "
            f"{min(ratios):.2f}x / {statistics.median(ratios):.2f}x / {max(ratios):.2f}x"
        )
    for label in compared:
        if label in times and ONNX_LABEL in times:
            print(ratio_line(label, times))


def run_case(key: str, case: Case, args: argparse.Namespace, workdir: Path) -> None:
    torch.manual_seed(0)
    model = create_model(case.name).eval()
    macs = count_macs(model, case.input_size) / 1e9
    print(
        f"== {key}: {case.name} {case.input_size}x{case.input_size}, batch {case.batch}, "
        f"{macs:.3f} GMAC/image, {case.repeats} call(s) per side per round"
    )
    u8 = torch.randint(
        0,
        256,
        (case.batch, 3, case.input_size, case.input_size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(1),
    )

    path = weights_file(model, case, workdir)
    predict = predict_side(path)
    start = time.perf_counter()
    sides, fast_label = build_sides(model, case, args, path, workdir, predict)
    warm_up(sides, model, u8)
    setup = time.perf_counter() - start
    what = f"int8 calibration on {case.calibration} images, " if INT8_LABEL in sides else ""
    print(f"   (setup incl. {what}warm-up: {setup:.1f} s)")

    times: dict[str, list[float]] = {label: [] for label in sides}
    for _ in range(args.rounds):
        for label, fn in sides.items():
            times[label].append(timed(fn, u8, case.repeats))
    print_times(times, case.batch, (predict[0], fast_label, INT8_LABEL))
    print(f"   load average after the case: {load()}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 timed rounds instead of 5")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, --quick 3)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument(
        "--model",
        default=None,
        help=f"instead of the cases: this registry model at its native input size, batches {BATCHES}",
    )
    parser.add_argument("--repeats", type=int, default=None, help="model calls per side per round (default: per case)")
    parser.add_argument(
        "--sides",
        choices=("all", "predict"),
        default="all",
        help="predict: only `reslab predict`'s default path and plain onnxruntime on the same file",
    )
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--no-compile", action="store_true", help="fast path without torch.compile")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (and onnxruntime intra-op threads); default: torch's",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.rounds = args.rounds or (3 if args.quick else 5)
    print_header(args)
    if args.model:
        info = model_info(args.model)
        cases = {f"{args.model}-b{b}": Case(args.model, info.input_size, b, 8 if b == 1 else 1, 32) for b in BATCHES}
    else:
        cases = {key: CASES[key] for key in args.case or list(CASES)}
    if args.repeats:
        cases = {key: dataclasses.replace(case, repeats=args.repeats) for key, case in cases.items()}
    with tempfile.TemporaryDirectory(prefix="reslab-bench-") as tmp:
        for key, case in cases.items():
            run_case(key, case, args, Path(tmp))


if __name__ == "__main__":
    main()
