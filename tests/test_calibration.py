"""Calibration metrics and temperature scaling in reslab.evaluation: ECE, NLL and Brier score against
values computed by hand, `evaluate` with a temperature, and `fit_temperature` on synthetic logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reslab.evaluation import ECE_BINS, calibration_metrics, evaluate, fit_temperature
from reslab.weights import TEMPERATURE_RANGE

# Five images, three classes, given by their softmax probabilities (logits = log p).
PROBS = [
    [0.70, 0.20, 0.10],  # label 0: right, confidence 0.70 -> bin 10 of 15, (0.667, 0.733]
    [0.62, 0.28, 0.10],  # label 1: wrong, confidence 0.62 -> bin 9, (0.600, 0.667]
    [0.08, 0.10, 0.82],  # label 2: right, confidence 0.82 -> bin 12, (0.800, 0.867]
    [0.50, 0.25, 0.25],  # label 0: right, confidence 0.50 -> bin 7, (0.467, 0.533]
    [0.10, 0.72, 0.18],  # label 0: wrong, confidence 0.72 -> bin 10, with the first image
]
LABELS = [0, 1, 2, 0, 0]
# ECE: bin 10 holds 2 of 5 images, accuracy 1/2, mean confidence 0.71 -> 2/5 x 0.21; the other
# bins one image each: 1/5 x (|0 - 0.62| + |1 - 0.82| + |1 - 0.50|).
ECE = 2 / 5 * 0.21 + (0.62 + 0.18 + 0.50) / 5  # = 0.344
NLL = -(math.log(0.70) + math.log(0.28) + math.log(0.82) + math.log(0.50) + math.log(0.10)) / 5
# Brier: per image the sum over classes of (p - onehot)^2
BRIER = (
    (0.09 + 0.04 + 0.01)  # 0.14
    + (0.62**2 + 0.72**2 + 0.01)  # 0.9128
    + (0.08**2 + 0.01 + 0.18**2)  # 0.0488
    + (0.25 + 0.0625 + 0.0625)  # 0.375
    + (0.90**2 + 0.72**2 + 0.18**2)  # 1.3608, (0.10 - 1)^2 first
) / 5  # = 0.56748


def hand_made() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(PROBS).log(), torch.tensor(LABELS)


def test_ece_nll_and_brier_of_a_hand_made_example() -> None:
    m = calibration_metrics(*hand_made())
    assert ECE == pytest.approx(0.344) and BRIER == pytest.approx(0.56748)
    assert m["ece"] == pytest.approx(ECE, abs=1e-6)
    assert m["nll"] == pytest.approx(NLL, abs=1e-6)
    assert m["brier"] == pytest.approx(BRIER, abs=1e-6)
    bins = m["reliability"]
    assert bins["bins"] == ECE_BINS == 15
    assert {b: n for b, n in enumerate(bins["images"]) if n} == {7: 1, 9: 1, 10: 2, 12: 1}
    assert bins["accuracy"][10] == pytest.approx(0.5) and bins["confidence"][10] == pytest.approx(0.71)


def test_perfect_and_hopeless_predictions() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    sure = F.one_hot(labels, 3).float() * 100  # right with confidence 1
    m = calibration_metrics(sure, labels)
    assert m["ece"] == pytest.approx(0, abs=1e-6) and m["nll"] == pytest.approx(0, abs=1e-6)
    assert m["brier"] == pytest.approx(0, abs=1e-6)
    wrong = calibration_metrics(sure, (labels + 1) % 3)  # wrong with confidence 1: the worst case
    assert wrong["ece"] == pytest.approx(1) and wrong["brier"] == pytest.approx(2)


def test_evaluate_adds_them_and_the_calibrated_ones_without_changing_the_rest() -> None:
    torch.manual_seed(0)
    logits = torch.randn(40, 3) * 3
    labels = torch.randint(0, 3, (40,))
    batches = [(logits[:25], labels[:25]), (logits[25:], labels[25:])]  # tallies add up over batches
    cpu = torch.device("cpu")
    plain = evaluate(nn.Identity(), batches, 3, device=cpu)
    tempered = evaluate(nn.Identity(), batches, 3, device=cpu, temperature=2.5)
    expected = calibration_metrics(logits, labels)
    assert plain["ece"] == pytest.approx(expected["ece"]) and plain["brier"] == pytest.approx(expected["brier"])
    assert plain["nll"] == pytest.approx(plain["loss"]) == pytest.approx(F.cross_entropy(logits, labels).item())
    assert "calibrated" not in plain
    assert {k: v for k, v in tempered.items() if k not in ("calibrated", "seconds")} == {
        k: v for k, v in plain.items() if k != "seconds"
    }
    calibrated = tempered["calibrated"]
    assert calibrated["temperature"] == 2.5
    assert calibrated["nll"] == pytest.approx(F.cross_entropy(logits / 2.5, labels).item())
    assert calibrated["ece"] == pytest.approx(calibration_metrics(logits / 2.5, labels)["ece"])


@pytest.mark.parametrize("true_t", [0.4, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t: float) -> None:
    """Labels drawn from softmax(z) are calibrated at T = 1 for z; for logits z * k the fitted T is k."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(20_000, 10, generator=gen) * 2
    labels = torch.multinomial(z.softmax(1), 1, generator=gen)[:, 0]
    assert fit_temperature(z, labels) == pytest.approx(1.0, rel=0.04)
    fitted = fit_temperature(z * true_t, labels)
    assert fitted == pytest.approx(true_t, rel=0.04)
    before = F.cross_entropy(z * true_t, labels).item()
    assert F.cross_entropy(z * true_t / fitted, labels).item() < before  # it lowers the NLL


def test_fit_temperature_stays_in_the_range_weights_accept() -> None:
    labels = torch.arange(6) % 3
    separable = F.one_hot(labels, 3).float() * 10  # every image right: the NLL falls as T -> 0
    assert fit_temperature(separable, labels) == pytest.approx(TEMPERATURE_RANGE[0], rel=1e-3)
    uniform_ish = torch.zeros(6, 3)
    uniform_ish[:, 0] = 1e-3  # no information: any T gives about log 3
    assert TEMPERATURE_RANGE[0] <= fit_temperature(uniform_ish, labels) <= TEMPERATURE_RANGE[1]
