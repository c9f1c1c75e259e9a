"""Evaluation, in one place: the metric loop, the predictors, and what a run is evaluated on.

Training's evaluations, `reslab eval`, `reslab reproduce` and the reports all call `evaluate`.
The predictors map a batch to logits: the model's own, averaged with the mirrored batch (flip
test-time augmentation), the paper's 10-crop score averaging, or fully convolutional scoring of
whole images at several scales (Tables 2-4).

Calibration: how well the softmax confidence matches the accuracy (Guo et al. 2017, "On
Calibration of Modern Neural Networks"). `evaluate` reports the expected calibration error, the
negative log-likelihood and the Brier score beside the error rates, and the same of the logits
divided by the weights' temperature when `reslab calibrate` stored one; `fit_temperature` finds
that temperature on held-out logits.

`EvalPlan` is what one evaluation of weights decides: the data (a `DataSource` and a part), the
test-time augmentation, the precision and memory layout, the batch size. `plan_evaluation` reads
it from a run's config.yaml (or the weights' metadata) with the user's `EvalRequest` on top, so
that `reslab eval RUN` with no flag repeats the run's own final evaluation exactly. The batches
come from one place for training and `reslab eval`: `data_source` (a config's data settings) and
`eval_batch_spec` (the weights' preprocessing), handed to `DataSource.eval_batches`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reslab.config import Config
from reslab.data.preprocess import Preprocess
from reslab.data.sources import DataSource
from reslab.data.spec import EvalBatches, EvalBatchSpec
from reslab.device import autocast
from reslab.errors import ConfigError
from reslab.rundir import RunDir
from reslab.weights import TEMPERATURE_RANGE, Weights

EVAL_BATCH_SIZE = 256  # images per evaluation batch, in training and in `reslab eval` alike
ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al. 2017)

Predict = Callable[[Any], torch.Tensor]


def model_logits(model: nn.Module, tta_flip: bool = False) -> Predict:
    """x (B, C, H, W) -> float logits; with tta_flip the mean of the image's and its mirror's."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        logits = model(x).float()
        if tta_flip:
            logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
        return logits

    return predict


def ten_crop_logits(model: nn.Module) -> Predict:
    """(B, 10, C, S, S) crops -> log of the crops' mean softmax (the paper's score averaging)."""

    def predict(x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[:2]
        probs = model(x.flatten(0, 1)).float().softmax(1).view(b, n, -1).mean(1)
        return probs.clamp_min(1e-12).log()

    return predict


def multi_scale_logits(model: nn.Module, tta_flip: bool) -> Predict:
    """Per image: the whole image at each scale (fully convolutional), scores averaged."""

    def predict(images: list[list[torch.Tensor]]) -> torch.Tensor:
        out = []
        for scales in images:  # each (1, C, H_s, W_s)
            probs = []
            for x in scales:
                probs.append(model(x).float().softmax(1))
                if tta_flip:
                    probs.append(model(torch.flip(x, dims=[3])).float().softmax(1))
            out.append(torch.cat(probs).mean(0))
        return torch.stack(out).clamp_min(1e-12).log()

    return predict


def class_metrics(confusion: torch.Tensor) -> dict[str, Any]:
    """Per-class and class-averaged metrics of a confusion matrix (C, C), rows = truth, columns =
    prediction, for imbalanced data where top-1 hides the small classes.

    recall[c] = hits / images of class c (what `per_class_accuracy` has always been: the two lists
    are equal); precision[c] = hits / images predicted as c; f1[c] their harmonic mean; a ratio
    with nothing to divide by is 0 (sklearn's zero_division=0). `balanced_accuracy` is the mean
    recall over the classes present in the evaluated set (support > 0); `macro_f1` the mean F1 over
    the classes present or predicted (sklearn's classes of y_true and y_pred), so predicting a
    class the set lacks still costs."""
    confusion = confusion.to(torch.float64)
    hits, support, predicted = confusion.diag(), confusion.sum(1), confusion.sum(0)
    recall = hits / support.clamp(min=1)
    precision = hits / predicted.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-300)
    present = support > 0
    seen = present | (predicted > 0)
    return {
        "balanced_accuracy": recall[present].mean().item() if present.any() else 0.0,
        "macro_f1": f1[seen].mean().item() if seen.any() else 0.0,
        "per_class_recall": recall.tolist(),
        "per_class_precision": precision.tolist(),
        "per_class_f1": f1.tolist(),
        "per_class_support": [int(v) for v in support.tolist()],
    }


