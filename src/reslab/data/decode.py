"""Decoding user images robustly: any common format in, an 8-bit L or RGB PIL image out.

What is handled, and how:
  - JPEG (baseline, progressive, CMYK / Adobe-inverted CMYK via Pillow's decoder), PNG 8/16-bit,
    palette, grey, WebP, BMP, TIFF, GIF and other multi-frame files (the first frame is used).
  - EXIF orientation is applied (`ImageOps.exif_transpose`), so a phone photo is seen upright;
    a damaged EXIF block is ignored rather than failing the image.
  - Alpha (RGBA, LA, palette with transparency) is composited onto white, as a browser shows it
    on a white page. Dropping alpha instead would expose whatever colour the encoder left under
    transparent pixels (often black or noise), which the network never saw in training.
  - 16-bit grey (modes I;16*, I) is rescaled 0..65535 -> 0..255; Pillow's own convert("L")
    clips it instead. Float images (mode F) are taken as 0..1 when their maximum is <= 1, else
    as 0..255, and clipped.
  - A decompression-bomb guard: the pixel count is read from the header (Image.open does not
    decode) and an image over `max_pixels` is refused before any pixel is decoded. Pillow's own
    guard (Image.MAX_IMAGE_PIXELS, ~89 megapixels: a warning, an error beyond twice that) still
    runs inside Image.open; its error, or its warning where warnings are errors, becomes the
    same ImageTooLargeError. `quiet_pillow_bomb_warning()` silences the warning for commands
    whose own limit governs (warnings filters are process-wide, so this is not done per call).
  - Empty, truncated (with Pillow's default ImageFile.LOAD_TRUNCATED_IMAGES = False), damaged or
    non-image files raise `ImageDecodeError` with a one-line message
    naming the file; callers decoding many files catch it per file and go on.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from reslab.errors import DataError
from reslab.vocab import DEFAULT_MAX_PIXELS  # its home is vocab, which the command line reads without torch

IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".webp",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".avif",
    }
)
WHITE = (255, 255, 255)


class ImageDecodeError(DataError):
    """A file that is empty, damaged, truncated or not an image; the message names it."""


class NotAnImageError(ImageDecodeError):
    """Bytes that no Pillow plugin recognises as an image (text, PDF, random data, ...)."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose header announces more pixels than the configured limit."""


def quiet_pillow_bomb_warning() -> None:
    """Ignore Pillow's DecompressionBombWarning process-wide: `max_pixels` is the limit that counts."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _describe(source: str | Path | bytes, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


def _read(source: str | Path | bytes, label: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if path.is_dir():
            raise ImageDecodeError(f"{label}: is a directory, not an image file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageDecodeError(f"{label}: no such file") from None
        except OSError as exc:
            raise ImageDecodeError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ImageDecodeError(f"{label}: empty file (0 bytes)")
    return data


def _check_pixels(size: tuple[int, int], max_pixels: int, label: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{label}: invalid image size {w}x{h}")
    if max_pixels and w * h > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {w}x{h} = {w * h / 1e6:.1f} megapixels exceeds the limit of "
            f"{max_pixels / 1e6:g} megapixels (raise it with --max-pixels if the file is trusted)"
        )


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """RGBA/LA/PA/palette-with-transparency -> RGB or L on a white background."""
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("PA", "RGBa", "La"):
        img = img.convert("RGBA")
    if img.mode == "LA":
        background = Image.new("L", img.size, 255)
        background.paste(img.getchannel("L"), mask=img.getchannel("A"))
        return background
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, WHITE)
        background.paste(img.convert("RGB"), mask=img.getchannel("A"))
        return background
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """High bit-depth and float grey -> 8-bit L, rescaled rather than clipped."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)  # 16-bit PNGs load as I;16 (or I), 0..65535
        arr = np.clip(arr, 0, 65535) / 257.0
        return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        return Image.fromarray(np.rint(np.clip(arr * scale, 0, 255)).astype(np.uint8), mode="L")
    if img.mode == "1":
        return img.convert("L")
    return img


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Any decoded Pillow image -> 8-bit `mode` ("L" or "RGB")."""
    img = _to_8bit(_flatten_alpha(img))
    if img.mode in ("RGBA", "LA", "PA"):  # a mode created by the conversions above
        img = _flatten_alpha(img)
    return img if img.mode == mode else img.convert(mode)


def decode_image(
    source: str | Path | bytes, *, mode: str = "RGB", max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """A file path or encoded bytes -> an upright 8-bit image in `mode` ("RGB" or "L").

    `name` labels the source in error messages (default: the path). `max_pixels` = 0 disables
    reslab's limit (Pillow's own limit still applies). Raises ImageDecodeError (or its subclass
    ImageTooLargeError) with a one-line message.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    label = _describe(source, name)
    data = _read(source, label)
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            _check_pixels(img.size, max_pixels, label)
            # Image.open stands on the first frame of an animated GIF/WebP/APNG or a multi-page
            # TIFF; we never seek (counting frames would decode them all, a cheap DoS).
            img.load()
            try:
                img = ImageOps.exif_transpose(img) or img
            except Exception:  # noqa: BLE001 (damaged EXIF: keep the pixels as stored)
                # Pillow's EXIF parser fails with SyntaxError, struct.error, ValueError, KeyError,
                # TypeError, OSError ... by tag; the orientation is optional, the image is not.
                pass
            return to_mode(img, mode)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{label}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"{label}: not an image, or a format Pillow cannot read") from None
    except Exception as exc:  # noqa: BLE001 (untrusted input: any decoder failure is this file's)
        # Pillow signals truncated/damaged data with OSError ("image file is truncated"), and
        # malformed headers with SyntaxError, ValueError, struct.error, ... depending on the
        # plugin. On untrusted input any decoder failure is a per-file error, never a crash.
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"{label}: damaged or truncated image ({detail})") from None
