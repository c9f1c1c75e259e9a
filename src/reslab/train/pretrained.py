"""Weights to start training from (`model.pretrained`): a reslab weights file or run directory, or
a torchvision / other state-dict file, loaded into the freshly built network.
"""

from __future__ import annotations

from reslab.errors import CheckpointError
from reslab.models import ResNet


def load_pretrained(model: ResNet, source: str) -> None:
    """Weights for fine-tuning: a reslab weights file / run dir, or a torchvision file.
    The classifier is kept when its shape fits and re-initialised otherwise. The file is
    untrusted: anything wrong with it is a one-line CheckpointError naming it."""
    from reslab.models.interop import read_state_dict
    from reslab.weights import is_reslab_weights, load_weights, resolve_weights

    path = resolve_weights(source)
    if path.suffix == ".safetensors" and is_reslab_weights(path):
        sd = load_weights(path).model.state_dict()  # checked: metadata, architecture, shapes
    else:
        sd = read_state_dict(path)
    own = model.state_dict()
    if any(k in own and own[k].shape != v.shape for k, v in sd.items() if k.startswith("fc.")):
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
        raise CheckpointError(f"model.pretrained={source} does not fit {model.name}: {detail}")
    model.load_state_dict(sd, strict=False)