# ---- Calibration -----------------------------------------------------------------------------------


class CalibrationTally:
    """Running sums over batches of (logits, labels) for three calibration metrics of the softmax p:

    ece    expected calibration error, top-1: images binned by confidence max_c p_c into ECE_BINS
           equal-width bins (lo, hi] (the first [0, 1/15]); sum over bins of (images in bin / all)
           x |accuracy in bin - mean confidence in bin|. 0 = confidence equals accuracy.
    nll    mean cross-entropy -log p_y (equal to `evaluate`'s "loss" for the raw logits).
    brier  mean over images of sum over classes of (p_c - [c == y])^2: Brier's original multi-class
           score, in [0, 2] (some libraries divide by the number of classes, or score only the
           top-1 class; sklearn's brier_score_loss is binary).
    """

    def __init__(self, bins: int = ECE_BINS, device: torch.device | str = "cpu") -> None:
        self.bins = bins
        self.edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=device)[1:-1]  # inner edges
        self.count = torch.zeros(bins, dtype=torch.float64, device=device)
        self.confidence = torch.zeros(bins, dtype=torch.float64, device=device)  # summed per bin
        self.correct = torch.zeros(bins, dtype=torch.float64, device=device)
        self.nll = torch.zeros((), dtype=torch.float64, device=device)
        self.brier = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits (B, C) float, labels (B,) int64."""
        logits = logits.float()
        probs = logits.softmax(1)
        confidence, predicted = probs.max(1)
        # bucketize with right=False: bin i holds edges[i-1] < confidence <= edges[i]
        which = torch.bucketize(confidence.double(), self.edges)
        self.count += torch.bincount(which, minlength=self.bins).double()
        self.confidence += torch.bincount(which, weights=confidence.double(), minlength=self.bins)
        self.correct += torch.bincount(which, weights=(predicted == labels).double(), minlength=self.bins)
        self.nll += F.cross_entropy(logits, labels, reduction="sum").double()
        onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
        self.brier += (probs - onehot).square().sum(1).double().sum()

    def result(self) -> dict[str, Any]:
        """{"ece", "nll", "brier", "reliability": per bin its images, mean confidence and accuracy}."""
        count, n = self.count.cpu(), max(self.count.sum().item(), 1.0)
        filled = count.clamp(min=1)
        confidence, accuracy = self.confidence.cpu() / filled, self.correct.cpu() / filled
        return {
            "ece": ((count / n) * (accuracy - confidence).abs()).sum().item(),
            "nll": self.nll.item() / n,
            "brier": self.brier.item() / n,
            "reliability": {
                "bins": self.bins,
                "images": [int(c) for c in count.tolist()],
                "confidence": confidence.tolist(),  # mean confidence of the bin's images (0: empty bin)
                "accuracy": accuracy.tolist(),  # their top-1 accuracy (0: empty bin)
            },
        }


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE, NLL, Brier score and the reliability bins of one set of logits (`CalibrationTally`)."""
    tally = CalibrationTally(bins, logits.device)
    tally.add(logits, labels)
    return tally.result()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, tolerance: float = 1e-5) -> float:
    """The temperature T in TEMPERATURE_RANGE minimising the NLL of softmax(logits / T) (Guo et al.'s
    temperature scaling), by golden-section search on log T.

    A bounded 1-D search rather than LBFGS: the NLL is convex in 1/T, so it has one minimum along
    log T and the search cannot miss it, needs no step size, and never leaves the range that
    `WeightsMeta` accepts (a set the network classifies perfectly pushes T to the lower bound)."""
    logits, labels = logits.detach().double().cpu(), labels.detach().cpu()
    lo, hi = (math.log(v) for v in TEMPERATURE_RANGE)

    def nll(log_t: float) -> float:
        return F.cross_entropy(logits / math.exp(log_t), labels).item()

    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > tolerance:
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = nll(a)
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    low, high = TEMPERATURE_RANGE
    return min(max(math.exp((lo + hi) / 2), low), high)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Any, torch.Tensor]],
    num_classes: int,
    *,
    device: torch.device,
    precision: str = "fp32",
    tta_flip: bool = False,
    predict: Predict | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Top-1/top-5 error, mean loss, per-class accuracy (= recall) and the confusion matrix (rows =
    truth), with the `class_metrics` of that matrix: balanced accuracy, macro-F1, per-class recall,
    precision, F1 and support; and the `CalibrationTally` metrics of the softmax: ece, nll, brier,
    reliability. All of these are of the logits `predict` returns.

    With a `temperature` other than 1 (stored by `reslab calibrate`), "calibrated" holds the
    temperature and the calibration metrics of softmax(logits / temperature); the rest are
    unchanged (a temperature does not change the top-k classes).

    `predict` maps a batch to logits (10-crop, multi-scale); by default `model_logits`."""
    model.eval()
    predict = predict or model_logits(model, tta_flip)
    calibration = CalibrationTally(device=device)
    calibrated = CalibrationTally(device=device) if temperature != 1.0 else None
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5_hits = torch.zeros((), dtype=torch.int64, device=device)
    n, start = 0, time.perf_counter()
    for x, y in batches:
        with autocast(device, precision):
            logits = predict(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        k = min(5, num_classes)
        top5_hits += (logits.topk(k, dim=1).indices == y[:, None]).any(1).sum()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes * num_classes).view(
            num_classes, num_classes
        )
        calibration.add(logits, y)
        if calibrated is not None:
            calibrated.add(logits / temperature, y)
        n += y.numel()
    confusion = confusion.cpu()
    correct = confusion.diag().sum().item()
    by_class = class_metrics(confusion)
    n = max(n, 1)
    return {
        "top1_error": 1.0 - correct / n,
        "top5_error": 1.0 - top5_hits.item() / n,
        "accuracy": correct / n,
        "loss": loss_sum.item() / n,
        "images": n,
        "seconds": time.perf_counter() - start,
        "per_class_accuracy": by_class["per_class_recall"],  # the same list, under its older name
        **by_class,
        "confusion": confusion.tolist(),
        **calibration.result(),
        **({"calibrated": {"temperature": temperature, **calibrated.result()}} if calibrated is not None else {}),
    }


# ---- Evaluating weights ----------------------------------------------------------------------------


@dataclass
class EvalPlan:
    """One evaluation of weights: on what, and how."""

    source: DataSource
    part: str = "test"  # "test", "val" or "train"; by default the source's default_eval_part
    tta_flip: bool = False
    precision: str = "fp32"
    channels_last: bool = False
    eval_mode: str = "center"  # "center", "ten-crop", "multi-scale"
    scales: tuple[int, ...] | None = None
    batch_size: int = EVAL_BATCH_SIZE
    notes: list[str] = field(default_factory=list)  # where each setting came from, for the user

    def describe(self) -> str:
        extras = [f"{self.part} part"]
        if self.tta_flip:
            extras.append("flip TTA")
        if self.eval_mode == "ten-crop":
            extras.append("10-crop")
        if self.scales:
            extras.append("scales " + ",".join(map(str, self.scales)))
        if self.precision != "fp32":
            extras.append(self.precision)
        return ", ".join(extras)


@dataclass(frozen=True)
class EvalRequest:
    """What the user asked of one evaluation (`reslab eval`, `reslab calibrate`): each setting None
    (or its default) keeps the run's own."""

    dataset: str | None = None  # another dataset than the run's (a vocab.DATASETS name)
    data_dir: str | None = None
    part: str | None = None  # "test", "val" or "train"; None: the source's default_eval_part
    tta_flip: bool | None = None
    crops: int = 1  # 10: the paper's 10-crop testing
    scales: tuple[int, ...] | None = None  # multi-scale testing at these shorter sides
    in_memory: bool | None = None
    workers: int | None = None
    batch_size: int | None = None


