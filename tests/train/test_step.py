"""`train_step` as a pure function: one update by hand, non-finite steps, clipping, learning rate,
soft targets (mixup / cutmix) and gradient accumulation."""

from __future__ import annotations

import copy
from dataclasses import replace

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
        "lr", "precision", "label_smoothing", "grad_clip", "skip_nonfinite", "accum_steps", "class_weights",
    }  # fmt: skip


# ---- soft targets ---------------------------------------------------------------------------------


def soft_targets(y: torch.Tensor, classes: int = 4) -> torch.Tensor:
    """Two classes per image, as mixup makes: 0.7 of its own, 0.3 of the next image's."""
    return 0.7 * F.one_hot(y, classes).float() + 0.3 * F.one_hot(y.roll(1), classes).float()


def test_soft_target_loss_is_the_hand_computed_cross_entropy() -> None:
    model, optimizer, (x, y) = tiny()
    target = soft_targets(y)
    target[1] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # argmax 3, not y[1] = 1
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5])
    eps = 0.1
    with torch.no_grad():
        logits = copy.deepcopy(model)(x)  # the same forward pass (train mode, the same batch statistics)
    smoothed = (1 - eps) * target + eps / 4
    by_hand = -(weights * smoothed * logits.log_softmax(1)).sum(1).mean()
    settings = StepSettings(lr=0.0, label_smoothing=eps, class_weights=weights)
    result = train_step(model, optimizer, (x, target), settings)
    assert result.loss_value == pytest.approx(by_hand.item(), rel=1e-6)
    assert result.size == 6
    assert result.wrong.item() == (logits.argmax(1) != target.argmax(1)).sum().item()


# ---- gradient accumulation ------------------------------------------------------------------------


def accumulated(k: int, batch, settings: StepSettings, seed: int = 0):
    """Gradients and weights after one step in k micro-batches, BN in eval mode (its running
    statistics, the same for any split), so the whole batch's gradient is the exact reference."""
    model, _, _ = tiny(seed)
    model.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
    result = train_step(model, optimizer, batch, replace(settings, accum_steps=k))
    return result, [p.grad.clone() for p in model.parameters()], [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    ("k", "soft", "weighted"),
    [(2, False, False), (3, False, True), (4, True, True)],  # 3 and 4 cut the batch of 10 unequally
)
def test_k_micro_batches_give_the_gradient_of_the_whole_batch(k: int, soft: bool, weighted: bool) -> None:
    torch.manual_seed(3)
    x = torch.randn(10, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3, 3])
    target = soft_targets(y) if soft else y
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5]) if weighted else None
    settings = StepSettings(lr=0.05, label_smoothing=0.1, class_weights=weights)
    one, grads_one, weights_one = accumulated(1, (x, target), settings)
    many, grads_many, weights_many = accumulated(k, (x, target), settings)
    assert many.loss_value == pytest.approx(one.loss_value, rel=1e-5)
    assert many.wrong.item() == one.wrong.item() and many.size == one.size == 10
    assert many.grad_norm.item() == pytest.approx(one.grad_norm.item(), rel=1e-5)
    for a, b in zip(grads_many, grads_one):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(weights_many, weights_one):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_micro_batches_cover_the_batch_in_order() -> None:
    from reslab.train.step import micro_batches

    x, y = torch.arange(10).float(), torch.arange(10)
    parts = micro_batches(x, y, 4)
    assert [len(a) for a, _ in parts] == [3, 3, 2, 2]
    assert torch.equal(torch.cat([b for _, b in parts]), y)
    assert len(micro_batches(x[:2], y[:2], 4)) == 2  # never an empty micro-batch


def test_under_ddp_only_the_last_micro_batch_all_reduces(tmp_path, monkeypatch) -> None:
    """One gloo process: DDP's no_sync wraps the first k - 1 micro-batches, the last one syncs;
    the gradients are those of the model without DDP."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    entered = []
    real_no_sync = DistributedDataParallel.no_sync

    def counting_no_sync(self):
        entered.append(1)
        return real_no_sync(self)

    monkeypatch.setattr(DistributedDataParallel, "no_sync", counting_no_sync)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model, _, batch = tiny()
        ddp = DistributedDataParallel(model.eval())
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.0)
        train_step(ddp, optimizer, batch, StepSettings(lr=0.0, accum_steps=3))
        grads = [p.grad.clone() for p in model.parameters()]
    finally:
        dist.destroy_process_group()
    assert len(entered) == 2
    _, grads_one, _ = accumulated(1, batch, StepSettings(lr=0.0))
    for a, b in zip(grads, grads_one):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_batch_the_micro_batches_do_not_divide_is_refused() -> None:
    from reslab.errors import ConfigError
    from reslab.train.build import check_accumulation

    check_accumulation(12, 2, 3)  # 6 images a process, 3 micro-batches of 2
    with pytest.raises(ConfigError, match=r"train\.accum_steps=4 does not divide the 6 images.*divisible by 8"):
        check_accumulation(12, 2, 4)
    with pytest.raises(ConfigError, match=r"train\.accum_steps=3 does not divide the 8 images"):
        check_accumulation(8, 1, 3)
