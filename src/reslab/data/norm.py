"""Input normalisation: the statistics of a training set, and applying them to uint8 batches.

The paper (He et al. 2015, sec. 4.2) subtracts the per-pixel mean of the training images on
CIFAR and does not divide by a standard deviation; "channel" is the common per-channel mean/std
alternative. The statistics travel with a model (`to_dict` / `from_dict`) so that evaluation
and inference normalise exactly as training did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from reslab.errors import ConfigError
from reslab.vocab import NORMALIZE_KINDS

Normalize = Literal["pixel-mean", "channel", "none"]

_CHUNK = 4096  # images summed at a time; keeps int64 temporaries small for 50k-image datasets


@dataclass
class NormStats:
    """`x -> (x / 255 - mean) / std` for uint8 images; mean and std broadcast over (C, H, W)."""

    mean: torch.Tensor  # (C, H, W) per-pixel or (C, 1, 1) per-channel, in [0, 1] units, float32
    std: torch.Tensor  # (C, 1, 1) float32; all ones for "pixel-mean" and "none"

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) with x * scale + shift == (x / 255 - mean) / std: 2 passes, not 3."""
        scale = 1.0 / (255.0 * self.std)
        return scale, -self.mean / self.std

    def apply(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, C, H, W) uint8 -> (B, C, H, W) normalised `dtype`, computed in float32."""
        scale, shift = self.affine()
        out = images.to(torch.float32).mul_(scale).add_(shift)
        return out if dtype == torch.float32 else out.to(dtype)

    def to(self, device: torch.device | str) -> NormStats:
        return NormStats(self.mean.to(device), self.std.to(device))

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors, so they fit in a safetensors file or a checkpoint's state dict."""
        return {"mean": self.mean.detach().cpu().clone(), "std": self.std.detach().cpu().clone()}

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor]) -> NormStats:
        try:
            mean, std = tensors["mean"], tensors["std"]
        except KeyError as err:
            raise ConfigError(f"normalisation stats need 'mean' and 'std', missing {err}") from None
        if mean.dim() != 3 or std.dim() != 3:
            raise ConfigError(
                f"normalisation stats must be (C, H, W) or (C, 1, 1), got mean "
                f"{tuple(mean.shape)} and std {tuple(std.shape)}"
            )
        return cls(mean.float(), std.float())

    @classmethod
    def identity(cls, channels: int) -> NormStats:
        """Only the /255: what normalize="none" means."""
        return cls(torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1))


def compute_norm_stats(images: torch.Tensor, kind: Normalize) -> NormStats:
    """Statistics of (N, C, H, W) uint8 `images` (the training set) for normalisation `kind`.

    Sums run in int64 over chunks, so they are exact whatever N is; the population std is used.
    """
    if kind not in NORMALIZE_KINDS:
        raise ConfigError(f"unknown normalize {kind!r}; valid: {', '.join(NORMALIZE_KINDS)}")
    n, channels, height, width = images.shape
    if kind == "none":
        return NormStats.identity(channels)
    if n == 0:
        raise ConfigError("cannot compute normalisation statistics of an empty dataset")
    pixel_sum = torch.zeros(channels, height, width, dtype=torch.int64, device=images.device)
    square_sum = torch.zeros(channels, dtype=torch.int64, device=images.device)
    for start in range(0, n, _CHUNK):
        chunk = images[start : start + _CHUNK].to(torch.int64)
        pixel_sum += chunk.sum(0)
        if kind == "channel":
            square_sum += chunk.square().sum((0, 2, 3))
    pixel_mean = pixel_sum.double() / (n * 255.0)  # (C, H, W) in [0, 1]
    if kind == "pixel-mean":
        return NormStats(pixel_mean.float().cpu(), torch.ones(channels, 1, 1))
    count = n * height * width
    channel_mean = pixel_sum.sum((1, 2)).double() / (count * 255.0)  # (C,)
    variance = square_sum.double() / (count * 255.0**2) - channel_mean.square()
    std = variance.clamp_min(1e-12).sqrt()
    return NormStats(channel_mean.float().view(-1, 1, 1).cpu(), std.float().view(-1, 1, 1).cpu())
