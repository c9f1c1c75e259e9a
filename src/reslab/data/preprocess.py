"""One preprocessing path: an image file -> the uint8 tensor a network was trained on -> its input.

Every consumer goes through here: the in-memory ImageFolder loader, the streaming loader's
evaluation transform, evaluation during training, `reslab eval`, `reslab predict`, `reslab serve`,
the calibration images of `reslab export --int8` and dataset arrays resized to another size. So a
given file becomes the same tensor, bit for bit, wherever it is read.

  decode     `reslab.data.decode.decode_image`: EXIF orientation, alpha on white, 16-bit, palette,
             a pixel limit read from the header, and an aspect-ratio limit (below).
  geometry   `fit_image`: one resize / crop rule, torchvision's evaluation transforms on PIL images
             (`Resize(int)`: bilinear with antialiasing, the long side `int(size * long / short)`;
             `CenterCrop`: offsets `int(round((side - size) / 2))`).
  tensor     `image_to_tensor`: (C, H, W) uint8.
  normalise  `NormStats.apply` (reslab.data.norm): x = u8 * scale + shift in float32, batched.

`Preprocess` is the record of all of it that travels with the weights (`reslab.weights`).

The geometry rule names (`WeightsMeta.resize`):
  "shorter-center-crop"    shorter side -> input_size, centre crop input_size x input_size
  "shorter-N-center-crop"  shorter side -> N (e.g. 256), centre crop input_size (ImageNet eval)
  "stretch"                resize both sides to input_size, ignoring the aspect ratio
  "none"                   the image must already be input_size x input_size
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reslab.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from reslab.data.norm import NormStats
from reslab.errors import ConfigError
from reslab.vocab import RESIZE_MODES

_SHORTER_N = re.compile(r"shorter-(\d+)-center-crop")
# An upscaled intermediate larger than this is refused: a thin strip (2,000,000 x 1 pixels is a
# 2 KB PNG) would otherwise become gigabytes on the way to a 224 x 224 crop.
MAX_RESIZED_PIXELS = 16 * 1024 * 1024
# The largest shorter side a "shorter-N-center-crop" rule may name (ImageNet evaluation uses 256);
# the rule comes from weights files too, so a number of any size must fail as a clear error.
MAX_SHORTER_SIDE = 4096


def channel_mode(in_chans: int) -> str:
    """Pillow mode for a network's input channels: 1 -> "L", 3 -> "RGB"."""
    if in_chans == 1:
        return "L"
    if in_chans == 3:
        return "RGB"
    raise ConfigError(f"images can feed networks with 1 (grey) or 3 (RGB) input channels, not {in_chans}")


def check_resize(resize: str, input_size: int) -> None:
    """A ConfigError unless `resize` names a rule that fits `input_size`."""
    resize_target(resize, input_size)


def resize_target(resize: str, input_size: int) -> int | None:
    """The shorter side to resize to before the crop (None: no aspect-preserving resize)."""
    if resize == "shorter-center-crop":
        return input_size
    match = _SHORTER_N.fullmatch(resize)
    if match:
        if len(match[1].lstrip("0")) > len(str(MAX_SHORTER_SIDE)) or int(match[1]) > MAX_SHORTER_SIDE:
            raise ConfigError(
                f"resize {reprlib.repr(resize)}: the shorter side is over the limit of {MAX_SHORTER_SIDE}"
            )
        shorter = int(match[1])
        if shorter < input_size:
            raise ConfigError(f"resize {resize!r}: the shorter side {shorter} is below the crop {input_size}")
        return shorter
    if resize in ("stretch", "none"):
        return None
    raise ConfigError(f"unknown resize {reprlib.repr(resize)}; known: {', '.join(RESIZE_MODES)}")


def eval_resize(input_size: int, resize_ratio: float | None) -> str:
    """The rule name for evaluating at `input_size`: the shorter side to input_size, or to
    round(input_size * ratio) first (ImageNet: 256 for 224 crops, ratio 256/224)."""
    if resize_ratio is None:
        return "shorter-center-crop"
    return f"shorter-{round(input_size * resize_ratio)}-center-crop"