def data_source(cfg: Config) -> DataSource:
    """The `DataSource` of a run's config: its data.* settings, and train.seed (which carves val)."""
    d = cfg.data
    return DataSource(
        dataset=d.dataset,
        data_dir=d.data_dir,
        split=d.split,
        val_size=d.val_size,
        val_fraction=d.val_fraction,
        seed=cfg.train.seed,
        image_size=d.image_size,
        in_chans=d.in_chans,
        in_memory=d.in_memory,
        workers=d.workers,
        cache_dir=d.cache_dir,
        synthetic_size=d.synthetic_size,
        download=d.download,
        folds=d.folds,
        fold=d.fold,
    )


def eval_batch_spec(
    preprocess: Preprocess,
    device: torch.device | str,
    *,
    workers: int,
    batch_size: int = EVAL_BATCH_SIZE,
    channels_last: bool = False,
    eval_mode: str = "center",
    scales: tuple[int, ...] | None = None,
) -> EvalBatchSpec:
    """The batches of an evaluation with the weights' `preprocess` (input and normalisation), for
    training's evaluations and `reslab eval` alike."""
    return EvalBatchSpec(
        batch_size,
        stats=preprocess.stats,
        image_size=preprocess.input_size,
        resize=preprocess.resize,
        in_chans=preprocess.in_chans,
        eval_mode=eval_mode,
        scales=scales,
        workers=workers,
        device=device,
        channels_last=channels_last,
    )


