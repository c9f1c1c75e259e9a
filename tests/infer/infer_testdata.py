"""Test data for the inference tests: small weights and a corpus of awkward image files.

A module with its own name (not conftest.py) so that tests can import the constants without
clashing with other conftest modules; tests/infer/conftest.py exposes the fixtures."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reslab.data.norm import NormStats
from reslab.models import create_model
from reslab.weights import WeightsMeta, save_weights

CLASSES = list("abcdefghij")
MEAN = torch.tensor([0.49, 0.48, 0.45]).view(3, 1, 1)
STD = torch.tensor([0.25, 0.24, 0.26]).view(3, 1, 1)
RED, BLUE, CYAN = (255, 0, 0), (0, 0, 255), (0, 255, 255)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics and affine parameters, so folding has work to do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_((torch.rand(n, generator=gen) - 0.5) * 0.6)
    return model.eval()


def make_weights(
    path: Path, name: str = "resnet20", input_size: int = 32, in_chans: int = 3, num_classes: int = 10
) -> Path:
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(name, num_classes=num_classes, in_chans=in_chans))
    classes = CLASSES if num_classes == 10 else []
    meta = WeightsMeta(
        model=name,
        num_classes=num_classes,
        in_chans=in_chans,
        classes=classes,
        input_size=input_size,
        dataset="random init (test)",
    )
    mean, std = (MEAN, STD) if in_chans == 3 else (MEAN[:1], STD[:1])
    return save_weights(path, model, meta, NormStats(mean, std))


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet20, random init with random BN statistics, classes a..j, CIFAR normalisation."""
    return make_weights(tmp_path_factory.mktemp("weights") / "resnet20.safetensors")


def png_16bit_rgb(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), from (H, W, 3) uint16."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))  # filter 0 rows

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def jpeg_bytes(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def random_png(size: tuple[int, int], seed: int = 0) -> bytes:
    """A (w, h) RGB PNG of seeded random pixels."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def solid_png(size: tuple[int, int]) -> bytes:
    """A (w, h) RGB PNG of one colour: compresses to a few hundred bytes at any size."""
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 60, 90)).save(buf, "PNG")
    return buf.getvalue()


def two_halves(size: tuple[int, int], left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    """(w, h) RGB image, left half one colour, right half another."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2 :] = right
    return Image.fromarray(arr)


GOOD_FILES = (
    "cmyk.jpg",
    "progressive.jpg",
    "grey16.png",
    "rgb16.png",
    "palette.png",
    "rgba.png",
    "grey.png",
    "lossless.webp",
    "image.bmp",
    "exif_rotated.jpg",
    "one_pixel.png",
    "animated.gif",
)
BAD_FILES = ("truncated.jpg", "empty.png", "text.jpg", "huge.png")
CORPUS_MAX_PIXELS = 10_000  # huge.png (200x100) is over it; every good file is at most 64x64


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one file per awkward case; see GOOD_FILES and BAD_FILES."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)

    Image.new("CMYK", (40, 30), (255, 0, 0, 0)).save(root / "cmyk.jpg", quality=95)  # pure cyan ink
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    (root / "progressive.jpg").write_bytes(jpeg_bytes(photo, progressive=True, quality=90))

    ramp16 = (np.arange(64 * 32, dtype=np.uint32).reshape(32, 64) * 32).astype(np.uint16)  # 0..65504
    Image.fromarray(ramp16).save(root / "grey16.png")  # mode I;16
    rgb16 = np.stack([ramp16, 65535 - ramp16, np.full_like(ramp16, 40000)], axis=-1)
    (root / "rgb16.png").write_bytes(png_16bit_rgb(rgb16))

    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0] + list(RED) + list(BLUE) + [0, 0, 0] * 253)
    palette.paste(2, (0, 0, 16, 32))  # left half blue, right half red
    palette.paste(0, (0, 0, 8, 8))  # top-left corner: index 0, transparent
    palette.save(root / "palette.png", transparency=0)

    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = RED
    rgba[:, :16, 3] = 0  # left half fully transparent (red under it must not show)
    rgba[:, 16:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")

    Image.fromarray(rng.integers(0, 256, (30, 50), dtype=np.uint8), "L").save(root / "grey.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "lossless.webp", lossless=True)
    Image.fromarray(rng.integers(0, 256, (20, 36, 3), dtype=np.uint8)).save(root / "image.bmp")

    # Stored 40 wide x 20 high, red left / blue right; EXIF orientation 6 = "rotate 90 CW to view",
    # so the upright image is 20 wide x 40 high, red on top, blue below.
    exif = Image.Exif()
    exif[0x0112] = 6
    two_halves((40, 20), RED, BLUE).save(root / "exif_rotated.jpg", exif=exif, quality=95)

    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "one_pixel.png")
    frames = [Image.new("RGB", (24, 24), colour) for colour in (RED, BLUE, CYAN)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)

    full = jpeg_bytes(photo, quality=90)
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a JPEG, just text with the wrong name\n")
    Image.new("RGB", (200, 100), (0, 128, 0)).save(root / "huge.png")
    (root / "notes.txt").write_text("not an image suffix: skipped when a folder is searched\n")
    return root
