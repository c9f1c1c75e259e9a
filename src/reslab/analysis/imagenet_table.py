"""ImageNet Tables 2-3: evaluate ResNet-18 ... 152 weights with 1-crop and 10-crop testing.

Each `--weights [NAME=]PATH` (a .safetensors file or a run directory) is evaluated on the val/
split of an ImageFolder tree: 1-crop (shorter side resized to 256/224 of the crop, centre crop)
and the paper's 10-crop (4 corners + centre, and their mirrors; softmax scores averaged). The
paper's numbers are 10-crop errors on the ImageNet validation set. Each evaluation is saved in
evals/, so a rerun only evaluates what is new or changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from reslab.analysis import paper
from reslab.analysis.experiment import Execution, Experiment
from reslab.analysis.paper import ImageNetRow
from reslab.analysis.report_page import Page, environment
from reslab.analysis.runs import pct
from reslab.analysis.training_experiment import invocation_lines
from reslab.atomic import atomic_write_bytes
from reslab.device import resolve_device
from reslab.errors import ConfigError, DataError
from reslab.expdir import ExperimentResults
from reslab.models import model_info
from reslab.records import RecordError, dumps, from_json, load_json
from reslab.weights import resolve_weights

NAME = "imagenet-table"
DEFAULT_DATA = "imagefolder"
DEFAULT_DEPTHS: list[int] = []
TAKES = {"data_dir", "weights", "batch_size"}
SUMMARY = "1-crop and 10-crop top-1/top-5 errors of given weights against the paper's Tables 2-3"
MODES = {"1-crop": "center", "10-crop": "ten-crop"}
NOTES = [  # how to read the table, below it
    "Paper: single models, 10-crop testing on the ImageNet validation set (Tables 2-3). ResNet-34 is matched "
    "to the paper's option A/B/C by the weights' shortcut option (default B).",
    "Our resnetD nets stride the bottleneck's 3x3 conv (torchvision's v1.5, about 0.5% better top-1); "
    "resnetD_v1 are the paper's v1.",
    "1-crop: shorter side resized to 256 (for 224 crops), centre crop. 10-crop: corners + centre and mirrors, "
    "softmax scores averaged.",
]


@dataclass(kw_only=True)
class CropErrors:
    """One weights file's evaluation in one test mode."""

    top1_error: float  # fractions
    top5_error: float
    images: int
    seconds: float


@dataclass(kw_only=True)
class EvaluationKey:
    """Which file was evaluated on which data: a saved evaluation of another key is stale."""

    weights: str  # resolved path
    size: int  # bytes
    mtime_ns: int
    data_dir: str  # resolved path


@dataclass(kw_only=True)
class SavedEvaluation:
    """evals/NAME.json: a weights file's 1-crop and 10-crop errors, kept for the next invocation."""

    key: EvaluationKey
    one_crop: CropErrors = field(metadata={"key": "1-crop"})
    ten_crop: CropErrors = field(metadata={"key": "10-crop"})


@dataclass(kw_only=True)
class ImagenetRow:
    name: str  # as given ([NAME=]PATH) or the weights' model
    model: str
    weights: str  # path of the weights file
    one_crop: CropErrors = field(metadata={"key": "1-crop"})
    ten_crop: CropErrors = field(metadata={"key": "10-crop"})
    paper: ImageNetRow | None  # the paper's row for the network, if it has one


@dataclass(kw_only=True)
class ImagenetResults(ExperimentResults):
    """results.json of `reslab reproduce imagenet-table`."""

    data_dir: str
    table: list[ImagenetRow]
    environment: dict[str, str] = field(default_factory=dict)


def parse_weights(items: list[str]) -> list[tuple[str | None, Path]]:
    """'[NAME=]PATH' -> (NAME or None, weights file)."""
    if not items:
        raise ConfigError(
            "imagenet-table needs weights to evaluate: --weights [NAME=]PATH (a .safetensors file "
            "or a run directory), once per network"
        )
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or Path(item).exists():  # a bare path (which may itself contain "=")
            name, path = "", item
        out.append((name or None, resolve_weights(path)))
    return out


def evaluate_weights_file(
    path: Path, root: Path, mode: str, batch_size: int, workers: int, device: torch.device
) -> CropErrors:
    """1-crop or 10-crop top-1/top-5 of one weights file on root/val, streamed by DataLoader workers."""
    from reslab.data.folder import list_image_files
    from reslab.data.sources import DataSource
    from reslab.evaluation import EvalPlan, evaluate_weights
    from reslab.weights import load_weights

    weights = load_weights(path)
    meta = weights.meta
    classes = list_image_files(root, "val")[1]
    if len(classes) != meta.num_classes or (meta.classes and list(meta.classes) != list(classes)):
        raise DataError(
            f"{path} predicts {meta.num_classes} classes but {root} has {len(classes)} class folders"
            + ("" if len(classes) != meta.num_classes else " with other names")
            + "; evaluate on the dataset the weights were trained for"
        )
    source = DataSource("imagefolder", data_dir=str(root), in_memory=False, workers=workers)
    plan = EvalPlan(source, part="val", eval_mode=MODES[mode], batch_size=batch_size)
    m = evaluate_weights(weights, plan, device)
    return CropErrors(
        top1_error=m["top1_error"], top5_error=m["top5_error"], images=m["images"], seconds=round(m["seconds"], 2)
    )