def _recorded_plan(weights: Weights, run: RunDir | None, dataset: str | None) -> EvalPlan:
    """The data and the evaluation settings a run recorded: its config.yaml when `run` has one, else
    the weights' metadata (`dataset`: evaluate on that dataset instead)."""
    meta = weights.meta
    if run is None or not run.config.is_file():
        name = dataset or meta.dataset_name
        if not name:
            raise ConfigError("the weights do not record their dataset; say which with --data")
        same = name == meta.dataset_name
        return EvalPlan(
            DataSource(name, data_dir=(meta.data_dir or None) if same else None, in_memory=name != "imagefolder"),
            tta_flip=meta.evaluation.get("tta_flip", meta.tta_flip),
            precision=meta.evaluation.get("precision", "fp32"),
            channels_last=bool(meta.evaluation.get("channels_last", False)),
        )
    cfg = run.load_config()
    source = data_source(cfg)
    return EvalPlan(
        source if dataset is None or dataset == source.dataset else DataSource(dataset),
        tta_flip=cfg.train.tta_flip,
        # train.precision "auto" became this machine's precision when the run trained: the weights say which
        precision=meta.evaluation.get("precision", cfg.train.precision),
        channels_last=cfg.train.channels_last,
    )


def plan_evaluation(weights: Weights, run: RunDir | None, request: EvalRequest | None = None) -> EvalPlan:
    """The run's own evaluation settings (config.yaml when `run` is given, else the weights'
    metadata), each overridden by the setting `request` gives for it (not None)."""
    asked = request or EvalRequest()
    recorded = _recorded_plan(weights, run, asked.dataset)
    source = recorded.source.with_overrides(data_dir=asked.data_dir, in_memory=asked.in_memory, workers=asked.workers)
    if asked.crops == 10 and asked.scales:
        raise ConfigError("choose --crops 10 or --scales, not both")
    return replace(
        recorded,
        source=source,
        part=asked.part or getattr(source, "default_eval_part", "test"),
        tta_flip=recorded.tta_flip if asked.tta_flip is None else asked.tta_flip,
        eval_mode="ten-crop" if asked.crops == 10 else "multi-scale" if asked.scales else "center",
        scales=tuple(asked.scales) if asked.scales else None,
        batch_size=asked.batch_size or EVAL_BATCH_SIZE,
    )


