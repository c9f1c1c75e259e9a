"""Modern training augmentation from torchvision.transforms.v2: policies, random erasing, MixUp/CutMix.

The pieces of torchvision's reference recipe ("How to train state-of-the-art models", its
`references/classification` scripts), in the order that recipe applies them:

  policy      `data.policy`: TrivialAugmentWide, RandAugment (2 ops, `data.policy_magnitude`) or
              AutoAugment (the ImageNet policy), one draw per image, on uint8 pixels (C, H, W):
              dtype, shape and the 0..255 range are kept; grey (1-channel) images work (the colour
              ops leave them as they are, as PIL does). Bilinear resampling, fill 0, as the recipe.
  erasing     `data.random_erasing`: with that probability per image, one random rectangle of the
              *normalised* image set to 0, i.e. to the mean (torchvision's RandomErasing after
              Normalize with value=0, as its recipe).
  mixing      `data.mixup_alpha` / `data.cutmix_alpha`: MixUp and/or CutMix on the whole batch
              (each image paired with its neighbour, `roll(1)`), one of the two at random per batch
              when both are on; the labels (B,) int64 become soft targets (B, num_classes) float32.

Where they run: the in-memory loader (`InMemoryTrainBatches`) applies the policy per image to the uint8
batch before its batched normalise + pad-crop + flip (torchvision crops first; a policy's shifts
and shears then move the picture inside its frame before the crop window is taken, a difference
of order only), then erasing and mixing per batch. The streaming loader applies the policy in the
DataLoader workers after the random crop and flip (the recipe's order), erasing and mixing in the
main process after normalisation.

Determinism: torchvision's v2 transforms draw from torch's global CPU generator. Every call here
runs inside `seeded(seed)`, which forks that generator, seeds it with a seed derived from the
batch's `batch_seed(seed, epoch, rank, batch)` (`stream_seed`: one stream for the policy, one for
erasing + mixing, neither equal to the crop/flip generator's), and restores it afterwards. So a
batch's augmentation is a pure function of (seed, epoch, rank, batch): a resumed run sees the same
batches bit for bit, and nothing outside (the model's dropout, a checkpoint's saved RNG state) is
disturbed. Policies in streaming workers use the workers' own torch seeds, as their crops do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from reslab.errors import ConfigError
from reslab.vocab import POLICIES

# Streams of randomness derived from one batch seed (`stream_seed`): the crop/flip generator uses
# the batch seed itself, so these must differ from it and from each other.
POLICY_STREAM = 1
BATCH_STREAM = 2
_STREAM_STRIDE = 1_000_003  # the prime `reslab.data.batches` mixes seeds with
_SEED_MODULUS = 2**63


@dataclass(frozen=True)
class Augmentation:
    """The modern augmentation settings of a run (the `data.*` settings of the same names)."""

    policy: str = "none"  # a vocab.POLICIES name
    policy_magnitude: int = 9  # RandAugment's magnitude, 0..30
    random_erasing: float = 0.0  # probability per image
    mixup_alpha: float = 0.0  # 0 = off
    cutmix_alpha: float = 0.0  # 0 = off

    @property
    def mixes(self) -> bool:
        """MixUp or CutMix is on: training targets are soft (B, num_classes)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def per_batch(self) -> bool:
        """Something runs on whole normalised batches (erasing or mixing)."""
        return self.random_erasing > 0 or self.mixes

    @property
    def active(self) -> bool:
        return self.policy != "none" or self.per_batch

    def describe(self) -> list[str]:
        """The active parts in words (for a run's `augment:` line)."""
        words = []
        if self.policy != "none":
            name = {"trivialaugment": "TrivialAugmentWide", "randaugment": "RandAugment", "autoaugment": "AutoAugment"}
            magnitude = f" (2 ops, magnitude {self.policy_magnitude})" if self.policy == "randaugment" else ""
            words.append(f"{name[self.policy]}{magnitude}")
        if self.random_erasing > 0:
            words.append(f"random erasing p={self.random_erasing:g}")
        if self.mixup_alpha > 0:
            words.append(f"mixup alpha={self.mixup_alpha:g}")
        if self.cutmix_alpha > 0:
            words.append(f"cutmix alpha={self.cutmix_alpha:g}")
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            words[-2:] = [f"{words[-2]} or {words[-1]} per batch"]
        return words

    def check(self, num_classes: int) -> None:
        """A ConfigError for settings that cannot work on a dataset of `num_classes` classes."""
        if self.policy not in POLICIES:
            raise ConfigError(f"data.policy must be one of {', '.join(POLICIES)}; got {self.policy!r}")
        if self.mixes and num_classes < 2:
            raise ConfigError(
                f"data.mixup_alpha / data.cutmix_alpha mix the targets of two classes; this dataset has "
                f"{num_classes}: set them to 0"
            )


