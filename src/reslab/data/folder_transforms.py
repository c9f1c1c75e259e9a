"""Per-image transforms for ImageNet-style folders, run in DataLoader workers.

Training (He et al. 2015, sec. 3.4): the shorter side resized to a random length in [256, 480]
("scale augmentation"), a random 224x224 crop, a horizontal flip, and AlexNet's PCA colour
augmentation. Testing: the 10-crop test, or fully-convolutional scoring of the whole image at
shorter sides {224, 256, 384, 480, 640}; the single centre crop (256 -> 224) is today's standard.

Departure: the paper subtracts the per-pixel mean; we normalise per channel with the usual
ImageNet mean/std (torchvision's pretrained convention), which needs no pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from reslab.data.norm import NormStats
from reslab.errors import ConfigError

FolderAugment = Literal["scale", "rrc", "none"]
FOLDER_AUGMENT_KINDS = ("scale", "rrc", "none")
EvalMode = Literal["center", "ten-crop", "multi-scale"]
EVAL_MODES = ("center", "ten-crop", "multi-scale")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# AlexNet's PCA of ImageNet RGB pixels in [0, 1] (Krizhevsky et al. 2012; fb.resnet.torch values).
PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)  # columns are the eigenvectors

PAPER_SCALES = (224, 256, 384, 480, 640)  # shorter sides of the multi-scale test (sec. 3.4)


def imagenet_norm_stats() -> NormStats:
    """The ImageNet per-channel statistics as `NormStats`, for inference on uint8 tensors."""
    return NormStats(torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1))


class RandomShorterSideResize:
    """Resize so the shorter side is a uniformly random integer in [min_size, max_size]."""

    def __init__(self, min_size: int = 256, max_size: int = 480) -> None:
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: Image.Image) -> Image.Image:
        # torch's RNG, not `random`: DataLoader seeds it per worker.
        size = int(torch.randint(self.min_size, self.max_size + 1, ()).item())
        return TF.resize(image, size, interpolation=T.InterpolationMode.BILINEAR, antialias=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


class Lighting:
    """AlexNet's PCA colour augmentation on a (3, H, W) float image in [0, 1].

    Adds eigvec @ (alpha * eigval) to every pixel, alpha ~ N(0, alphastd^2) per image and
    component: the image's colour shifts along the principal axes of natural RGB variation.
    """

    def __init__(self, alphastd: float = 0.1) -> None:
        self.alphastd = alphastd
        self.eigenvalues = torch.tensor(PCA_EIGENVALUES)  # (3,)
        self.eigenvectors = torch.tensor(PCA_EIGENVECTORS)  # (3, 3), column j = eigenvector j

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return image
        alpha = torch.randn(3) * self.alphastd
        rgb = self.eigenvectors @ (alpha * self.eigenvalues)  # (3,)
        return image + rgb.view(3, 1, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alphastd={self.alphastd})"


class StackCrops:
    """Tuple of PIL crops (from TenCrop) -> (n_crops, C, H, W), each crop through `per_crop`."""

    def __init__(self, per_crop: Callable[[Image.Image], torch.Tensor]) -> None:
        self.per_crop = per_crop

    def __call__(self, crops: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.per_crop(crop) for crop in crops])


class MultiScale:
    """PIL image -> list of whole-image tensors, one per shorter side in `scales`.

    For fully-convolutional testing: the network scores each full image (global pooling makes
    any size fit) and the scores are averaged over scales.
    """

    def __init__(self, scales: Sequence[int], per_scale: Callable[[Image.Image], torch.Tensor]) -> None:
        self.scales = tuple(scales)
        self.per_scale = per_scale

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [
            self.per_scale(TF.resize(image, s, interpolation=T.InterpolationMode.BILINEAR, antialias=True))
            for s in self.scales
        ]


def channel_normalize(stats: NormStats | None = None) -> T.Normalize:
    """Per-channel normalisation of a [0, 1] tensor; ImageNet's statistics by default."""
    stats = stats or imagenet_norm_stats()
    if stats.mean.shape[1:] != (1, 1) or stats.std.shape[1:] != (1, 1):
        raise ConfigError(
            "the folder loader normalises per channel: it needs (C, 1, 1) statistics "
            f"(normalize='channel'), got mean {tuple(stats.mean.shape)}"
        )
    return T.Normalize(stats.mean.flatten().tolist(), stats.std.flatten().tolist())


def to_normalized_tensor(stats: NormStats | None = None) -> T.Compose:
    """PIL -> (C, H, W) float in [0, 1], then normalised per channel."""
    return T.Compose([T.ToTensor(), channel_normalize(stats)])


def default_resize(image_size: int) -> int:
    """The evaluation resize for a crop size: 256 for 224, in proportion otherwise."""
    return round(image_size * 256 / 224)


def train_transform(
    augment: FolderAugment = "scale",
    image_size: int = 224,
    *,
    scale_range: tuple[int, int] | None = None,  # None: [256, 480] scaled by image_size / 224
    lighting: float = 0.1,  # alphastd of the PCA colour augmentation; 0 turns it off
    stats: NormStats | None = None,  # per-channel; None: ImageNet's
) -> T.Compose:
    """PIL image -> (C, S, S) normalised float tensor, randomly augmented.

    "scale": the paper's shorter side in [256, 480], random crop, flip; "rrc": random-resized
    crop and flip; "none": the centre crop of evaluation. PCA lighting follows for "scale" and
    "rrc" (paper: "the standard color augmentation in [21]").
    """
    if augment == "scale":
        low, high = scale_range or (default_resize(image_size), round(image_size * 480 / 224))
        geometry: list[Callable] = [
            RandomShorterSideResize(low, high),
            T.RandomCrop(image_size),
            T.RandomHorizontalFlip(),
        ]
    elif augment == "rrc":  # the Inception-style crop most modern ImageNet recipes use
        geometry = [T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip()]
    elif augment == "none":
        geometry = [T.Resize(default_resize(image_size), antialias=True), T.CenterCrop(image_size)]
    else:
        raise ConfigError(f"unknown augment {augment!r}; valid: {', '.join(FOLDER_AUGMENT_KINDS)}")
    colour: list[Callable] = [Lighting(lighting)] if lighting > 0 and augment != "none" else []
    return T.Compose([*geometry, T.ToTensor(), *colour, channel_normalize(stats)])


def eval_transform(
    image_size: int = 224,
    *,
    mode: EvalMode = "center",
    resize: int | None = None,  # shorter side before cropping; None: 256 scaled by image_size / 224
    scales: Sequence[int] = PAPER_SCALES,  # only for mode="multi-scale"
    stats: NormStats | None = None,
) -> Callable[[Image.Image], torch.Tensor | list[torch.Tensor]]:
    """centre: (C, S, S); ten-crop: (10, C, S, S); multi-scale: list of (C, H_s, W_s)."""
    per_image = to_normalized_tensor(stats)
    resize_to = T.Resize(resize or default_resize(image_size), antialias=True)
    if mode == "center":
        return T.Compose([resize_to, T.CenterCrop(image_size), per_image])
    if mode == "ten-crop":  # 4 corners + centre, and the same of the flipped image
        return T.Compose([resize_to, T.TenCrop(image_size), StackCrops(per_image)])
    if mode == "multi-scale":
        return MultiScale(scales, per_image)
    raise ConfigError(f"unknown eval mode {mode!r}; valid: {', '.join(EVAL_MODES)}")
