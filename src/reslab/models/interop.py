"""torchvision interop: load torchvision ResNet / ResNeXt / Wide ResNet weights into the matching
reslab v1.5 network, and write reslab weights in torchvision's key layout.

reslab's post-activation ImageNet nets use torchvision's module names, so with shortcut B and the
stride on the 3x3 the two state dicts match key for key and shape for shape; the work here is
recognising the architecture, unwrapping common file layouts and giving clear errors.
No network access is involved: files are read from disk with `weights_only=True`.

A weights file is untrusted input: whatever it holds, reading it gives a state dict or a
CheckpointError naming the file, and memory in proportion to the file (a torch zip whose
entries would inflate far beyond the file, a zip bomb, is refused before torch reads it).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from reslab.errors import CheckpointError
from reslab.models.registry import IMAGENET_LAYERS, create_model, model_info
from reslab.models.resnet import ResNet

StateDict = Mapping[str, torch.Tensor]


# A torch.save zip stores its entries uncompressed; allow some slack for a re-zipped file.
MAX_INFLATION = 2


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_error_detail(exc: BaseException) -> str:
    """The informative line of a torch.load error: for a weights_only refusal the one naming the
    forbidden global, not the boilerplate around it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    boilerplate = ("Weights only load failed", "Check the documentation", "(1)", "(2)")
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful or lines or [type(exc).__name__])[0]


def _check_torch_zip(path: Path) -> None:
    """A CheckpointError for a zip (torch.save's format) whose entries inflate far beyond the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path} is a damaged zip / torch file ({_first_line(exc)})") from None
    size = path.stat().st_size
    if inflated > MAX_INFLATION * size + 1024 * 1024:
        raise CheckpointError(
            f"{path}: its zip entries would inflate to {inflated:,} bytes from a {size:,}-byte file; "
            "torch.save writes them uncompressed, so this is not a plain weights file"
        )


def _load_file(path: Path) -> object:
    """What a .safetensors or torch file holds; a CheckpointError for anything unreadable or unsafe."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None
    with path.open("rb") as file:
        head = file.read(1)
    if zipfile.is_zipfile(path):
        _check_torch_zip(path)
    elif head != b"\x80":  # torch.save's zip, or its legacy format: pickles from the first byte
        what = "is empty (0 bytes)" if not head else "is neither a torch.save file nor a .safetensors file"
        raise CheckpointError(f"{path} {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is a pickle that would run code or build objects other than tensors "
            f"({_load_error_detail(exc)}); reslab loads only plain tensors and never runs code from a file"
        ) from None
    except MemoryError:
        raise CheckpointError(f"{path} asks for more memory than this machine has; not a plain weights file") from None
    # Broad on purpose: the try holds torch.load alone, on a file from outside, and a damaged file
    # raises whatever the byte it breaks on leads to (truncated and flipped-byte torch files gave
    # RuntimeError, UnicodeDecodeError, EOFError, IndexError, struct.error, AssertionError, KeyError,
    # ValueError and TypeError); to the user each means the same: not a readable weights file.
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"cannot read {path} as plain tensors ({type(exc).__name__}: {_load_error_detail(exc)})"
        ) from None


def read_state_dict(source: str | Path | StateDict) -> dict[str, torch.Tensor]:
    """A state dict from a dict, a .safetensors file or a torch file (never unpickling code)."""
    where = "the weights"
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"weights file not found: {path}")
        where = str(path)
        loaded = _load_file(path)
        if not isinstance(loaded, Mapping):
            raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict (a mapping of tensors)")
        sd = dict(loaded)
    for wrapper in ("state_dict", "model", "model_state"):  # common training-checkpoint layouts
        if wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = dict(sd[wrapper])
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{where}: not a state dict (it holds entries other than named tensors)")
    prefix = "module."  # DistributedDataParallel / DataParallel wrapping
    if sd and all(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def torchvision_arch(sd: StateDict) -> str:
    """Name of the reslab v1.5 network matching a torchvision state dict (e.g. "resnext50_32x4d")."""
    blocks = []
    for stage in range(1, 5):
        ids = {int(m[1]) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(len(ids))
    bottleneck = "layer1.0.conv3.weight" in sd
    by_layers = {(b, layers): d for d, (b, layers) in IMAGENET_LAYERS.items()}
    depth = by_layers.get((bottleneck, tuple(blocks)))
    if depth is None or "conv1.weight" not in sd:
        raise CheckpointError(
            f"not a torchvision ResNet state dict (blocks per stage {blocks}, bottleneck={bottleneck})"
        )
    if not bottleneck:
        return f"resnet{depth}"
    try:
        width = sd["layer1.0.conv1.weight"].shape[0]  # = base_width * groups at planes=64
        groups = width // sd["layer1.0.conv2.weight"].shape[1]
        base_width = width // groups
    except (KeyError, IndexError, ZeroDivisionError):  # a damaged or hand-made file
        raise CheckpointError("not a torchvision ResNet state dict (its first bottleneck block is malformed)") from None
    if groups == 1 and base_width == 64:
        return f"resnet{depth}"
    if groups == 1 and base_width == 128:
        return f"wide_resnet{depth}_2"
    return f"resnext{depth}_{groups}x{base_width}d"


def from_torchvision(source: str | Path | StateDict, name: str | None = None) -> ResNet:
    """A reslab network holding torchvision weights (file path or state dict).

    The architecture and class count are read from the weights unless `name` is given.
    """
    sd = read_state_dict(source)
    name = name or torchvision_arch(sd)
    num_classes = sd["fc.weight"].shape[0] if "fc.weight" in sd else 0
    in_chans = sd["conv1.weight"].shape[1]
    model_info(name)  # unknown names fail here with suggestions
    model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    load_torchvision_into(model, sd)
    return model


def load_torchvision_into(model: ResNet, source: str | Path | StateDict) -> None:
    """Copy torchvision weights into an existing reslab v1.5 network; errors name any mismatch."""
    sd = read_state_dict(source)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {keys[:4]}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
            if keys
        ]
        raise CheckpointError(f"torchvision weights do not fit {model.name}; " + "; ".join(parts))
    model.load_state_dict(sd)


def to_torchvision(model: ResNet) -> dict[str, torch.Tensor]:
    """The model's state dict in torchvision's layout, for torchvision.models.<arch>().load_state_dict."""
    if model.preact or model.conv1.kernel_size != (7, 7):
        raise CheckpointError(f"{model.name} has no torchvision counterpart (needs an ImageNet post-activation net)")
    for m in model.modules():
        if getattr(m, "conv3", None) is not None and m.conv1.stride != (1, 1):
            raise CheckpointError(f"{model.name} strides the 1x1 conv (paper v1); torchvision is v1.5")
        if getattr(m, "residual", True) is False:
            raise CheckpointError(f"{model.name} is a plain net; torchvision has only residual nets")
        if m.__class__.__name__ == "PadShortcut":
            raise CheckpointError(f"{model.name} uses shortcut A; torchvision uses B")
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tv_keys_ok = all(not k.startswith("final_bn") for k in sd)
    assert tv_keys_ok, "post-activation nets have no final_bn"
    return sd
