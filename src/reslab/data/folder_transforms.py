"""Per-image transforms for ImageNet-style folders, run in DataLoader workers: PIL in, uint8 out.

Training (He et al. 2015, sec. 3.4): the shorter side resized to a random length in [256, 480]
("scale augmentation"), a random 224x224 crop, a horizontal flip, and AlexNet's PCA colour
augmentation. Testing: one centre crop (the shorter side to 256, a 224 crop: today's standard),
the paper's 10-crop test, or fully-convolutional scoring of the whole image at shorter sides
{224, 256, 384, 480, 640}.

Workers only decode and move pixels: each image leaves them as a uint8 (C, H, W) tensor, and the
main process normalises whole batches with the run's `NormStats` (the same affine as every other
consumer, `reslab.data.preprocess`). The PCA colour shift is drawn per batch in the main process
too (`Lighting`), from a generator seeded by (seed, epoch, rank, batch) like the in-memory path.
The centre crop is `fit_image`, the one resize rule of `reslab.data.preprocess`.

A `data.policy` (TrivialAugmentWide, RandAugment, AutoAugment: `reslab.data.augment`) runs in the
workers on the PIL crop after the flip, torchvision's recipe order; it draws from the workers'
torch seeds, like the crops.

Departure: the paper subtracts the per-pixel mean; we normalise per channel with the usual
ImageNet mean/std (torchvision's pretrained convention), which needs no pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from reslab.data.augment import policy_transform
from reslab.data.norm import NormStats
from reslab.data.preprocess import fit_image, image_to_tensor, shorter_side_size
from reslab.errors import ConfigError
from reslab.vocab import EVAL_MODES, FOLDER_AUGMENT_KINDS

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
EVAL_RESIZE_RATIO = 256 / 224  # the centre crop's resize: shorter side 256 for 224 crops


def imagenet_norm_stats(in_chans: int = 3) -> NormStats:
    """The ImageNet per-channel statistics as `NormStats`; for grey images (in_chans=1) the mean
    of the three channels' values (0.449, 0.226), the usual choice for one-channel ImageNet inputs."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    if in_chans == 1:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    return NormStats(mean, std)


def shorter_resize(image: Image.Image, shorter: int) -> Image.Image:
    """Shorter side to `shorter` (bilinear, antialiased: PIL), the long side as `fit_image` rounds it."""
    size = shorter_side_size(image.width, image.height, shorter)
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


