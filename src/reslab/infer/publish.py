"""`reslab push`: a run or weights file as a Hugging Face Hub model repository.

The repository folder holds three files:
  weights.safetensors  the weights file itself, byte for byte (architecture, classes and
                       preprocessing in its metadata; what `hf-hub:USER/NAME` loads, reslab.hub)
  config.json          the same record as plain JSON for other tools: `preprocessing_info` (the
                       export sidecar's fields: model, classes, input size, resize rule, mean/std)
                       plus the architecture's family and paper, the data checksum and the command
  README.md            a model card: YAML header (license, library, tags), metrics, the training
                       command, the data and its checksum, preprocessing, how to use it

The metrics are those of the weights' own evaluation: a run's summary.json ("kept": the
evaluation of the weights the run ended with, on which part, at which step) when given a run
directory, else the metrics stored in the weights. `build_hub_folder` writes the folder (what
`--dry-run DIR` stops at); `upload_hub_folder` creates the repository if needed and uploads it
with huggingface_hub (token from HF_TOKEN or `hf auth login`).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reslab.atomic import atomic_write, atomic_write_bytes
from reslab.errors import CheckpointError, ConfigError
from reslab.hub import HF_HUB, HUB_WEIGHTS_FILE, INSTALL_HINT, check_repo_id, is_hub_spec, offline
from reslab.infer.export import preprocessing_info
from reslab.models import count_params, model_info
from reslab.records import to_json
from reslab.rundir import RunDir
from reslab.weights import FORMAT_VERSION, Weights, load_weights, resolve_weights

CONFIG_FILE, CARD_FILE = "config.json", "README.md"
HUB_FILES = (HUB_WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
# A license id as the Hub spells them: mit, apache-2.0, cc-by-4.0, bsd-3-clause, other, ...
LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")
SKIPPED_METRICS = ("step", "epoch", "elapsed_s", "eval_tta_flip")


@dataclass
class HubFolder:
    path: Path
    repo: str
    weights: Weights
    metrics: dict[str, float]  # what the card reports


def check_license(license_id: str) -> str:
    if not LICENSE_ID.fullmatch(license_id):
        raise ConfigError(
            f"--license {license_id!r}: give a license id as the Hub spells it (mit, apache-2.0, cc-by-4.0, other)"
        )
    return license_id


def _run_of(source: str) -> RunDir | None:
    return RunDir(source) if not is_hub_spec(source) and Path(source).is_dir() else None


def _summary(run: RunDir | None) -> dict[str, Any]:
    """The run's summary.json as JSON ({} for a weights file); a damaged one is RunDir's one-line error."""
    summary = run.read_summary() if run is not None else None
    return to_json(summary) if summary is not None else {}


def card_metrics(weights: Weights, summary: dict[str, Any]) -> dict[str, float]:
    """The weights' evaluation: the run's kept evaluation when there is a summary, else the weights'."""
    kept = summary.get("kept", {}) if isinstance(summary.get("kept"), dict) else {}
    source = kept.get("evaluation") if isinstance(kept.get("evaluation"), dict) else weights.meta.metrics
    return {
        k: float(v)
        for k, v in source.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k.endswith(("error", "loss", "accuracy"))
    }


def training_command(command: str) -> str:
    """The recorded command as a user types it: `__main__.py train ...` -> `reslab train ...`."""
    head, _, rest = command.strip().partition(" ")
    return f"reslab {rest}" if head in ("reslab", "__main__.py", "cli.py") else command.strip()


