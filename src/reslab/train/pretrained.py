"""Weights to start training from (`model.pretrained`): a reslab weights file or run directory, a
torchvision / other state-dict file, or torchvision's published weights by name
(`torchvision:resnet50.IMAGENET1K_V2`, `torchvision:ResNet50_Weights.IMAGENET1K_V2`, or
`torchvision:resnet50` for its DEFAULT weights), loaded into the freshly built network.

Weights by name are fetched as torchvision fetches them, into its cache
(`torch.hub.get_dir()/checkpoints`, i.e. $TORCH_HOME/hub/checkpoints, under the file name the URL
ends with), so a file torchvision already downloaded is reused and a file put there by hand on a
machine without network is found. The cached file is read like any other untrusted file
(`interop.read_state_dict`: plain tensors only, memory bounded by the file) rather than by
`torch.hub.load_state_dict_from_url`, which would `torch.load` it without those checks.

`load_pretrained` says on stderr what it loaded and what it re-initialised.
"""

from __future__ import annotations

import difflib
import http.client
import sys
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch

from reslab.errors import CheckpointError, ConfigError
from reslab.models import ResNet
from reslab.rundir import CHECKPOINTS_DIR  # torch.hub's download folder has a run's checkpoints/ name

TORCHVISION = "torchvision:"  # model.pretrained prefix of torchvision's weights by name


# ---- torchvision weights by name -------------------------------------------------------------------


def torchvision_archs() -> dict[str, Any]:
    """{architecture: its torchvision weights enum} for torchvision's networks that reslab builds
    under the same name (its v1.5 ResNets, ResNeXts and Wide ResNets)."""
    import torchvision
    from torchvision.models import get_model_weights, list_models

    from reslab.models.registry import list_models as reslab_models

    ours = set(reslab_models())
    return {a: get_model_weights(a) for a in list_models(module=torchvision.models) if a in ours}


def torchvision_weights(name: str) -> tuple[str, Any]:
    """(architecture, weights enum member) for `resnet50.IMAGENET1K_V2`, `ResNet50_Weights.IMAGENET1K_V2`
    or `resnet50` (its DEFAULT); a ConfigError listing the close names otherwise."""
    import torchvision
    from torchvision.models import get_weight, list_models

    archs = torchvision_archs()
    by_enum = {enum.__name__: arch for arch, enum in archs.items()}
    head, _, value = name.strip().partition(".")
    arch = by_enum.get(head) or (head.lower() if head.lower() in archs else None)
    if arch is None and head.lower() in list_models(module=torchvision.models):
        raise ConfigError(
            f"model.pretrained={TORCHVISION}{name}: torchvision's {head} is not a network reslab builds; "
            f"reslab loads torchvision's {', '.join(archs)}"
        )
    if arch is None:
        spellings = [*archs, *by_enum, *(f"{a}.{v}" for a, enum in archs.items() for v in enum.__members__)]
        close = difflib.get_close_matches(name, spellings, n=5, cutoff=0.5)
        raise ConfigError(
            f"unknown torchvision weights {name!r}"
            + (f"; closest: {', '.join(TORCHVISION + c for c in close)}" if close else "")
            + f" (reslab loads torchvision's {', '.join(archs)}, as {TORCHVISION}ARCH[.WEIGHTS])"
        )
    enum = archs[arch]
    value = value or "DEFAULT"
    try:
        return arch, get_weight(f"{enum.__name__}.{value.upper()}")
    except (KeyError, ValueError):
        choices = ", ".join(f"{TORCHVISION}{arch}.{v}" for v in enum.__members__)
        raise ConfigError(
            f"torchvision has no {arch} weights {value!r}: {choices} (DEFAULT = {enum.DEFAULT.name})"
        ) from None


def torchvision_cache_path(url: str) -> Path:
    """Where torchvision keeps the file of `url`: torch.hub.get_dir()/checkpoints/<the URL's file name>."""
    return Path(torch.hub.get_dir()) / CHECKPOINTS_DIR / Path(urlparse(url).path).name


