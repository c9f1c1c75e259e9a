"""Arguments that several commands share, each spelled once: counts, --device, --tta, --precision.

A bad value is refused by argparse while it parses, in one line naming the flag and the value
(`reslab eval: error: argument --batch-size: must be >= 1; got 0`), before any file is read.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from reslab.vocab import INFER_PRECISIONS

TTA_WORDS = {"none": False, "flip": True}  # --tta: each word and the tta_flip it means


def _number(text: str, cast: type[int] | type[float], ok: Callable[[float], bool], bound: str) -> int | float:
    """`text` as a number of type `cast` for which `ok` holds, or the one-line argparse error."""
    try:
        value = cast(text)
    except ValueError:
        kind = "a whole number" if cast is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {kind} {bound}; got {text!r}") from None
    if not ok(value):  # a NaN fails every bound
        raise argparse.ArgumentTypeError(f"must be {bound}; got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (--batch-size, --top-k, --max-batch, ...)."""
    return int(_number(text, int, lambda v: v >= 1, ">= 1"))


def non_negative_int(text: str) -> int:
    """argparse type of a count that may be 0 (--workers: 0 decodes in the main process)."""
    return int(_number(text, int, lambda v: v >= 0, ">= 0"))


def positive_float(text: str) -> float:
    """argparse type of a length that must be above 0 (--epochs)."""
    return float(_number(text, float, lambda v: v > 0, "> 0"))


def non_negative_float(text: str) -> float:
    """argparse type of a duration that may be 0 but not below (--batch-wait-ms)."""
    return float(_number(text, float, lambda v: v >= 0, ">= 0"))


def fraction(text: str) -> float:
    """argparse type of a fraction (--min-agreement)."""
    return float(_number(text, float, lambda v: 0 <= v <= 1, "in [0, 1]"))


def duration(text: str) -> str:
    """argparse type of a wall time (--budget: 90s, 10m, 2h; a bare number is seconds), kept as written."""
    from reslab.config import budget_seconds
    from reslab.errors import ConfigError

    try:
        budget_seconds(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 10m or 2h; got {text!r}") from None
    return text.strip()


def tta_flip(text: str) -> bool:
    """argparse type of --tta: "flip" -> True (average each image's logits with its mirror's), "none" -> False."""
    if text not in TTA_WORDS:
        raise argparse.ArgumentTypeError(f"choose {' or '.join(TTA_WORDS)}; got {text!r}")
    return TTA_WORDS[text]


def add_device(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """--device; `default` None leaves it to the settings (`reslab train`: train.device)."""
    where = "the settings' train.device" if default is None else default
    p.add_argument(
        "--device",
        default=default,
        help=f"auto (a CUDA GPU when one is visible, else the CPU), cpu, cuda or cuda:N (default: {where})",
    )


def add_tta(p: argparse.ArgumentParser, default_help: str) -> None:
    """--tta none|flip as `args.tta_flip`: True, False, or None (not given: `default_help` says what then)."""
    p.add_argument(
        "--tta",
        dest="tta_flip",
        type=tta_flip,
        default=None,
        metavar="{" + ",".join(TTA_WORDS) + "}",
        help=f"test-time augmentation: flip averages each image's logits with its mirror's ({default_help})",
    )


def add_precision(p: argparse.ArgumentParser) -> None:
    """--precision of the CPU fast path (`reslab predict`, `reslab serve`), resolved by reslab.device."""
    p.add_argument(
        "--precision",
        choices=INFER_PRECISIONS,
        default="auto",
        help="PyTorch backend: auto = bf16 where the CPU has native bf16 (AVX512-BF16/AMX), else fp32 "
        "(default); onnxruntime runs the float32 export (an .onnx file: the precision it was exported in)",
    )
