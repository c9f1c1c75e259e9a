"""Embeddings: one pooled feature vector per image file, for retrieval, clustering or a linear probe.

A row is what the classifier sees: `forward_head(forward_features(x), pre_logits=True)`, the
global average of the last feature map, (B, num_features) (64 for resnet56, 2048 for resnet50).
Images are decoded and preprocessed exactly as `reslab predict` does (`decode_batches`, with the
preprocessing stored in the weights), in float32 on the unfolded eval-mode network, one view per
image (no flip averaging: an embedding is of the image as given).

`write_embeddings` stores the rows as a .npy file (float32, N x D) and beside it a .json file
naming the file of each row, the files that could not be read, and where the rows came from.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reslab.atomic import atomic_write_bytes
from reslab.data.decode import DEFAULT_MAX_PIXELS
from reslab.errors import ConfigError
from reslab.infer.predict import decode_batches
from reslab.weights import Weights


@dataclass
class Embeddings:
    features: np.ndarray  # (N, D) float32, row i for files[i]
    files: list[str]  # the images embedded, in row order
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, why) for those that could not be read


@torch.inference_mode()
def embed_images(weights: Weights, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, S, S) preprocessed images -> float32 (B, num_features) pooled features."""
    model = weights.model
    device = next(model.parameters()).device
    x = weights.preprocess.normalize(images.to(device))
    return model.forward_head(model.forward_features(x), pre_logits=True).float().cpu()


def embed_files(
    weights: Weights,
    files: Sequence[tuple[str, str | None]],
    *,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Embeddings:
    """The embeddings of `files` ([(path, error)] as from `collect_images`); unreadable files are
    listed in `failed` and get no row."""
    rows: list[torch.Tensor] = []
    kept: list[str] = []
    failed: list[tuple[str, str]] = []
    for chunk, images in decode_batches(weights.preprocess, files, batch_size=batch_size, max_pixels=max_pixels):
        failed += [(path, error) for path, error in chunk if error is not None]
        kept += [path for path, error in chunk if error is None]
        if images is not None:
            rows.append(embed_images(weights, images))
    dim = weights.model.num_features
    features = torch.cat(rows).numpy() if rows else np.zeros((0, dim), dtype=np.float32)
    return Embeddings(features, kept, failed)


def sidecar_path(out: Path) -> Path:
    """feats.npy -> feats.json: the file list beside the rows."""
    return out.with_suffix(".json")


def write_embeddings(out: str | Path, embeddings: Embeddings, weights: Weights, source: str) -> tuple[Path, Path]:
    """(the .npy file, the .json file) written atomically; `out` must end in .npy."""
    out = Path(out)
    if out.suffix != ".npy":
        raise ConfigError(f"-o {out}: name a .npy file (the file list goes beside it, as {out.stem}.json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, embeddings.features.astype(np.float32, copy=False))
    atomic_write_bytes(out, buf.getvalue())
    meta = weights.meta
    info = {
        "rows": embeddings.files,  # row i of the .npy file is the embedding of rows[i]
        "failed": [{"file": path, "error": error} for path, error in embeddings.failed],
        "shape": list(embeddings.features.shape),
        "dtype": "float32",
        "weights": source,
        "model": meta.model,
        "features": "forward_head(forward_features(x), pre_logits=True): global average pool of the last stage",
        "preprocess": {"in_chans": meta.in_chans, "input_size": meta.input_size, "resize": meta.resize},
    }
    sidecar = sidecar_path(out)
    atomic_write_bytes(sidecar, (json.dumps(info, indent=2) + "\n").encode())
    return out, sidecar
