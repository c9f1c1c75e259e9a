"""Decoding and preprocessing: every awkward file gives the right pixels or one clear error."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from infer_testdata import BAD_FILES, BLUE, CORPUS_MAX_PIXELS, CYAN, GOOD_FILES, RED, two_halves
from PIL import Image

from reslab.data.decode import ImageDecodeError, ImageTooLargeError, NotAnImageError, decode_image
from reslab.data.preprocess import fit_image, load_image
from reslab.errors import ConfigError, ReslabError


def decode(corpus: Path, name: str, mode: str = "RGB") -> np.ndarray:
    return np.asarray(decode_image(corpus / name, mode=mode, max_pixels=CORPUS_MAX_PIXELS)).astype(int)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", GOOD_FILES)
@pytest.mark.parametrize("in_chans", [3, 1])
def test_every_good_file_gives_an_input_tensor(corpus: Path, name: str, in_chans: int) -> None:
    x = load_image(corpus / name, in_chans=in_chans, input_size=32, max_pixels=CORPUS_MAX_PIXELS)
    assert x.dtype == torch.uint8 and x.shape == (in_chans, 32, 32)


@pytest.mark.parametrize(
    "name, error, words",
    [
        ("truncated.jpg", ImageDecodeError, "truncated"),
        ("empty.png", ImageDecodeError, "empty file"),
        ("text.jpg", NotAnImageError, "not an image"),
        ("huge.png", ImageTooLargeError, "exceeds the limit"),
        ("missing.png", ImageDecodeError, "no such file"),
    ],
)
def test_bad_files_raise_one_line_naming_the_file(corpus: Path, name: str, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        load_image(corpus / name, in_chans=3, input_size=32, max_pixels=CORPUS_MAX_PIXELS)
    message = str(info.value)
    assert isinstance(info.value, ReslabError)
    assert str(corpus / name) in message and words in message and "\n" not in message


def test_corpus_holds_the_listed_files(corpus: Path) -> None:
    assert {p.name for p in corpus.iterdir()} == set(GOOD_FILES) | set(BAD_FILES) | {"notes.txt"}


def test_cmyk_jpeg_becomes_rgb(corpus: Path) -> None:
    assert Image.open(corpus / "cmyk.jpg").mode == "CMYK"
    rgb = decode(corpus, "cmyk.jpg")
    assert np.abs(rgb - np.array(CYAN)).max() <= 3  # pure cyan ink -> (0, 255, 255)


def test_progressive_jpeg_decodes(corpus: Path) -> None:
    with Image.open(corpus / "progressive.jpg") as img:
        assert img.info.get("progressive") or img.info.get("progression")
        baseline = np.asarray(img.convert("RGB")).astype(int)
    assert np.array_equal(decode(corpus, "progressive.jpg"), baseline)
    assert baseline.shape == (48, 64, 3)


def test_16bit_grey_png_is_rescaled_not_clipped(corpus: Path) -> None:
    assert Image.open(corpus / "grey16.png").mode.startswith("I")
    grey = decode(corpus, "grey16.png", mode="L")
    expected = np.rint((np.arange(64 * 32).reshape(32, 64) * 32) / 257.0)
    assert np.array_equal(grey, expected)
    assert grey.max() == 255 and grey.min() == 0


def test_16bit_rgb_png_keeps_the_colours(corpus: Path) -> None:
    rgb = decode(corpus, "rgb16.png")
    ramp = np.arange(64 * 32).reshape(32, 64) * 32
    expected = np.stack([ramp, 65535 - ramp, np.full_like(ramp, 40000)], axis=-1) / 257.0
    assert np.abs(rgb - expected).max() <= 1.0


def test_palette_transparency_is_white(corpus: Path) -> None:
    rgb = decode(corpus, "palette.png")
    assert (rgb[:8, :8] == 255).all()  # transparent index -> white
    assert (rgb[20, 4] == BLUE).all() and (rgb[20, 24] == RED).all()


def test_alpha_is_composited_on_white(corpus: Path) -> None:
    rgb = decode(corpus, "rgba.png")
    assert (rgb[:, :16] == 255).all()  # transparent red shows as white, not red or black
    assert (rgb[:, 16:] == RED).all()
    half = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    blended = np.asarray(decode_image(png_bytes(half))).astype(int)
    assert np.abs(blended - 127).max() <= 1  # 50% black over white
    grey_alpha = Image.new("LA", (2, 2), (0, 0))
    assert (np.asarray(decode_image(png_bytes(grey_alpha), mode="L")) == 255).all()


def test_grey_png_fills_all_three_channels(corpus: Path) -> None:
    rgb = decode(corpus, "grey.png")
    grey = np.asarray(Image.open(corpus / "grey.png")).astype(int)
    assert all(np.array_equal(rgb[..., c], grey) for c in range(3))


@pytest.mark.parametrize("name", ["lossless.webp", "image.bmp"])
def test_lossless_formats_are_exact(corpus: Path, name: str) -> None:
    expected = np.asarray(Image.open(corpus / name).convert("RGB")).astype(int)
    assert np.array_equal(decode(corpus, name), expected)


def test_exif_orientation_is_applied(corpus: Path) -> None:
    assert Image.open(corpus / "exif_rotated.jpg").size == (40, 20)  # as stored
    rgb = decode(corpus, "exif_rotated.jpg")
    assert rgb.shape == (40, 20, 3)  # upright: 20 wide, 40 high
    assert np.abs(rgb[5, 10] - RED).max() < 30 and np.abs(rgb[34, 10] - BLUE).max() < 30


def test_one_pixel_image_fills_the_input(corpus: Path) -> None:
    x = load_image(corpus / "one_pixel.png", in_chans=3, input_size=32)
    assert torch.equal(x, torch.tensor([10, 200, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32))


def test_animated_gif_uses_the_first_frame(corpus: Path) -> None:
    assert Image.open(corpus / "animated.gif").n_frames == 3
    assert (decode(corpus, "animated.gif") == RED).all()


def test_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch, corpus: Path) -> None:
    def no_decoding(self):  # Image.load would decode; the limit must fire before it
        raise AssertionError("decoded an image over the pixel limit")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(ImageTooLargeError, match="200x100"):
        decode_image(corpus / "huge.png", max_pixels=10_000)


def test_pillow_bomb_guard_becomes_our_error(monkeypatch: pytest.MonkeyPatch, corpus: Path) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("huge.png", "grey.png"):  # 20000 px: Pillow's error (> 2x); 1500 px: its warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ImageTooLargeError, match="decompression bomb"):
                decode_image(corpus / name, max_pixels=0)


def test_bytes_input_uses_the_given_name(corpus: Path) -> None:
    with pytest.raises(NotAnImageError, match="upload.jpg"):
        decode_image(b"\x00garbage" * 10, name="upload.jpg")
    assert decode_image((corpus / "image.bmp").read_bytes()).size == (36, 20)


# ---- geometry ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 48), (48, 64), (33, 100), (32, 32), (7, 5)])
def test_shorter_side_resize_and_center_crop_match_torchvision(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    reference = T.Compose([T.Resize(32), T.CenterCrop(32)])(img)
    assert np.array_equal(np.asarray(fit_image(img, 32)), np.asarray(reference))
    reference = T.Compose([T.Resize(36), T.CenterCrop(32)])(img)
    assert np.array_equal(np.asarray(fit_image(img, 32, "shorter-36-center-crop")), np.asarray(reference))


def test_center_crop_keeps_the_middle() -> None:
    img = two_halves((96, 32), RED, BLUE)  # wide: the crop is the middle third, half red half blue
    x = np.asarray(fit_image(img, 32))
    assert (x[:, :15] == RED).all() and (x[:, 17:] == BLUE).all()


def test_other_resize_rules() -> None:
    img = two_halves((64, 32), RED, BLUE)
    assert fit_image(img, 16, "stretch").size == (16, 16)
    with pytest.raises(ImageDecodeError, match="exactly 16x16"):
        fit_image(img, 16, "none")
    with pytest.raises(ConfigError, match="unknown resize"):
        fit_image(img, 16, "squash")
