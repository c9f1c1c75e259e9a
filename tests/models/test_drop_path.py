"""Stochastic depth (model.drop_path_rate): whole samples' branches dropped at the stated rate in
training and scaled by 1 / (1 - p), the identity at evaluation, for every block type; the linear
rule over the network; refused where there is no residual branch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torchvision

from reslab.config import load_config
from reslab.errors import ConfigError
from reslab.models import create_model, list_models, model_info
from reslab.models.blocks import (
    BasicBlock,
    BlockOptions,
    Bottleneck,
    DropPath,
    PreActBasicBlock,
    PreActBottleneck,
    ResidualBlock,
)
from reslab.models.resnet import drop_path_rates
from reslab.train.build import build_model

BLOCKS = [BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck]


def test_drop_path_draws_as_torchvision_stochastic_depth() -> None:
    x = torch.randn(64, 3, 4, 4)
    torch.manual_seed(1)
    ours = DropPath(0.3).train()(x)
    torch.manual_seed(1)
    theirs = torchvision.ops.stochastic_depth(x, 0.3, mode="row", training=True)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("block_type", BLOCKS, ids=lambda b: b.__name__)
def test_each_block_drops_whole_samples_at_the_rate_in_training(block_type: type[ResidualBlock]) -> None:
    p, n = 0.3, 1000
    torch.manual_seed(0)
    channels = 16 * block_type.expansion  # in = out channels at stride 1: the shortcut is the identity
    block = block_type(channels, 16, drop_path=p).train()
    seen = {}
    # Copies: the post-activation blocks add the shortcut to the output in place.
    block.drop_path.register_forward_hook(lambda m, args, out: seen.update(branch=args[0].clone(), out=out.clone()))
    x = torch.rand(n, channels, 4, 4)  # non-negative: a post-activation block's ReLU keeps x as it is
    with torch.no_grad():
        y = block(x)
    branch, out = seen["branch"], seen["out"]
    dropped = (out == 0).flatten(1).all(1)
    # Each sample's branch is either all zero or all scaled by 1 / (1 - p): whole samples, not pixels.
    kept = ~dropped
    torch.testing.assert_close(out[kept], branch[kept] / (1 - p))
    # 1000 draws of p = 0.3: 300 expected, standard deviation 14.5; the seed makes it exact, the
    # bound (5 standard deviations) says what the test means.
    assert abs(int(dropped.sum()) - p * n) < 5 * (n * p * (1 - p)) ** 0.5
    assert torch.equal(y[dropped], x[dropped])  # a dropped sample's block is its shortcut
    assert not torch.isclose(y[kept], x[kept]).flatten(1).all(1).any()


@pytest.mark.parametrize("block_type", BLOCKS, ids=lambda b: b.__name__)
def test_each_block_is_unchanged_at_evaluation(block_type: type[ResidualBlock]) -> None:
    channels = 16 * block_type.expansion
    torch.manual_seed(0)
    plain = block_type(channels, 16).eval()
    dropping = block_type(channels, 16, drop_path=0.5).eval()
    assert isinstance(dropping.drop_path, DropPath) and not isinstance(plain.drop_path, DropPath)
    dropping.load_state_dict(plain.state_dict())  # the same keys: DropPath holds no state
    x = torch.randn(8, channels, 4, 4)
    with torch.no_grad():
        assert torch.equal(dropping(x), plain(x))


def test_linear_rule_rates() -> None:
    assert drop_path_rates(5, 0.2) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(1, 0.2) == [0.2]
    assert drop_path_rates(3, 0.0) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("name", "blocks"),
    [("resnet20", 9), ("resnet50", 16), ("preact_resnet164", 54), ("wrn_16_2", 6), ("resnext29_8x64d", 9)],
)
def test_every_block_of_a_network_gets_its_linear_rate(name: str, blocks: int) -> None:
    with torch.device("meta"):
        model = create_model(name, drop_path_rate=0.2)
    found = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(found) == blocks
    rates = [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0 for b in found]
    assert rates == pytest.approx([0.2 * i / (blocks - 1) for i in range(blocks)])
    assert not isinstance(found[0].drop_path, DropPath)  # rate 0: no module at all
    with torch.device("meta"):
        assert create_model(name).state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("name", list_models())
def test_every_residual_net_takes_it_and_plain_nets_refuse(name: str) -> None:
    with torch.device("meta"):
        if model_info(name).family.startswith("plain"):
            with pytest.raises(ConfigError, match=rf"model {name} is a plain net.*model\.drop_path_rate at 0"):
                create_model(name, drop_path_rate=0.1)
        else:
            model = create_model(name, drop_path_rate=0.1)
            assert any(isinstance(m, DropPath) for m in model.modules())


def test_out_of_range_and_plain_blocks_are_refused() -> None:
    for bad in (-0.1, 1.0, float("nan"), "0.1"):
        with pytest.raises(ConfigError, match=r"resnet20: drop_path_rate is a probability in \[0, 1\)"):
            create_model("resnet20", drop_path_rate=bad)
    with pytest.raises(ConfigError, match="plain block has no residual branch"):
        BasicBlock(16, 16, options=BlockOptions(residual=False), drop_path=0.1)
    with pytest.raises(ConfigError, match=r"out of range"):
        load_config(None, ["model.drop_path_rate=1.0"])


def test_the_config_setting_reaches_the_model() -> None:
    cfg = load_config(None, ["model.name=resnet20", "model.drop_path_rate=0.4", "train.epochs=1"])
    data = SimpleNamespace(classes=["a", "b"], in_chans=3, image_hw=(32, 32), image_size=32)
    model = build_model(cfg, data)
    assert max(m.p for m in model.modules() if isinstance(m, DropPath)) == pytest.approx(0.4)


def test_activation_checkpointing_recomputes_the_same_drops() -> None:
    """Backward through recomputed blocks must see the forward pass's masks (torch's checkpoint
    restores the RNG state), or the gradients would be another network's."""
    torch.manual_seed(0)
    model = create_model("resnet_cifar_8", num_classes=3, drop_path_rate=0.5).train()
    x = torch.randn(16, 3, 16, 16)
    grads = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(7)
        model(x).logsumexp(1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
