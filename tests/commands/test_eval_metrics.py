"""Metrics for imbalanced classes: balanced accuracy, macro-F1 and per-class recall / precision / F1 /
support, from the confusion matrix, in `evaluate` and in `reslab eval` (text and --json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from infer_testdata import make_weights
from torch import nn

from reslab.cli import main
from reslab.data.sources import DataSource
from reslab.evaluation import EvalRequest, class_metrics, evaluate, plan_evaluation
from reslab.weights import load_weights

# 4 classes, rows = truth, columns = prediction. Class 0: 8 images, 6 right, 2 taken for 1;
# class 1: 2 images, 1 right, 1 taken for 2; class 2: no image, predicted once; class 3: neither.
CONFUSION = [[6, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
RECALL = [6 / 8, 1 / 2, 0.0, 0.0]
PRECISION = [6 / 6, 1 / 3, 0 / 1, 0.0]
F1 = [6 / 7, 2 / 5, 0.0, 0.0]  # 2PR / (P + R): class 0 2*0.75/1.75, class 1 (1/3)/(5/6)
BALANCED = (6 / 8 + 1 / 2) / 2  # classes 0 and 1 are in the set
MACRO_F1 = (6 / 7 + 2 / 5 + 0.0) / 3  # class 2 was predicted: it counts (sklearn's convention)


def test_class_metrics_of_a_hand_made_confusion() -> None:
    m = class_metrics(torch.tensor(CONFUSION))
    assert m["balanced_accuracy"] == pytest.approx(0.625)
    assert m["macro_f1"] == pytest.approx(44 / 105)
    assert m["balanced_accuracy"] == pytest.approx(BALANCED) and m["macro_f1"] == pytest.approx(MACRO_F1)
    assert m["per_class_recall"] == pytest.approx(RECALL)
    assert m["per_class_precision"] == pytest.approx(PRECISION)
    assert m["per_class_f1"] == pytest.approx(F1)
    assert m["per_class_support"] == [8, 2, 0, 0]


def test_balanced_classes_all_right_and_all_wrong() -> None:
    assert class_metrics(torch.eye(3, dtype=torch.int64) * 5) == {
        "balanced_accuracy": 1.0,
        "macro_f1": 1.0,
        "per_class_recall": [1.0] * 3,
        "per_class_precision": [1.0] * 3,
        "per_class_f1": [1.0] * 3,
        "per_class_support": [5] * 3,
    }
    m = class_metrics(torch.tensor([[0, 4], [4, 0]]))
    assert m["balanced_accuracy"] == 0.0 and m["macro_f1"] == 0.0


def test_evaluate_reports_them_from_its_confusion_matrix() -> None:
    """`predict` returns one-hot logits of chosen labels, so evaluate sees exactly CONFUSION."""
    truth, predicted = [], []
    for t, row in enumerate(CONFUSION):
        for p, count in enumerate(row):
            truth += [t] * count
            predicted += [p] * count
    batches = [
        (torch.tensor(predicted[:5]), torch.tensor(truth[:5])),
        (torch.tensor(predicted[5:]), torch.tensor(truth[5:])),
    ]
    m = evaluate(nn.Identity(), batches, 4, device=torch.device("cpu"), predict=lambda x: F.one_hot(x, 4).float())
    assert m["confusion"] == CONFUSION and m["accuracy"] == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx(BALANCED) and m["macro_f1"] == pytest.approx(MACRO_F1)
    assert m["per_class_accuracy"] == m["per_class_recall"] == pytest.approx(RECALL)
    assert m["per_class_precision"] == pytest.approx(PRECISION) and m["per_class_support"] == [8, 2, 0, 0]


# ---- reslab eval ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", name="resnet_cifar_8")


def test_eval_json_includes_them(weights: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert main(["eval", str(weights), "--data", "synthetic", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    classes = list("abcdefghij")
    for key in ("per_class_recall", "per_class_precision", "per_class_f1", "per_class_support"):
        assert list(report[key]) == classes, key
    assert report["per_class_recall"] == report["per_class_accuracy"]
    assert sum(report["per_class_support"].values()) == report["images"]
    # recomputed here from the confusion matrix metrics.json holds
    confusion = torch.tensor(json.loads((out / "metrics.json").read_text())["confusion"], dtype=torch.float64)
    support, hits, predicted = confusion.sum(1), confusion.diag(), confusion.sum(0)
    recall = torch.where(support > 0, hits / support, 0.0)
    precision = torch.where(predicted > 0, hits / predicted, 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    assert report["balanced_accuracy"] == pytest.approx(recall[support > 0].mean().item())
    assert report["macro_f1"] == pytest.approx(f1[(support > 0) | (predicted > 0)].mean().item())
    assert list(report["per_class_f1"].values()) == pytest.approx(f1.tolist())


def test_eval_prints_them_beside_top1_and_a_per_class_table(weights: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval", str(weights), "--data", "synthetic", "--out", str(tmp_path / "eval")]) == 0
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    top1 = next(line for line in text.splitlines() if "top-1 error" in line)
    assert f"balanced accuracy {100 * report['balanced_accuracy']:.2f}%" in top1
    assert f"macro-F1 {100 * report['macro_f1']:.2f}%" in top1
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["class", "recall", "precision", "F1", "images"])
    rows = [line.split() for line in lines[header + 1 : header + 11]]
    assert [r[0] for r in rows] == list("abcdefghij")
    assert [int(r[4]) for r in rows] == list(report["per_class_support"].values())
    assert [r[1] for r in rows] == [f"{100 * v:.2f}%" for v in report["per_class_recall"].values()]


def test_plan_takes_the_default_part_from_the_data_source(weights: Path, monkeypatch) -> None:
    w = load_weights(weights)
    monkeypatch.setattr(DataSource, "default_eval_part", "val", raising=False)
    assert plan_evaluation(w, None, EvalRequest(dataset="synthetic")).part == "val"
    assert plan_evaluation(w, None, EvalRequest(dataset="synthetic", part="train")).part == "train"
    monkeypatch.delattr(DataSource, "default_eval_part")
    assert plan_evaluation(w, None, EvalRequest(dataset="synthetic")).part == "test"  # a source without the attribute
