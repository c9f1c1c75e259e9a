"""Portable weights: one .safetensors file that rebuilds a network and its preprocessing.

Layout: the model's state dict under its own keys, the input normalisation as the two tensors
`_preprocess.mean` and `_preprocess.std` (in units of pixel/255, shape (C, 1, 1) per channel or
(C, H, W) per pixel), and a JSON document in the safetensors metadata under "reslab" that names
the architecture, the classes and how images were prepared. safetensors holds tensors and
strings only, so loading one never runs code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from reslab.atomic import atomic_write_bytes
from reslab.errors import CheckpointError
from reslab.models import ResNet, create_model

FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


@dataclass
class WeightsMeta:
    model: str  # registry name
    num_classes: int
    in_chans: int
    options: dict[str, Any] = field(default_factory=dict)  # create_model options (shortcut, ...)
    classes: list[str] = field(default_factory=list)  # names, index = class id
    input_size: int = 32  # images are resized / cropped to input_size x input_size
    resize: str = "shorter-center-crop"  # how a photo of another size is brought to input_size
    dataset: str = ""  # what the weights were trained on
    data_sha256: str = ""  # SHA-256 over the dataset's source files (train + test); "listing:..." for streamed trees
    # e.g. {"test_top1_error": 0.08, "eval_tta_flip": 1.0}; eval_tta_flip = 1.0 when the test
    # metrics averaged the logits of each image and its mirror (`reslab eval --tta flip`)
    metrics: dict[str, float] = field(default_factory=dict)
    command: str = ""  # the command that produced them
    reslab_version: str = ""


def save_weights(path: str | Path, model: ResNet, meta: WeightsMeta, mean: torch.Tensor, std: torch.Tensor) -> Path:
    """Write weights atomically (see reslab.atomic)."""
    from reslab import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta.reslab_version = meta.reslab_version or __version__
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors["_preprocess.mean"] = mean.detach().to("cpu", torch.float32).contiguous()
    tensors["_preprocess.std"] = std.detach().to("cpu", torch.float32).contiguous()
    payload = save(tensors, metadata={"reslab": json.dumps(asdict(meta)), "format": str(FORMAT_VERSION)})
    atomic_write_bytes(path, payload)
    return path


def resolve_weights(source: str | Path) -> Path:
    """A weights path from a file, a run directory (its best/final weights) or a shipped name."""
    path = Path(source)
    if path.is_dir():
        for candidate in ("weights.safetensors", "final.safetensors"):
            if (path / candidate).is_file():
                return path / candidate
        raise CheckpointError(f"{path} holds no weights.safetensors; is it a finished reslab run directory?")
    if path.is_file():
        return path
    shipped = PRETRAINED_DIR / f"{source}.safetensors"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))
    raise CheckpointError(
        f"no weights at {source!r}: not a file, a run directory, or a shipped name "
        f"(shipped: {', '.join(names) or 'none'})"
    )


def read_meta(path: str | Path) -> WeightsMeta:
    path = resolve_weights(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("reslab")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise CheckpointError(f"{path} has no reslab metadata; for torchvision weights use --set model.pretrained=...")
    try:
        fields = json.loads(raw)
        return WeightsMeta(**fields)
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{path} has damaged reslab metadata ({exc})") from exc


def load_weights(
    source: str | Path, device: str | torch.device = "cpu"
) -> tuple[ResNet, WeightsMeta, torch.Tensor, torch.Tensor]:
    """(model in eval mode, meta, mean, std) from a weights file, run directory or shipped name."""
    path = resolve_weights(source)
    meta = read_meta(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc})") from exc
    mean = tensors.pop("_preprocess.mean")
    std = tensors.pop("_preprocess.std")
    model = create_model(meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.options)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match {meta.model}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    return model.to(device), meta, mean.to(device), std.to(device)
