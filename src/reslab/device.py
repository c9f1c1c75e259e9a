"""Where and in what precision tensors are computed: device names, autocast, native bf16 on CPUs.

Models stay device- and dtype-agnostic; training, evaluation and inference ask this module which
device a name means and which autocast context a precision needs.
"""

from __future__ import annotations

import contextlib

import torch

from reslab.config import DEVICE_NAME
from reslab.errors import ConfigError
from reslab.vocab import PRECISIONS

CPU = torch.device("cpu")  # where predict, serve and export run


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """ "auto" -> cuda when a GPU is visible, else cpu; "cuda" under torchrun -> this process's GPU.
    The names are config.DEVICE_NAME's (which `reslab.config.validate` checks first)."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for but no CUDA device is visible; use cpu")
        if local_rank is not None:
            name = f"cuda:{local_rank}"
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} asked for but only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a precision: none for fp32, bf16 or fp16 autocast otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device = CPU) -> str:
    """The one precision resolver (training, evaluation and the CPU fast path of predict / serve):
    "auto" -> bf16 on GPUs that support it, fp16 (with a gradient scaler) on older GPUs, bf16 on
    CPUs with native bf16 (AVX512-BF16 or AMX), fp32 on other CPUs (AVX2 only: emulated bf16 trains
    about 10x slower, infers 4x slower). Other words of vocab.PRECISIONS pass through."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and native_bf16_supported() else "fp32"


def native_bf16_supported() -> bool:
    """True when this CPU runs bf16 convolutions natively (AVX512-BF16 or AMX), read at run time.

    Elsewhere (AVX2-only CPUs) oneDNN emulates bf16, about 4-10x slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