def _prepared(weights: Weights, plan: EvalPlan, device: torch.device) -> tuple[nn.Module, EvalBatches, Predict]:
    """(model on `device`, the part's batches, batch -> logits) as `plan` says."""
    model = weights.model.to(device)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = eval_batch_spec(
        weights.preprocess,
        device,
        workers=plan.source.workers,
        batch_size=plan.batch_size,
        channels_last=plan.channels_last,
        eval_mode=plan.eval_mode,
        scales=plan.scales,
    )
    batches = plan.source.eval_batches(plan.part, spec)
    classes, predicted = len(batches.classes), weights.meta.num_classes
    if classes != predicted:
        raise ConfigError(f"{plan.source.dataset} has {classes} classes but the weights predict {predicted}")
    if plan.eval_mode == "ten-crop":
        predict = ten_crop_logits(model)
    elif plan.eval_mode == "multi-scale":
        predict = multi_scale_logits(model, plan.tta_flip)
    else:
        predict = model_logits(model, plan.tta_flip)
    return model, batches, predict


def evaluate_weights(weights: Weights, plan: EvalPlan, device: torch.device) -> dict[str, Any]:
    """`evaluate` the weights as `plan` says; the metrics dict of `evaluate`, with the calibrated
    metrics when the weights hold a temperature. Under 10-crop and multi-scale testing the
    temperature divides the log of the averaged probabilities (what those predictors return)."""
    model, batches, predict = _prepared(weights, plan, device)
    return evaluate(
        model,
        batches.epoch(0),
        weights.meta.num_classes,
        device=device,
        precision=plan.precision,
        tta_flip=plan.tta_flip,
        predict=predict,
        temperature=weights.meta.temperature,
    )


@torch.no_grad()
def collect_logits(
    weights: Weights, plan: EvalPlan, device: torch.device, max_images: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, classes) float32, labels (N,)) on the CPU, of the part `plan` names (with
    `max_images`, only its first batches, until they hold that many images: for quick checks),
    computed as `evaluate_weights` computes them (flip TTA, precision) but without the temperature:
    what `reslab calibrate` fits one on."""
    model, batches, predict = _prepared(weights, plan, device)
    model.eval()
    logits, labels = [], []
    for x, y in batches.epoch(0):
        if max_images is not None and sum(len(b) for b in labels) >= max_images:
            break
        with autocast(device, plan.precision):
            out = predict(x)
        logits.append(out.float().cpu())
        labels.append(y.cpu())
    if not logits:
        raise ConfigError(f"the {plan.part} part of {plan.source.dataset} holds no images")
    return torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def logits_and_mirrors(
    model: nn.Module, batches: EvalBatches, device: torch.device, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, logits of the mirrored images, labels) of every image of `batches`, float32 on the CPU:
    one pass computes both, so flip TTA ((logits + mirrored) / 2), no TTA, and how mirror images fare
    can all be judged from it (the end of a training run: reslab.train.finish)."""
    model.eval()
    plain, mirrored, labels = [], [], []
    for x, y in batches.epoch(0):
        with autocast(device, precision):
            plain.append(model(x).float().cpu())
            mirrored.append(model(torch.flip(x, dims=[3])).float().cpu())
        labels.append(y.cpu())
    if not labels:
        raise ConfigError("the evaluated part holds no images")
    return torch.cat(plain), torch.cat(mirrored), torch.cat(labels)