class RandomShorterSideResize:
    """Resize so the shorter side is a uniformly random integer in [min_size, max_size]."""

    def __init__(self, min_size: int = 256, max_size: int = 480) -> None:
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: Image.Image) -> Image.Image:
        # torch's RNG, not `random`: DataLoader seeds it per worker.
        return shorter_resize(image, int(torch.randint(self.min_size, self.max_size + 1, ()).item()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


class Lighting:
    """AlexNet's PCA colour augmentation on a normalised batch (B, 3, H, W).

    Adds eigvec @ (alpha * eigval) to every pixel of an image in [0, 1] units (so / std after
    normalisation), alpha ~ N(0, alphastd^2) per image and component: each image's colour shifts
    along the principal axes of natural RGB variation.
    """

    def __init__(self, alphastd: float = 0.1) -> None:
        self.alphastd = alphastd
        self.eigenvalues = torch.tensor(PCA_EIGENVALUES)  # (3,)
        self.eigenvectors = torch.tensor(PCA_EIGENVECTORS)  # (3, 3), column j = eigenvector j

    def __call__(self, x: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.alphastd == 0:
            return x
        alpha = torch.randn(x.shape[0], 3, generator=generator) * self.alphastd  # (B, 3), on the CPU
        rgb = (alpha * self.eigenvalues) @ self.eigenvectors.T  # (B, 3)
        shift = rgb.to(x.device).view(-1, 3, 1, 1) / std.view(1, 3, 1, 1).to(x.device)
        return x + shift

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alphastd={self.alphastd})"


class ToUint8:
    """PIL image -> (C, H, W) uint8 tensor."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return image_to_tensor(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CenterFit:
    """PIL image -> uint8 (C, S, S) by the one resize rule (`fit_image`)."""

    def __init__(self, image_size: int, resize: str) -> None:
        self.image_size, self.resize = image_size, resize

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return image_to_tensor(fit_image(image, self.image_size, self.resize))


class TenCrop:
    """PIL image -> (10, C, S, S) uint8: the shorter side to `resize`, 4 corners + centre, and mirrors."""

    def __init__(self, image_size: int, resize: int) -> None:
        self.image_size, self.resize = image_size, resize

    def __call__(self, image: Image.Image) -> torch.Tensor:
        crops = TF.ten_crop(shorter_resize(image, self.resize), [self.image_size, self.image_size])
        return torch.stack([image_to_tensor(crop) for crop in crops])


class MultiScale:
    """PIL image -> list of whole-image uint8 tensors, one per shorter side in `scales`.

    For fully-convolutional testing: the network scores each full image (global pooling makes
    any size fit) and the scores are averaged over scales.
    """

    def __init__(self, scales: Sequence[int]) -> None:
        self.scales = tuple(scales)

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [image_to_tensor(shorter_resize(image, s)) for s in self.scales]


def train_transform(
    augment: str = "scale",
    image_size: int = 224,
    *,
    scale_range: tuple[int, int] | None = None,  # None: [256, 480] scaled by image_size / 224
    hflip: bool = True,  # False (data.hflip=false): mirrored images are other classes, never flip
    policy: str = "none",  # a data.policy applied after the crop and flip (`reslab.data.augment`)
    policy_magnitude: int = 9,  # RandAugment's magnitude
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (C, S, S) uint8, randomly cropped and (with `hflip`) flipped, then `policy`.

    "scale": the paper's shorter side in [256, 480], random crop, flip; "rrc": random-resized
    crop and flip; "none": the centre crop of evaluation.
    """
    transform = policy_transform(policy, policy_magnitude)
    after: list[Callable] = [transform] if transform is not None else []
    flip: list[Callable] = [T.RandomHorizontalFlip()] if hflip else []
    if augment == "scale":
        low, high = scale_range or (round(image_size * EVAL_RESIZE_RATIO), round(image_size * 480 / 224))
        geometry: list[Callable] = [RandomShorterSideResize(low, high), T.RandomCrop(image_size), *flip]
    elif augment == "rrc":  # the Inception-style crop most modern ImageNet recipes use
        geometry = [T.RandomResizedCrop(image_size, antialias=True), *flip]
    elif augment == "none":
        center = CenterFit(image_size, f"shorter-{round(image_size * EVAL_RESIZE_RATIO)}-center-crop")
        return T.Compose([center, *after]) if after else center  # the policy on the uint8 crop
    else:
        raise ConfigError(f"unknown augment {augment!r}; valid: {', '.join(FOLDER_AUGMENT_KINDS)}")
    return T.Compose([*geometry, *after, ToUint8()])


def eval_transform(
    image_size: int,
    resize: str,
    *,
    mode: str = "center",
    scales: Sequence[int] = PAPER_SCALES,  # only for mode="multi-scale"
) -> Callable[[Image.Image], torch.Tensor | list[torch.Tensor]]:
    """center: (C, S, S) by `resize` (a `fit_image` rule); ten-crop: (10, C, S, S) after the
    rule's shorter-side resize; multi-scale: a list of (C, H_s, W_s). All uint8."""
    from reslab.data.preprocess import resize_target

    if mode == "center":
        return CenterFit(image_size, resize)
    if mode == "ten-crop":  # 4 corners + centre, and the same of the flipped image
        return TenCrop(image_size, resize_target(resize, image_size) or image_size)
    if mode == "multi-scale":
        return MultiScale(scales)
    raise ConfigError(f"unknown eval mode {mode!r}; valid: {', '.join(EVAL_MODES)}")