def shorter_side_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(w, h) with the shorter side `shorter` and the long side int(shorter * long / short), as
    torchvision's Resize(int) computes it."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The centred size x size box, offsets rounded as torchvision's CenterCrop rounds them."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def fit_image(img: Image.Image, input_size: int, resize: str = "shorter-center-crop") -> Image.Image:
    """(w, h) image -> (input_size, input_size) image following `resize` (see the module docstring)."""
    shorter = resize_target(resize, input_size)
    w, h = img.size
    if resize == "none":
        if (w, h) != (input_size, input_size):
            raise ImageDecodeError(
                f"image is {w}x{h} but these weights take exactly {input_size}x{input_size} (resize='none')"
            )
        return img
    if resize == "stretch":
        if (w, h) == (input_size, input_size):
            return img
        return img.resize((input_size, input_size), Image.Resampling.BILINEAR)
    assert shorter is not None
    new_w, new_h = shorter_side_size(w, h, shorter)
    if new_w * new_h > max(w * h, MAX_RESIZED_PIXELS):  # only an extreme aspect ratio gets here
        raise ImageDecodeError(
            f"a {w}x{h} image would be resized to {new_w}x{new_h} before the {input_size}x{input_size} crop: "
            f"its aspect ratio is too extreme (the limit is {MAX_RESIZED_PIXELS / 1e6:g} megapixels after resizing)"
        )
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if (new_w, new_h) != (input_size, input_size):
        img = img.crop(center_box(new_w, new_h, input_size))
    return img


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit L or RGB PIL image -> uint8 tensor (C, H, W)."""
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch warns on read-only arrays
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def load_image(
    source: str | Path | bytes,
    *,
    in_chans: int,
    input_size: int | None,
    resize: str = "shorter-center-crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> torch.Tensor:
    """A file or encoded bytes -> uint8 (in_chans, input_size, input_size) (input_size None: the
    file's own size). Raises ImageDecodeError naming the file (empty, damaged, not an image, too
    many pixels, a size the rule cannot take)."""
    img = decode_image(source, mode=channel_mode(in_chans), max_pixels=max_pixels, name=name)
    if input_size is not None:
        try:
            img = fit_image(img, input_size, resize)
        except ImageDecodeError as exc:
            label = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")
            raise ImageDecodeError(f"{label}: {exc}") from None
    return image_to_tensor(img)


def resize_array(images: torch.Tensor, size: int, resize: str = "shorter-center-crop") -> torch.Tensor:
    """(N, C, H, W) uint8 dataset images -> (N, C, size, size) uint8, each through `fit_image`
    (the same rule and resampling as an image file of that size)."""
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    if c not in (1, 3):
        raise ConfigError(f"can resize 1- or 3-channel images, not {c}")
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for i in range(n):
        array = images[i].permute(1, 2, 0).numpy()
        img = Image.fromarray(array[:, :, 0] if c == 1 else array, mode="L" if c == 1 else "RGB")
        out[i] = image_to_tensor(fit_image(img, size, resize))
    return out


@dataclass
class Preprocess:
    """How images become a network's input: channels, size, geometry rule and normalisation.

    Recorded with the weights (`reslab.weights.Weights.preprocess`), so evaluation, prediction,
    serving and export prepare images exactly as training's evaluation did."""

    in_chans: int
    input_size: int
    resize: str  # a RESIZE_MODES rule
    stats: NormStats  # the uint8 -> float affine

    def load(self, source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None):
        """A file or encoded bytes -> uint8 (C, S, S)."""
        return load_image(
            source,
            in_chans=self.in_chans,
            input_size=self.input_size,
            resize=self.resize,
            max_pixels=max_pixels,
            name=name,
        )

    def fit_array(self, images: torch.Tensor) -> torch.Tensor:
        """Dataset images (N, C, H, W) uint8 -> this network's channels and size (no copy when they fit)."""
        from reslab.data.array_dataset import convert_channels

        return resize_array(convert_channels(images, self.in_chans), self.input_size, self.resize)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, S, S) -> float32 network input."""
        return self.stats.to(images.device).apply(images)