def _paper_row(model: str, options: dict) -> ImageNetRow | None:
    try:
        info = model_info(model)
    except KeyError:
        return None
    if info.input_size != 224 or info.family not in ("resnet-v1", "resnet-v1.5", "plain"):
        return None
    return paper.imagenet_row(info.depth, info.family != "plain", options.get("shortcut"))


def run(exp: Experiment, execution: Execution) -> Path:
    s = exp.settings
    root, entries = _check_inputs(s.data_dir, s.weights)
    exp.start()
    dev = resolve_device(execution.device)
    table = []
    for name, path in entries:
        meta_model, options, _ = _meta(path)
        label = name or meta_model
        cache = exp.dir.eval_cache(label)
        saved = _saved_evaluation(label, path, root, cache, s.batch_size, execution.workers, dev)
        table.append(_results_row(label, meta_model, path, saved, _paper_row(meta_model, options)))
    exp.dir.write_results(ImagenetResults(experiment=NAME, data_dir=str(root), table=table, environment=environment()))

    page = Page("ImageNet Tables 2-3: 1-crop and 10-crop errors")
    page.paragraph(f"Compares with {paper.PAPER}, Tables 2-3: {SUMMARY}.")
    if not any(row.ten_crop.images == 50_000 for row in table):
        page.banner(
            "note",
            f"{root}/val does not hold the 50,000 ImageNet validation images: these numbers are "
            "not comparable with the paper's, which are on the full validation set.",
        )
    _errors_table(page, table)
    page.bullets(NOTES)
    page.heading("Commands")
    page.code(
        invocation_lines(exp) + [f"reslab eval {p} --data imagefolder --data-dir {root} --crops 10" for _, p in entries]
    )
    page.environment()
    return page.write(exp.dir.report)


def _check_inputs(data_dir: str | None, weights: list[str]) -> tuple[Path, list[tuple[str | None, Path]]]:
    """The ImageFolder root and the weights to evaluate, checked before anything is written."""
    if not data_dir:
        raise DataError(
            "imagenet-table needs --data-dir ROOT: an ImageFolder tree with val/<class>/*.JPEG "
            "(ImageNet's validation set sorted into class folders)"
        )
    root = Path(data_dir)
    entries = parse_weights(weights)
    if not (root / "val").is_dir():
        raise DataError(
            f"{root}/val not found: --data-dir must hold val/<class>/*.JPEG (ImageNet's validation "
            "set sorted into class folders)"
        )
    return root, entries


def _saved_evaluation(
    label: str, path: Path, root: Path, cache: Path, batch_size: int, workers: int, device: torch.device
) -> SavedEvaluation:
    """1-crop and 10-crop results of one weights file, read from `cache` when it holds an evaluation of the
    same file (path, size, mtime) on the same data; else (none, another, or a damaged one) evaluated now
    and saved there."""
    stat = path.stat()
    key = EvaluationKey(
        weights=str(path.resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns, data_dir=str(root.resolve())
    )
    try:
        saved = from_json(SavedEvaluation, load_json(cache)) if cache.is_file() else None
    except RecordError:
        saved = None  # a cache: evaluate again
    if saved is None or saved.key != key:
        print(f"evaluating {label} ({path}) on {root}/val: 1-crop and 10-crop", flush=True)
        one, ten = (evaluate_weights_file(path, root, mode, batch_size, workers, device) for mode in MODES)
        saved = SavedEvaluation(key=key, one_crop=one, ten_crop=ten)
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, dumps(saved))
    return saved


def _results_row(label: str, model: str, path: Path, saved: SavedEvaluation, ref: ImageNetRow | None) -> ImagenetRow:
    """One weights file's row of results.json: our errors, and the paper's row for the network if it has one."""
    return ImagenetRow(
        name=label,
        model=model,
        weights=str(path),
        one_crop=saved.one_crop,
        ten_crop=saved.ten_crop,
        paper=ref,
    )


def _errors_table(page: Page, table: list[ImagenetRow]) -> None:
    """Our 1-crop and 10-crop errors beside the paper's row for the same network, from results.json's rows."""
    rows = []
    for row in table:
        one, ten, ref = row.one_crop, row.ten_crop, row.paper
        rows.append(
            [
                row.name,
                row.model,
                f"{one.images:,}",
                pct(one.top1_error),
                pct(one.top5_error),
                pct(ten.top1_error),
                pct(ten.top5_error),
                ref.label if ref else "n/a",
                f"{ref.top1:.2f}" if ref else "n/a",
                f"{ref.top5:.2f}" if ref and ref.top5 is not None else "n/a",
                f"{100 * ten.top1_error - ref.top1:+.2f}" if ref else "n/a",
            ]
        )
    page.table(
        [
            "weights",
            "model",
            "images",
            "1-crop top-1 %",
            "1-crop top-5 %",
            "10-crop top-1 %",
            "10-crop top-5 %",
            "paper row",
            "paper top-1 %",
            "paper top-5 %",
            "10-crop top-1 - paper",
        ],
        rows,
        caption="Top-1 / top-5 error (%)",
        id="imagenet-table",
    )


def _meta(path: Path) -> tuple[str, dict, list[str]]:
    from reslab.weights import read_meta

    meta = read_meta(path)
    return meta.model, dict(meta.options), list(meta.classes)
