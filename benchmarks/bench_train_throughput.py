"""ResNet-20 training throughput, end to end (data + augmentation + step): reslab vs a reference loop.

reslab: `InMemoryTrainBatches` (uint8 tensor in memory, batched pad-crop + flip + normalisation) feeding
reslab's own `train_step` with the `fast` recipe's settings (its precision, channels_last).
Reference, written the way torchvision's reference scripts do it: `torch.utils.data.DataLoader`
over the same images held as PIL images, `RandomCrop(size, padding=4)`, `RandomHorizontalFlip()`,
`ToTensor()`, `Normalize(...)`, eager float32 NCHW, SGD with momentum; num_workers 0 or 2,
whichever is faster here (measured in the warm-up and printed).

Same model (reslab resnet20, same parameter count), batch size, image count, threads, optimizer.
Rounds are interleaved A, B, A, B ... after a warm-up; we print the median img/s of each side and
the median, min and max of the per-round ratios (see ../shared/BENCHMARKING.md).

    python benchmarks/bench_train_throughput.py [--data fashion-mnist|synthetic-cifar] [--rounds 5]

--policies measures instead the cost of the modern augmentation (`reslab.data.augment`) on the
in-memory path: img/s of `InMemoryTrainBatches` with crop + flip alone ("off") and with each policy,
random erasing and MixUp/CutMix on top, the variants interleaved round by round; with --with-step
each batch also goes through a ResNet-20 `train_step` (end-to-end training img/s).

    python benchmarks/bench_train_throughput.py --policies [--data synthetic-cifar] [--with-step]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from reslab import create_model
from reslab.config import Config, load_config
from reslab.data import InMemoryTrainBatches, TrainBatchSpec, load_cached, make_synthetic
from reslab.data.array_dataset import ArrayDataset
from reslab.data.norm import NormStats
from reslab.machine import cpu_model
from reslab.models import ResNet, count_macs
from reslab.train.optim import build_optimizer
from reslab.train.step import StepSettings

TARGET = 2.5  # issue 3: reslab >= 2.5x the reference


class PILDataset(Dataset):
    """The same uint8 images as PIL images, as a user of torchvision datasets would hold them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        mode = "L" if images.shape[1] == 1 else "RGB"
        arrays = images.permute(0, 2, 3, 1).numpy()
        self.images = [Image.fromarray(a[..., 0] if mode == "L" else a, mode) for a in arrays]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def reference_round(model, optimizer, loader, steps: int) -> float:
    """img/s of `steps` steps: DataLoader + PIL transforms, eager fp32 NCHW."""
    model.train()
    done, start = 0, time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
        if done == steps:
            break
    return steps * loader.batch_size / (time.perf_counter() - start)


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on this machine: the ceiling of any fp32 training step."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def reslab_round(model, optimizer, settings, batches: InMemoryTrainBatches, steps: int, epoch: int) -> float:
    """img/s of `steps` training steps: reslab's batches through reslab's `train_step` (what the
    Trainer runs per step, without its logging and checkpoint bookkeeping)."""
    from reslab.train.step import train_step

    model.train()
    start, done = time.perf_counter(), 0
    for batch in batches.epoch(epoch):
        train_step(model, optimizer, batch, settings)
        done += 1
        if done == steps:
            break
    assert done == steps, f"an epoch has only {done} batches; lower --steps or --batch-size"
    return steps * batches.batch_size / (time.perf_counter() - start)


