"""`reslab push`: a run or weights file as a Hugging Face Hub model repository.

The repository folder holds three files:
  weights.safetensors  the weights (architecture, classes and preprocessing in its metadata; what
                       `hf-hub:USER/NAME` loads, reslab.hub): a copy whose metadata names no local
                       path, the same tensors and so the same predictions (see below)
  config.json          the same record as plain JSON for other tools: `preprocessing_info` (the
                       export sidecar's fields: model, classes, input size, resize rule, mean/std)
                       plus the architecture's family and paper, the data checksum and the command
  README.md            a model card: YAML header (license, library, tags), metrics, the training
                       command, the data (kind, folder name, image count, checksum),
                       preprocessing, the weights file's SHA-256, how to use it

The metrics are those of the weights' own evaluation: a run's summary.json ("kept": the
evaluation of the weights the run ended with, on which part, at which step) when given a run
directory, else the metrics stored in the weights. `build_hub_folder` writes the folder (what
`--dry-run DIR` stops at); `upload_hub_folder` creates the repository if needed and uploads it
with huggingface_hub (token from HF_TOKEN or `hf auth login`).

Privacy: weights record where their data and run were (`imagefolder:/home/me/photos`, data_dir,
the command's --data-dir and --run-dir). What is published names the data by kind, folder name,
image count and checksum instead and shows every absolute path as a placeholder (DATA_DIR,
RUN_DIR, ...: reslab.infer.redact), in the card, config.json and the uploaded weights' own
metadata; the user's weights file is never written. `keep_paths` (`--keep-paths`) publishes the
paths as recorded, and the weights byte for byte.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from reslab.atomic import atomic_write, atomic_write_bytes
from reslab.data.datasets import FILE_DATASETS, Split, dataset_sha256, load_dataset, resolve_data_dir, stored_splits
from reslab.data.folder import list_samples
from reslab.errors import CheckpointError, ConfigError, ReslabError
from reslab.hub import HF_HUB, HUB_WEIGHTS_FILE, INSTALL_HINT, check_repo_id, is_hub_spec, offline
from reslab.infer.export import preprocessing_info
from reslab.infer.onnx_cache import file_sha256
from reslab.infer.redact import DATA_DIR, RUN_DIR, data_location, folder_name, local_paths, public_meta
from reslab.models import count_params, model_info
from reslab.rundir import RunDir, RunSummary
from reslab.vocab import DATASETS
from reslab.weights import FORMAT_VERSION, Weights, WeightsMeta, load_weights, resolve_weights, write_meta

if TYPE_CHECKING:
    import torch

CONFIG_FILE, CARD_FILE = "config.json", "README.md"
HUB_FILES = (HUB_WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
# A license id as the Hub spells them: mit, apache-2.0, cc-by-4.0, bsd-3-clause, other, ...
LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")


@dataclass(frozen=True)
class DataRecord:
    """The training data as the card names it: what, which folder (by name), how many images and
    their checksum; where it lives only with --keep-paths."""

    kind: str  # registry name (imagefolder, cifar10, ...); "" when the weights name none
    folder: str  # the data folder's own name (a CSV's: the file's); "" when not recorded
    sha256: str  # the weights' data_sha256: of its files; "listing:..." of a streamed tree's listing
    images: dict[str, int]  # stored part -> images, counted when pushing; {} when the data is not here
    location: str = ""  # where the data was read from: published only with --keep-paths

    def title(self, dataset: str) -> str:
        """How the card names the data: imagefolder (folder `my-data`); `dataset` (as published) when
        the weights name data of no known kind."""
        if not self.kind:
            return f"`{dataset or 'unrecorded data'}`"
        what = "file" if self.kind == "csv" else "folder"
        return f"{self.kind} ({what} `{self.folder}`)" if self.folder else self.kind


@dataclass
class HubFolder:
    path: Path
    repo: str
    weights: Weights  # as uploaded: metadata without local paths unless --keep-paths
    metrics: dict[str, float]  # what the card reports
    data: DataRecord
    weights_sha256: str  # of the uploaded weights.safetensors, quoted in the card
    redacted: bool = False  # whether local paths were replaced (the user's own file keeps them)


def check_license(license_id: str) -> str:
    if not LICENSE_ID.fullmatch(license_id):
        raise ConfigError(
            f"--license {license_id!r}: give a license id as the Hub spells it (mit, apache-2.0, cc-by-4.0, other)"
        )
    return license_id


def _run_of(source: str) -> RunDir | None:
    return RunDir(source) if not is_hub_spec(source) and Path(source).is_dir() else None


def _summary(run: RunDir | None) -> RunSummary | None:
    """The run's summary.json (None for a weights file); a damaged one is RunDir's one-line error."""
    return run.read_summary() if run is not None else None


def card_metrics(weights: Weights, summary: RunSummary | None) -> dict[str, float]:
    """The weights' evaluation: the run's kept evaluation when there is a summary, else the weights'."""
    kept = summary.kept if summary is not None else None
    source = kept.evaluation if kept is not None and kept.evaluation else weights.meta.metrics
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