def hub_config(weights: Weights) -> dict[str, Any]:
    """config.json: the export sidecar's preprocessing record, less the exported graph's fields."""
    meta = weights.meta
    info = model_info(meta.model)
    config = preprocessing_info(weights, count_params(weights.model))
    for graph_only in ("precision", "input", "output", "torch_version"):
        config.pop(graph_only)
    return {
        "library_name": "reslab",
        "weights_file": HUB_WEIGHTS_FILE,
        "format_version": FORMAT_VERSION,
        "architecture": {"name": meta.model, "family": info.family, "depth": info.depth, "paper": info.paper},
        **config,
        "normalisation": "x = (pixel / 255 - mean) / std, mean and std in pixel/255 units, (C, 1, 1) or (C, H, W)",
        "data_sha256": meta.data_sha256,
        "command": meta.command,
    }


def _metric_name(key: str) -> str:
    """test_top1_error -> "test top-1 error"."""
    return key.replace("_", " ").replace("top1", "top-1").replace("top5", "top-5")


def _metric_value(key: str, value: float) -> str:
    return f"{100 * value:.2f}%" if key.endswith(("error", "accuracy")) else f"{value:.4f}"


def model_card(repo: str, weights: Weights, summary: dict[str, Any], metrics: dict[str, float], license_id: str) -> str:
    """README.md of the repository (see the module docstring)."""
    meta, stats = weights.meta, weights.stats
    info = model_info(meta.model)
    header = {
        "license": license_id,
        "library_name": "reslab",
        "pipeline_tag": "image-classification",
        "tags": ["reslab", "resnet", info.family, "image-classification"],
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {repo}", ""]
    version = f" {meta.reslab_version}" if meta.reslab_version else ""
    lines.append(
        f"`{meta.model}` ({info.family}, {info.paper}) classifying {meta.num_classes} classes, trained with "
        f"reslab{version} on `{meta.dataset or 'unrecorded data'}`."
    )
    if summary.get("synthetic_data") or meta.dataset.startswith("synthetic"):
        lines += ["", "> Trained on reslab's synthetic smoke-test data: the numbers below are not a result."]
    lines += ["", "## Results", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {_metric_name(k)} | {_metric_value(k, v)} |" for k, v in metrics.items()]
        kept = summary.get("kept") if isinstance(summary.get("kept"), dict) else {}
        how = [
            f"flip test-time augmentation {'on' if meta.tta_flip else 'off'}",
            f"precision {meta.evaluation.get('precision', 'fp32')}",
        ]
        if kept.get("step") is not None:
            how.insert(0, f"weights kept by train.keep={kept.get('keep')} at step {kept['step']}")
        if summary.get("steps") is not None:
            how.append(
                f"{summary['steps']} steps ({summary.get('epochs')} epochs) in {summary.get('wall_time_s')} s wall time"
            )
        lines += ["", "Measured by reslab at the end of training: " + "; ".join(how) + "."]
    else:
        lines.append("No metrics were recorded with these weights.")
    lines += ["", "## Training", ""]
    if meta.command:
        lines += ["```bash", training_command(meta.command), "```", ""]
    else:
        lines += ["The training command was not recorded.", ""]
    checksum = f"`{meta.data_sha256}`" if meta.data_sha256 else "not recorded"
    lines.append(f"Data: `{meta.dataset or 'unrecorded'}`; SHA-256 of its source files (train + test): {checksum}.")
    per_pixel = tuple(stats.mean.shape[1:]) != (1, 1)
    norm = (
        f"per-pixel mean and std of shape {tuple(stats.mean.shape)}, stored in {HUB_WEIGHTS_FILE} and {CONFIG_FILE}"
        if per_pixel
        else f"mean {_rounded(stats.mean)}, std {_rounded(stats.std)} (per channel, pixel/255 units)"
    )
    shown = ", ".join(meta.class_names[:20]) + (f", ... ({meta.num_classes} in all)" if meta.num_classes > 20 else "")
    lines += [
        "",
        "## Preprocessing",
        "",
        f"- input: {meta.in_chans} channel{'s' if meta.in_chans > 1 else ''} "
        f"({'RGB' if meta.in_chans == 3 else 'grey' if meta.in_chans == 1 else 'raw'}), "
        f"{meta.input_size}x{meta.input_size} pixels",
        f"- resize: `{meta.resize}`",
        f"- normalisation: x = (pixel / 255 - mean) / std, {norm}",
        f"- classes: {shown}",
        "",
        "## Use",
        "",
        "```bash",
        "pip install 'reslab[hub]'",
        f"reslab predict {HF_HUB}{repo} photo.jpg          # same preprocessing as in training",
        f"reslab embed {HF_HUB}{repo} photos/ -o feats.npy  # pooled features, one row per image",
        "```",
        "",
        "```python",
        "from reslab.weights import load_weights",
        "",
        f'weights = load_weights("{HF_HUB}{repo}")  # .model (eval mode), .preprocess, .meta',
        "```",
        "",
        f"`{HUB_WEIGHTS_FILE}` holds the network, its preprocessing and class names (safetensors: no code "
        f"runs when it loads); `{CONFIG_FILE}` repeats them as JSON for other tools.",
        "",
    ]
    return "\n".join(lines)


def _rounded(t) -> list[float]:
    return [round(float(v), 4) for v in t.flatten().tolist()]


def _check_folder(folder: Path) -> None:
    """An empty (or absent) folder, or one `reslab push` wrote before: never mix in other files,
    which an upload would send along."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; --dry-run names a folder to write the repository into")
    others = sorted(p.name for p in folder.iterdir() if p.name not in HUB_FILES) if folder.is_dir() else []
    if others:
        raise ConfigError(
            f"{folder} holds other files ({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}); "
            "give an empty or new folder"
        )


def build_hub_folder(source: str, folder: str | Path, *, repo: str, license_id: str = "mit") -> HubFolder:
    """Write the repository's files for `source` (run directory, weights file, shipped name) into
    `folder`; the weights are loaded and checked first, as every consumer checks them."""
    check_repo_id(repo, "--repo")
    check_license(license_id)
    folder = Path(folder)
    _check_folder(folder)
    path = resolve_weights(source)
    weights = load_weights(path)
    summary = _summary(_run_of(source))
    metrics = card_metrics(weights, summary)
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "rb") as src:  # byte for byte: the file keeps its metadata and checks
        atomic_write(folder / HUB_WEIGHTS_FILE, lambda dst: shutil.copyfileobj(src, dst))
    atomic_write_bytes(folder / CONFIG_FILE, (json.dumps(hub_config(weights), indent=2) + "\n").encode())
    atomic_write_bytes(folder / CARD_FILE, model_card(repo, weights, summary, metrics, license_id).encode())
    return HubFolder(folder, repo, weights, metrics)


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises for refused requests and unreachable servers: its HTTP errors,
    OSError (no token, offline, connection) and its HTTP client's transport errors."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError, ValueError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def upload_hub_folder(folder: HubFolder, *, revision: str | None = None, private: bool = False) -> str:
    """Create the repository (if new; private when asked), the branch `revision` (if given and
    new), upload the folder as one commit; returns the commit's URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ConfigError(f"reslab push needs the Hugging Face Hub client: {INSTALL_HINT}") from None
    if offline():
        raise ConfigError("HF_HUB_OFFLINE=1 forbids uploading: unset it, or write the folder only with --dry-run DIR")
    api = HfApi()
    repo = folder.repo
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo,
            folder_path=str(folder.path),
            revision=revision,
            allow_patterns=list(HUB_FILES),
            commit_message=f"reslab push: {folder.weights.meta.model} on {folder.weights.meta.dataset or 'data'}",
        )
    except _hub_errors() as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403) or "token" in first.lower():
            hint = "; log in with `hf auth login` or set HF_TOKEN to a write token"
        elif status is None:
            hint = "; is the Hub reachable from here?"
        else:
            hint = ""
        raise CheckpointError(f"cannot push to {repo} ({first}){hint}") from None
    return str(getattr(commit, "commit_url", commit))