def stream_seed(batch_seed: int, stream: int) -> int:
    """The seed of one stream of a batch's randomness (POLICY_STREAM, BATCH_STREAM)."""
    return (batch_seed * _STREAM_STRIDE + stream) % _SEED_MODULUS


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global CPU generator seeded with `seed` inside, restored on exit. Only the CPU
    generator: every v2 draw is made there (CUDA generators are neither touched nor saved)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def policy_transform(name: str, magnitude: int = 9) -> v2.Transform | None:
    """The v2 transform of a `data.policy` name (None for "none"); works on uint8 tensors and PIL."""
    interpolation = v2.InterpolationMode.BILINEAR  # torchvision's recipe (--interpolation bilinear)
    if name == "none":
        return None
    if name == "trivialaugment":
        return v2.TrivialAugmentWide(interpolation=interpolation)
    if name == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=magnitude, interpolation=interpolation)
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interpolation)
    raise ConfigError(f"data.policy must be one of {', '.join(POLICIES)}; got {name!r}")


def apply_policy(policy: v2.Transform, images: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, C, H, W) uint8 -> (B, C, H, W) uint8, one independent draw of `policy` per image, all
    drawn from `seed`. A v2 policy on a batch would give every image the same operation."""
    out = torch.empty_like(images)
    with seeded(seed):
        for i, image in enumerate(images):
            out[i] = policy(image)
    return out


class BatchPolicy:
    """A `data.policy` applied per image to uint8 batches: `__call__(images, batch_seed)`, the
    draws from the batch's POLICY_STREAM."""

    def __init__(self, name: str, magnitude: int = 9) -> None:
        transform = policy_transform(name, magnitude)
        if transform is None:
            raise ConfigError("BatchPolicy needs a data.policy other than none")
        self.name, self.transform = name, transform

    def __call__(self, images: torch.Tensor, batch_seed: int) -> torch.Tensor:
        return apply_policy(self.transform, images, stream_seed(batch_seed, POLICY_STREAM))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


class BatchAugment:
    """Random erasing (per image) and MixUp / CutMix (per batch) of a normalised batch.

    `__call__(x, labels, batch_seed)`: x (B, C, H, W) float normalised, labels (B,) int64 -> x of the
    same shape and dtype, and labels (B,) int64 unchanged, or (B, num_classes) float32 soft targets
    when mixing is on. All draws from the batch's BATCH_STREAM.
    """

    def __init__(self, settings: Augmentation, num_classes: int) -> None:
        settings.check(num_classes)
        self.settings, self.num_classes = settings, num_classes
        self.erase = v2.RandomErasing(p=settings.random_erasing, value=0) if settings.random_erasing > 0 else None
        mixers: list[v2.Transform] = []
        if settings.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=settings.mixup_alpha, num_classes=num_classes))
        if settings.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=settings.cutmix_alpha, num_classes=num_classes))
        self.mix = v2.RandomChoice(mixers) if len(mixers) == 2 else mixers[0] if mixers else None

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, batch_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        with seeded(stream_seed(batch_seed, BATCH_STREAM)):
            if self.erase is not None:
                x = torch.stack([self.erase(image) for image in x])  # a rectangle of its own per image
            if self.mix is not None:
                x, labels = self.mix(x, labels)
        return x, labels

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.settings.describe())}, num_classes={self.num_classes})"
