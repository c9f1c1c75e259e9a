"""A decoded image -> the uint8 tensor the network was trained on: mode, size, crop.

Geometry follows torchvision's evaluation transforms on PIL images (`Resize(int)` with bilinear
antialiased resampling, then `CenterCrop`), so a model trained with them sees the same pixels.
Normalisation ((x / 255 - mean) / std) is left to the predictor, which does it batched in float.

`WeightsMeta.resize` names the geometry:
  "shorter-center-crop"    shorter side -> input_size, centre crop input_size x input_size
  "shorter-N-center-crop"  shorter side -> N (e.g. 256), centre crop input_size (ImageNet eval)
  "stretch"                resize both sides to input_size, ignoring the aspect ratio
  "none"                   the image must already be input_size x input_size
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reslab.errors import ConfigError
from reslab.infer.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

RESIZE_MODES = ("shorter-center-crop", "shorter-N-center-crop", "stretch", "none")
_SHORTER_N = re.compile(r"shorter-(\d+)-center-crop")


def channel_mode(in_chans: int) -> str:
    """Pillow mode for a network's input channels: 1 -> "L", 3 -> "RGB"."""
    if in_chans == 1:
        return "L"
    if in_chans == 3:
        return "RGB"
    raise ConfigError(f"images can feed networks with 1 (grey) or 3 (RGB) input channels, not {in_chans}")


def resize_target(resize: str, input_size: int) -> int | None:
    """The shorter side to resize to before the crop (None: no aspect-preserving resize)."""
    if resize == "shorter-center-crop":
        return input_size
    match = _SHORTER_N.fullmatch(resize)
    if match:
        shorter = int(match[1])
        if shorter < input_size:
            raise ConfigError(f"resize {resize!r}: the shorter side {shorter} is below the crop {input_size}")
        return shorter
    if resize in ("stretch", "none"):
        return None
    raise ConfigError(f"unknown resize {resize!r} in the weights' metadata; known: {', '.join(RESIZE_MODES)}")


def fit_image(img: Image.Image, input_size: int, resize: str = "shorter-center-crop") -> Image.Image:
    """(w, h) image -> (input_size, input_size) image following `resize` (see module docstring)."""
    shorter = resize_target(resize, input_size)
    w, h = img.size
    if resize == "none":
        if (w, h) != (input_size, input_size):
            raise ImageDecodeError(
                f"image is {w}x{h} but these weights take exactly {input_size}x{input_size} (resize='none')"
            )
        return img
    if resize == "stretch":
        return (
            img
            if (w, h) == (input_size, input_size)
            else img.resize((input_size, input_size), Image.Resampling.BILINEAR)
        )
    assert shorter is not None
    # torchvision Resize(int): short side -> shorter, long side -> int(shorter * long / short).
    if w <= h:
        new_w, new_h = shorter, int(shorter * h / w)
    else:
        new_w, new_h = int(shorter * w / h), shorter
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    # torchvision CenterCrop: offsets rounded half to even, as Python's round.
    top = int(round((new_h - input_size) / 2.0))
    left = int(round((new_w - input_size) / 2.0))
    if (new_w, new_h) != (input_size, input_size):
        img = img.crop((left, top, left + input_size, top + input_size))
    return img


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit L or RGB PIL image -> uint8 tensor (C, H, W)."""
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch warns on read-only arrays
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def load_input(
    source: str | Path | bytes,
    *,
    in_chans: int,
    input_size: int,
    resize: str = "shorter-center-crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> torch.Tensor:
    """A file or encoded bytes -> uint8 (in_chans, input_size, input_size), ready to batch.

    Raises ImageDecodeError naming the file (empty, damaged, not an image, too many pixels).
    """
    img = decode_image(source, mode=channel_mode(in_chans), max_pixels=max_pixels, name=name)
    try:
        img = fit_image(img, input_size, resize)
    except ImageDecodeError as exc:
        label = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")
        raise ImageDecodeError(f"{label}: {exc}") from None
    return image_to_tensor(img)
