"""`train_step` as a pure function: one update by hand, non-finite steps, clipping, learning rate."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from reslab.models import create_model
from reslab.train.step import StepSettings, train_step


def tiny(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = create_model("resnet_cifar_8", num_classes=4).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    return model, optimizer, (x, y)


def test_one_step_is_the_hand_computed_sgd_update() -> None:
    model, optimizer, batch = tiny()
    reference = copy.deepcopy(model)
    settings = StepSettings(lr=0.05, label_smoothing=0.1)
    result = train_step(model, optimizer, batch, settings)

    x, y = batch
    logits = reference(x)
    loss = F.cross_entropy(logits, y, label_smoothing=0.1)
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.05 * (p.grad + 1e-4 * p)  # first SGD step: the momentum buffer is the gradient
    assert result.nonfinite == "" and result.size == 6
    assert result.loss_value == pytest.approx(loss.item(), rel=1e-6)
    assert result.wrong.item() == (logits.argmax(1) != y).sum().item()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert all(group["lr"] == 0.05 for group in optimizer.param_groups)


@pytest.mark.parametrize("skip", [True, False])
def test_a_nonfinite_loss_leaves_weights_and_statistics_alone(skip: bool) -> None:
    model, optimizer, (x, y) = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    result = train_step(model, optimizer, (x, y), StepSettings(lr=0.1, skip_nonfinite=skip))
    assert result.nonfinite == "loss" and result.loss_value != result.loss_value  # NaN
    params = {k for k, _ in model.named_parameters()}
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in params)  # no update
    buffers_kept = all(torch.equal(before[k], after[k]) for k in after if k not in params)
    assert buffers_kept == skip  # skip mode also undoes the BN statistics of the bad forward pass
    if skip:
        assert all(p.grad is None for p in model.parameters())


def test_gradient_clipping_reports_the_norm_before_clipping() -> None:
    model, _, batch = tiny()
    unclipped = copy.deepcopy(model)
    plain_sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    result = train_step(model, plain_sgd, batch, StepSettings(lr=1.0, grad_clip=1e-3))
    free = train_step(unclipped, torch.optim.SGD(unclipped.parameters(), lr=0.0), batch, StepSettings(lr=0.0))
    assert result.grad_norm.item() == pytest.approx(free.grad_norm.item(), rel=1e-5) and result.grad_norm > 1e-3
    moved = torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), unclipped.parameters())])
    assert moved.norm().item() == pytest.approx(1e-3, rel=1e-3)  # lr 1: the update is the clipped gradient


def test_the_step_reads_no_config_and_calls_nothing_back() -> None:
    """The step's whole input: model, optimizer, batch and the few settings of StepSettings."""
    import inspect

    assert list(inspect.signature(train_step).parameters) == ["model", "optimizer", "batch", "settings", "scaler"]
    assert {f for f in StepSettings.__dataclass_fields__} == {
        "lr", "precision", "label_smoothing", "grad_clip", "skip_nonfinite", "class_weights",
    }  # fmt: skip