# The --policies variants: name -> `Augmentation` on top of crop + flip.
POLICY_VARIANTS = {
    "off": {},
    "trivialaugment": {"policy": "trivialaugment"},
    "randaugment": {"policy": "randaugment"},
    "autoaugment": {"policy": "autoaugment"},
    "erasing+mixup/cutmix": {"random_erasing": 0.25, "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
    "trivialaugment+erasing+mixup/cutmix": {
        "policy": "trivialaugment",
        "random_erasing": 0.25,
        "mixup_alpha": 0.2,
        "cutmix_alpha": 1.0,
    },
}


def policy_round(batches: InMemoryTrainBatches, steps: int, epoch: int, step=None) -> float:
    """img/s of `steps` batches of `epoch` (each through `step(x, y)` when given)."""
    start, done = time.perf_counter(), 0
    for x, y in batches.epoch(epoch):
        if step is not None:
            step(x, y)
        done += 1
        if done == steps:
            break
    assert done == steps, f"an epoch has only {done} batches; lower --steps or --batch-size"
    return steps * batches.batch_size / (time.perf_counter() - start)


def policies_main(args: argparse.Namespace, ds) -> None:
    """--policies: the in-memory pipeline's img/s with each augmentation variant, side by side."""
    import torchvision

    from reslab.data.augment import Augmentation
    from reslab.train.step import StepSettings, train_step

    c, h, _ = ds.image_shape
    loaders = {
        name: InMemoryTrainBatches(
            ds, TrainBatchSpec(args.batch_size, normalize="channel", augmentation=Augmentation(**options))
        )
        for name, options in POLICY_VARIANTS.items()
    }
    step = None
    if args.with_step:
        model = create_model("resnet20", num_classes=len(ds.classes), in_chans=c).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            train_step(model, optimizer, (x, y), StepSettings(lr=0.05))

    for batches in loaders.values():  # warm-up
        policy_round(batches, max(2, args.steps // 3), 0, step)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for r in range(args.rounds):
        for name, batches in loaders.items():
            rates[name].append(policy_round(batches, args.steps, r + 1, step))
        print(f"round {r + 1}: " + "  ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items()), flush=True)
    print()
    print(f"command:   {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(
        f"hardware:  {cpu_model()}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}"
    )
    what = "InMemoryTrainBatches + resnet20 train_step (fp32 NCHW)" if args.with_step else "InMemoryTrainBatches alone"
    print(
        f"work:      {what}, {args.data} {c}x{h}x{h}, batch {args.batch_size}, "
        f"{args.steps} batches x {args.rounds} rounds, pad-4 crop + flip + channel normalisation, then"
    )
    off = statistics.median(rates["off"])
    for name, values in rates.items():
        ratios = [a / b for a, b in zip(values, rates["off"])]
        print(
            f"  {name:38s} median {statistics.median(values):8.0f} img/s   vs off: median "
            f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x)"
        )
    print(f"(off = crop + flip only: {off:.0f} img/s)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        default="fashion-mnist",
        choices=["fashion-mnist", "synthetic-cifar"],
        help="real Fashion-MNIST (28x28 grey) or random 32x32 RGB uint8 (CIFAR-shaped)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--set", action="append", default=[], help="override the reslab side's settings, e.g. train.precision=bf16"
    )
    parser.add_argument("--policies", action="store_true", help="img/s of each augmentation variant (in memory)")
    parser.add_argument("--with-step", action="store_true", help="--policies: each batch through a train step")
    parser.add_argument("--images", type=int, default=20_000, help="synthetic-cifar: images generated")
    return parser.parse_args()


def reslab_side(
    args: argparse.Namespace, ds: ArrayDataset
) -> tuple[Config, InMemoryTrainBatches, ResNet, Optimizer, StepSettings]:
    """The `fast` recipe's settings (with --set on top), the in-memory batches, its ResNet-20,
    optimizer and step settings."""
    from reslab.device import resolve_precision

    cfg = load_config(
        "fast",
        [
            "model.name=resnet20",
            f"train.batch_size={args.batch_size}",
            "optim.label_smoothing=0.0",
            "data.normalize=channel",
            *args.set,
        ],
    )
    spec = TrainBatchSpec(
        args.batch_size, augment="crop-flip", pad=4, normalize="channel", channels_last=cfg.train.channels_last
    )
    batches = InMemoryTrainBatches(ds, spec)
    ours = create_model("resnet20", num_classes=10, in_chans=ds.image_shape[0])
    if cfg.train.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(ours, cfg.optim)
    precision = resolve_precision(cfg.train.precision, torch.device("cpu"))
    settings = StepSettings(lr=cfg.optim.lr, precision=precision, label_smoothing=cfg.optim.label_smoothing)
    return cfg, batches, ours, optimizer, settings


def reference_side(
    args: argparse.Namespace, ds: ArrayDataset, stats: NormStats
) -> tuple[ResNet, Optimizer, dict[int, DataLoader]]:
    """The reference's ResNet-20, SGD, and a DataLoader over PIL images for 0 and for 2 workers."""
    h = ds.image_shape[1]
    mean, std = stats.mean.flatten().tolist(), stats.std.flatten().tolist()
    transform = T.Compose([T.RandomCrop(h, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    pil = PILDataset(ds.images, ds.labels, transform)
    ref = create_model("resnet20", num_classes=10, in_chans=ds.image_shape[0])
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loaders = {
        w: DataLoader(
            pil, batch_size=args.batch_size, shuffle=True, num_workers=w, drop_last=True, persistent_workers=w > 0
        )
        for w in (0, 2)
    }
    return ref, ref_opt, loaders


def print_setup(
    args: argparse.Namespace,
    ours: ResNet,
    image_shape: tuple[int, int, int],
    warm: dict[int, float],
    settings: StepSettings,
    cfg: Config,
) -> None:
    """What was measured, on what: command, hardware, work, and how each side ran."""
    c, h, _ = image_shape
    print()
    print(f"command:   {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(
        f"hardware:  {cpu_model()} (ATen {torch.backends.cpu.get_cpu_capability()}), "
        f"{torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
    print(
        f"work:      resnet20 ({sum(p.numel() for p in ours.parameters()):,} params), {args.data} {c}x{h}x{h}, "
        f"batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, pad-4 crop + flip + normalise"
    )
    print(
        f"reference: DataLoader + PIL transforms, num_workers={max(warm, key=warm.get)} "
        f"(warm-up: 0 -> {warm[0]:.0f} img/s, 2 -> {warm[2]:.0f} img/s), eager fp32 NCHW, SGD momentum"
    )
    print(
        f"reslab:    InMemoryTrainBatches + train_step, {settings.precision} (train.precision {cfg.train.precision}), "
        f"{'channels_last' if cfg.train.channels_last else 'NCHW'}"
    )


def print_rates(
    ours: ResNet, image_shape: tuple[int, int, int], ours_rates: list[float], ref_rates: list[float]
) -> None:
    """The medians, the per-round ratios, and what the 2.5x target asks of the hardware."""
    c, h, _ = image_shape
    ratios = [a / b for a, b in zip(ours_rates, ref_rates)]
    print(f"median img/s: reslab {statistics.median(ours_rates):.1f}, reference {statistics.median(ref_rates):.1f}")
    print(
        f"ratio reslab/reference: median {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)"
    )
    # What the 2.5x target asks of the hardware: a training step costs about 3 forward
    # passes (forward, gradient of the input, gradient of the weights), 2 FLOPs per multiply-add.
    step_flops = 3 * 2 * count_macs(ours, h, in_chans=c)
    need = TARGET * statistics.median(ref_rates)
    print(
        f"target {TARGET}x: {need:.0f} img/s = {need * step_flops / 1e9:.0f} GFLOP/s of fp32 training compute "
        f"({step_flops / 1e6:.0f} MFLOP per image); "
        f"reslab now runs {statistics.median(ours_rates) * step_flops / 1e9:.0f}; "
        f"fp32 matmul peak measured on these {torch.get_num_threads()} threads: {gemm_peak_gflops():.0f} GFLOP/s"
    )


def compare_main(args: argparse.Namespace, ds: ArrayDataset) -> None:
    """The default: reslab's training img/s against the reference loop's, rounds interleaved."""
    n_images = args.steps * args.batch_size * (args.rounds + 1)
    ds = ds.subset(torch.arange(min(len(ds), n_images)))
    cfg, batches, ours, optimizer, settings = reslab_side(args, ds)
    ref, ref_opt, loaders = reference_side(args, ds, batches.stats)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())

    # Warm-up; pick the reference's faster worker count.
    warm = {w: reference_round(ref, ref_opt, loader, max(5, args.steps // 3)) for w, loader in loaders.items()}
    loader = loaders[max(warm, key=warm.get)]
    reslab_round(ours, optimizer, settings, batches, max(5, args.steps // 3), epoch=0)

    ours_rates, ref_rates = [], []
    for r in range(args.rounds):
        ours_rates.append(reslab_round(ours, optimizer, settings, batches, args.steps, epoch=r + 1))
        ref_rates.append(reference_round(ref, ref_opt, loader, args.steps))
        print(
            f"round {r + 1}: reslab {ours_rates[-1]:7.1f} img/s   reference {ref_rates[-1]:7.1f} img/s   "
            f"ratio {ours_rates[-1] / ref_rates[-1]:.2f}x",
            flush=True,
        )
    print_setup(args, ours, ds.image_shape, warm, settings, cfg)
    print_rates(ours, ds.image_shape, ours_rates, ref_rates)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.data == "fashion-mnist":
        ds = load_cached("fashion-mnist", "train", None)
    else:
        ds = make_synthetic("train", args.images, image_size=32, in_chans=3)
    if args.policies:
        policies_main(args, ds)
    else:
        compare_main(args, ds)


if __name__ == "__main__":
    main()