def count_images(kind: str, data_dir: str | None, sha256: str) -> dict[str, int]:
    """Images per stored part of the data, when it is on this machine as the weights recorded it
    (its checksum, computed again, equals `sha256`); {} otherwise, as a count of other data would
    be wrong. Image files are listed, the array datasets (CIFAR, MNIST) decoded."""
    if kind not in DATASETS or kind == "synthetic" or not sha256:
        return {}
    try:
        if dataset_sha256(kind, data_dir, listing=sha256.startswith("listing:")) != sha256:
            return {}
        parts = [cast(Split, part) for part in stored_splits(kind, data_dir)]
        if kind in FILE_DATASETS:
            return {part: len(list_samples(kind, resolve_data_dir(data_dir), part)[0]) for part in parts}
        return {part: len(load_dataset(kind, part, data_dir).labels) for part in parts}
    except (ReslabError, OSError):  # not here, moved or unreadable: the card says it was not counted
        return {}


def describe_data(meta: WeightsMeta, *, keep_paths: bool = False) -> DataRecord:
    """The card's record of the data the weights were trained on (see `DataRecord`)."""
    kind = meta.dataset_name if meta.dataset_name in DATASETS else ""
    where = data_location(meta)
    return DataRecord(
        kind=kind,
        folder=folder_name(where) if where else "",
        sha256=meta.data_sha256,
        images=count_images(kind, where or None, meta.data_sha256),
        location=where if keep_paths else "",
    )


def _metric_name(key: str) -> str:
    """test_top1_error -> "test top-1 error"."""
    return key.replace("_", " ").replace("top1", "top-1").replace("top5", "top-5")


def _metric_value(key: str, value: float) -> str:
    return f"{100 * value:.2f}%" if key.endswith(("error", "accuracy")) else f"{value:.4f}"


def model_card(folder: HubFolder, summary: RunSummary | None, license_id: str) -> str:
    """README.md of the repository (see the module docstring), from what is uploaded."""
    lines = _card_intro(folder, summary, license_id)
    lines += _results_section(folder.weights.meta, summary, folder.metrics)
    lines += _training_section(folder)
    lines += _preprocessing_section(folder.weights)
    lines += _use_section(folder.repo, folder.weights_sha256)
    return "\n".join(lines)


def _card_intro(folder: HubFolder, summary: RunSummary | None, license_id: str) -> list[str]:
    """The YAML header the Hub reads, the title and one sentence on what the network is."""
    meta = folder.weights.meta
    info = model_info(meta.model)
    header = {
        "license": license_id,
        "library_name": "reslab",
        "pipeline_tag": "image-classification",
        "tags": ["reslab", "resnet", info.family, "image-classification"],
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "", f"# {folder.repo}", ""]
    version = f" {meta.reslab_version}" if meta.reslab_version else ""
    lines.append(
        f"`{meta.model}` ({info.family}, {info.paper}) classifying {meta.num_classes} classes, trained with "
        f"reslab{version} on {folder.data.title(meta.dataset)}."
    )
    if (summary is not None and summary.synthetic_data) or meta.dataset.startswith("synthetic"):
        lines += ["", "> Trained on reslab's synthetic smoke-test data: the numbers below are not a result."]
    return lines


def _results_section(meta: WeightsMeta, summary: RunSummary | None, metrics: dict[str, float]) -> list[str]:
    """The metrics table and how they were measured (which weights, TTA, precision, steps)."""
    lines = ["", "## Results", ""]
    if not metrics:
        return [*lines, "No metrics were recorded with these weights."]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {_metric_name(k)} | {_metric_value(k, v)} |" for k, v in metrics.items()]
    kept = summary.kept if summary is not None else None
    how = [
        f"flip test-time augmentation {'on' if meta.tta_flip else 'off'}",
        f"precision {meta.evaluation.get('precision', 'fp32')}",
    ]
    if kept is not None:
        how.insert(0, f"weights kept by train.keep={kept.keep} at step {kept.step}")
    if summary is not None:
        how.append(f"{summary.steps} steps ({summary.epochs} epochs) in {summary.wall_time_s} s wall time")
    return [*lines, "", "Measured by reslab at the end of training: " + "; ".join(how) + "."]


def _training_section(folder: HubFolder) -> list[str]:
    """The command as the user typed it (local paths as placeholders) and the data it read."""
    meta = folder.weights.meta
    lines = ["", "## Training", ""]
    if meta.command:
        lines += ["```bash", training_command(meta.command), "```", ""]
    else:
        lines += ["The training command was not recorded.", ""]
    if folder.redacted:
        lines += [
            f"Local paths recorded with these weights are published as placeholders: {DATA_DIR} the data folder, "
            f"{RUN_DIR} the run directory, the option's name (e.g. CACHE_DIR) or PATH the others.",
            "",
        ]
    return [*lines, _data_line(folder.data, meta.dataset)]