def fetch_torchvision(name: str, url: str) -> Path:
    """The cached file of `url`, downloaded first when absent; one line naming the URL and the path
    to put the file at when there is no network."""
    path = torchvision_cache_path(url)
    if path.is_file():
        return path
    progress = sys.stderr.isatty()  # a bar and this line for a person; a log gets only the outcome
    if progress:
        print(f"downloading torchvision weights {name}: {url} -> {path}", file=sys.stderr)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create torchvision's cache folder {path.parent} ({exc})") from None
    try:  # to a temporary file beside `path`, renamed when complete: never a half file under the name
        torch.hub.download_url_to_file(url, str(path), None, progress=progress)
    except (URLError, ConnectionError, TimeoutError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(
            f"cannot download torchvision weights {name} ({str(reason).strip() or type(exc).__name__}): "
            f"download {url} to {path} (no network here?), then rerun"
        ) from None
    except OSError as exc:  # the cache folder is not writable, the disk is full, ...
        raise CheckpointError(f"cannot write torchvision weights {name} to {path} ({exc})") from None
    return path


# ---- loading into the network ----------------------------------------------------------------------


def _file_arch(sd: dict[str, torch.Tensor]) -> str | None:
    """The torchvision architecture a state dict holds, if it is one."""
    from reslab.models.interop import torchvision_arch

    try:
        return torchvision_arch(sd)
    except CheckpointError:
        return None


def _read(model: ResNet, source: str) -> tuple[dict[str, torch.Tensor], str, str | None]:
    """(state dict, what was read for the user, the architecture the file holds if known)."""
    from reslab.models.interop import read_state_dict
    from reslab.weights import is_reslab_weights, load_weights, one_network, resolve_weights

    if source.startswith(TORCHVISION):
        name = source[len(TORCHVISION) :]
        arch, weights = torchvision_weights(name)
        if arch != model.name:  # before downloading 100 MB of the wrong network
            raise CheckpointError(
                f"model.pretrained={source} holds torchvision's {arch} weights, which do not fit {model.name}: "
                f"train with --model {arch}"
            )
        path = fetch_torchvision(name, weights.url)
        try:
            sd = read_state_dict(path)
        except CheckpointError as exc:  # a truncated or replaced download
            raise CheckpointError(f"{exc}; delete it to download it again") from None
        return sd, f"{TORCHVISION}{arch}.{weights.name} ({path})", _file_arch(sd)
    try:
        path = resolve_weights(source)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{_torchvision_hint(source)}") from None
    if path.suffix == ".safetensors" and is_reslab_weights(path):
        weights = load_weights(path)  # checked: metadata, architecture, shapes
        return one_network(weights, "fine-tuning").state_dict(), str(path), weights.meta.model
    sd = read_state_dict(path)
    return sd, str(path), _file_arch(sd)


def _torchvision_hint(source: str) -> str:
    """A hint to add the `torchvision:` prefix when `source` reads like a torchvision name."""
    head = source.partition(".")[0]
    if "/" in source or "\\" in source or not (head.lower() in torchvision_archs() or "_Weights" in head):
        return ""
    return f"; for torchvision's weights say model.pretrained={TORCHVISION}{source}"


def load_pretrained(model: ResNet, source: str) -> None:
    """Weights for fine-tuning: a reslab weights file / run dir, a torchvision file, or
    `torchvision:NAME`. The classifier is kept when its shape fits and re-initialised otherwise.
    The file is untrusted: anything wrong with it is a one-line CheckpointError naming it; one
    holding another architecture names the --model that fits it."""
    sd, what, arch = _read(model, source)
    in_file = len(sd)
    own = model.state_dict()
    head_note = ""
    if any(k in own and own[k].shape != v.shape for k, v in sd.items() if k.startswith("fc.")):
        file_classes = sd["fc.weight"].shape[0] if "fc.weight" in sd else "another number of"
        head_note = f"new head for {model.num_classes} classes (the file has {file_classes})"
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}  # another class count: a new head
    missing = [k for k in own if k not in sd and not k.startswith("fc.")]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} {[k[:80] for k in items[:3]]}{' ...' if len(items) > 3 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", wrong))
            if items
        )
        other = f"; the file holds {arch} weights: train with --model {arch}" if arch and arch != model.name else ""
        if "conv1.weight" in sd and sd["conv1.weight"].ndim == 4 and sd["conv1.weight"].shape[1] in (1, 3):
            chans = sd["conv1.weight"].shape[1]
            if "conv1.weight" in own and chans != own["conv1.weight"].shape[1]:  # grey images into an RGB net, or back
                other += f"; the file takes {chans}-channel images: --set data.in_chans={chans}"
        raise CheckpointError(f"model.pretrained={source} does not fit {model.name}: {detail}{other}")
    model.load_state_dict(sd, strict=False)
    _report(what, len(sd), in_file, [k for k in own if k not in sd], head_note or "not in the file")


def _report(what: str, loaded: int, in_file: int, fresh: list[str], why: str) -> None:
    """One or two lines on stderr (rank 0 only): what was loaded, and what was re-initialised and why."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    print(f"fine-tuning from {what}: loaded {loaded} of its {in_file} tensors", file=sys.stderr)
    if fresh:
        print(f"  {', '.join(fresh)}: {why}, freshly initialised", file=sys.stderr)