def _data_line(data: DataRecord, dataset: str) -> str:
    """Data: imagefolder (folder `my-data`), 40 images (train 24, val 8, test 8); SHA-256 ..."""
    what = data.title(dataset) + (f" at `{data.location}`" if data.location else "")
    if data.images:
        parts = ", ".join(f"{part} {n}" for part, n in data.images.items())
        what += f", {sum(data.images.values())} images ({parts})"
    elif data.kind not in ("", "synthetic"):
        what += ", images not counted (the data is not on the pushing machine as the weights recorded it)"
    if data.kind == "synthetic":
        checksum = f"generated from a seed, no files (`{data.sha256}`)"
    elif not data.sha256:
        checksum = "SHA-256 not recorded"
    elif data.sha256.startswith("listing:"):
        checksum = f"SHA-256 of its file listing (each file's path and size): `{data.sha256}`"
    else:
        checksum = f"SHA-256 of its source files (every stored part): `{data.sha256}`"
    return f"Data: {what}; {checksum}."


def _preprocessing_section(weights: Weights) -> list[str]:
    """Input channels and size, the resize rule, the normalisation and the class names."""
    meta, stats = weights.meta, weights.stats
    per_pixel = tuple(stats.mean.shape[1:]) != (1, 1)
    norm = (
        f"per-pixel mean and std of shape {tuple(stats.mean.shape)}, stored in {HUB_WEIGHTS_FILE} and {CONFIG_FILE}"
        if per_pixel
        else f"mean {_rounded(stats.mean)}, std {_rounded(stats.std)} (per channel, pixel/255 units)"
    )
    shown = ", ".join(meta.class_names[:20]) + (f", ... ({meta.num_classes} in all)" if meta.num_classes > 20 else "")
    colour = "RGB" if meta.in_chans == 3 else "grey" if meta.in_chans == 1 else "raw"
    return [
        "",
        "## Preprocessing",
        "",
        f"- input: {meta.in_chans} channel{'s' if meta.in_chans > 1 else ''} ({colour}), "
        f"{meta.input_size}x{meta.input_size} pixels",
        f"- resize: `{meta.resize}`",
        f"- normalisation: x = (pixel / 255 - mean) / std, {norm}",
        f"- classes: {shown}",
    ]


def _use_section(repo: str, weights_sha256: str) -> list[str]:
    """How to load the repository, and what its files are."""
    return [
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
        f"`{HUB_WEIGHTS_FILE}` (SHA-256 `{weights_sha256}`) holds the network, its preprocessing and class "
        f"names (safetensors: no code runs when it loads); `{CONFIG_FILE}` repeats them as JSON for other tools.",
        "",
    ]


def _rounded(t: torch.Tensor) -> list[float]:
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


def build_hub_folder(
    source: str, folder: str | Path, *, repo: str, license_id: str = "mit", keep_paths: bool = False
) -> HubFolder:
    """Write the repository's files for `source` (run directory, weights file, shipped name) into
    `folder`; the weights are loaded and checked first, as every consumer checks them, and what
    is uploaded is loaded back. Local paths are replaced unless `keep_paths` (module docstring)."""
    check_repo_id(repo, "--repo")
    check_license(license_id)
    folder = Path(folder)
    _check_folder(folder)
    path = resolve_weights(source)
    weights = load_weights(path)
    run = _run_of(source)
    summary = _summary(run)
    known = local_paths(weights.meta, run.path if run else None)
    meta = weights.meta if keep_paths else public_meta(weights.meta, known)
    folder.mkdir(parents=True, exist_ok=True)
    uploaded = _write_weights(path, meta, changed=meta != weights.meta, target=folder / HUB_WEIGHTS_FILE)
    hub = HubFolder(
        path=folder,
        repo=repo,
        weights=load_weights(uploaded),
        metrics=card_metrics(weights, summary),
        data=describe_data(weights.meta, keep_paths=keep_paths),
        weights_sha256=file_sha256(uploaded),
        redacted=meta != weights.meta,
    )
    atomic_write_bytes(folder / CONFIG_FILE, (json.dumps(hub_config(hub.weights), indent=2) + "\n").encode())
    atomic_write_bytes(folder / CARD_FILE, model_card(hub, summary, license_id).encode())
    return hub


def _write_weights(source: Path, meta: WeightsMeta, *, changed: bool, target: Path) -> Path:
    """The uploaded weights: `source` byte for byte when its metadata is published as it is,
    else its tensors under `meta` (reslab.weights.write_meta). `source` itself is never written."""
    if changed:
        return write_meta(source, meta, target)
    with open(source, "rb") as src:
        atomic_write(target, lambda dst: shutil.copyfileobj(src, dst))
    return target


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
