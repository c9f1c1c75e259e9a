"""The model zoo against the papers and torchvision (issue 2); blocks, stages and their options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from reslab.cli import main
from reslab.errors import ConfigError, InputShapeError, UnknownModelError
from reslab.models import (
    ResNet,
    count_macs,
    count_params,
    create_model,
    describe,
    from_torchvision,
    list_models,
    load_torchvision_into,
    model_info,
    to_torchvision,
)
from reslab.models import resnet as resnet_module
from reslab.models.blocks import (
    BasicBlock,
    BlockOptions,
    Bottleneck,
    PadShortcut,
    PreActBasicBlock,
    PreActBottleneck,
    ResidualBlock,
)

ALL_MODELS = list_models()


def small_input(name: str, batch: int = 2, in_chans: int = 3) -> torch.Tensor:
    """The smallest input each net takes: 32x32 for every family keeps the suite fast."""
    return torch.randn(batch, in_chans, 32, 32)


def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, running stats = batch stats
    with torch.no_grad():
        model.train()(x)
    model.eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- Parametrized over the whole registry -------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_shape_and_finite_grads(name: str) -> None:
    model = create_model(name)
    info = model_info(name)
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, info.num_classes)
    out.float().logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads), "every parameter takes part in the forward pass"
    assert all(torch.isfinite(g).all() for g in grads)
    feats = model.forward_features(x)
    assert feats.shape[:2] == (2, model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_eval_mode_deterministic_and_grey_seven_classes(name: str) -> None:
    model = create_model(name, num_classes=7, in_chans=1)
    x = small_input(name, in_chans=1)
    # Fresh BN statistics (mean 0, var 1) let a very deep post-activation net's activations
    # overflow in eval mode (ResNet-1202 reaches inf); one train-mode pass calibrates them.
    calibrate_batchnorm(model, small_input(name, batch=8, in_chans=1))
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.isfinite(a).all()
    assert a.shape == (2, 7)
    assert torch.equal(a, b)
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(x).shape == (2, 3)


# ---- Exact parameter counts ----------------------------------------------------------------------

CIFAR_PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
}
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
}


def meta_params(name: str, **options) -> int:
    with torch.device("meta"):
        return count_params(create_model(name, **options))


@pytest.mark.parametrize("name,expected", CIFAR_PARAMS.items())
def test_cifar_param_counts_match_paper(name: str, expected: int) -> None:
    assert meta_params(name) == expected


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_twin_has_the_resnets_parameters(depth: int) -> None:
    assert meta_params(f"plain{depth}") == meta_params(f"resnet{depth}", shortcut="A")


@pytest.mark.parametrize("depth", [18, 34])
def test_imagenet_plain_twin_matches_option_a(depth: int) -> None:
    assert meta_params(f"plain{depth}") == meta_params(f"resnet{depth}_v1", shortcut="A")


@pytest.mark.parametrize("name,expected", TORCHVISION_PARAMS.items())
def test_imagenet_param_counts_match_torchvision(name: str, expected: int) -> None:
    assert meta_params(name) == expected
    assert meta_params(f"{name}_v1" if name.startswith("resnet") else name) == expected
    with torch.device("meta"):
        assert count_params(getattr(torchvision.models, name)()) == expected


def test_family_param_counts_match_papers() -> None:
    # Published sizes: WRN-28-10 36.5M (official code: 36,479,194), ResNeXt-29 8x64d 34.4M,
    # pre-act ResNet-164 1.7M and ResNet-1001 10.2M (He et al. 2016, Table 2).
    assert meta_params("wrn28_10") == 36_479_194
    assert round(meta_params("resnext29_8x64d") / 1e6, 1) == 34.4
    assert round(meta_params("preact_resnet164") / 1e6, 1) == 1.7
    assert round(meta_params("preact_resnet1001") / 1e6, 1) == 10.3  # 10.2M in the paper's rounding
    assert meta_params("resnet101") == meta_params("resnet101_v1")


def test_shortcut_options_change_only_projections() -> None:
    a, b, c = (meta_params("resnet34_v1", shortcut=s) for s in "ABC")
    assert a < b < c
    # B adds exactly the three stage-entry projections (conv1x1 + BN) of ResNet-34.
    projections = sum(i * o + 2 * o for i, o in ((64, 128), (128, 256), (256, 512)))
    assert b - a == projections


# ---- Multiply-adds ----------------------------------------------------------------------------

PAPER_V1_GMACS = {
    "resnet18_v1": (1.8, 1.814),
    "resnet34_v1": (3.6, 3.664),
    "resnet50_v1": (3.8, 3.858),
    "resnet101_v1": (7.6, 7.570),
    "resnet152_v1": (11.3, 11.282),
}


@pytest.mark.parametrize("name,paper_counted", PAPER_V1_GMACS.items())
def test_paper_v1_macs_within_2_percent_of_table_1(name: str, paper_counted: tuple[float, float]) -> None:
    paper, counted = paper_counted
    macs = describe(name).macs / 1e9
    assert abs(macs - paper) / paper <= 0.02
    assert round(macs, 3) == counted


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_v15_macs_equal_torchvision(name: str) -> None:
    with torch.device("meta"):
        tv = getattr(torchvision.models, name)()
    assert describe(name).macs == count_macs(tv, 224)
    if name == "resnet50":
        assert round(describe(name).macs / 1e9, 3) == 4.089


def test_cifar_macs() -> None:
    assert round(describe("resnet20").macs / 1e6, 2) == 40.55
    assert round(describe("resnet56").macs / 1e6, 2) == 125.49


# ---- torchvision equivalence ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_logits_match_both_ways(name: str) -> None:
    tv = getattr(torchvision.models, name)()
    # Random BN statistics, so the comparison exercises every buffer, not just the weights.
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    tv.eval()
    ours = from_torchvision(tv.state_dict()).eval()
    assert ours.name == name
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = tv(x)
        assert (ours(x) - ref).abs().max().item() <= 1e-5
        back = getattr(torchvision.models, name)()
        back.load_state_dict(to_torchvision(ours))
        back.eval()
        assert (back(x) - ref).abs().max().item() <= 1e-5


def test_torchvision_file_round_trip(tmp_path) -> None:
    tv = torchvision.models.resnet18(num_classes=5)
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    ours = from_torchvision(path)
    assert ours.num_classes == 5 and ours.name == "resnet18"
    model = create_model("resnet34")
    with pytest.raises(Exception, match="do not fit resnet34"):
        load_torchvision_into(model, path)


def test_to_torchvision_refuses_paper_v1() -> None:
    with pytest.raises(Exception, match="v1"):
        to_torchvision(create_model("resnet50_v1"))


# ---- v1 versus v1.5 ----------------------------------------------------------------------------


def test_v1_and_v15_differ_only_in_stride_placement() -> None:
    v1, v15 = create_model("resnet50_v1"), create_model("resnet50")
    mods1, mods15 = dict(v1.named_modules()), dict(v15.named_modules())
    assert mods1.keys() == mods15.keys()
    differences = []
    for key, m1 in mods1.items():
        m15 = mods15[key]
        assert type(m1) is type(m15)
        if isinstance(m1, torch.nn.Conv2d):
            assert (m1.in_channels, m1.out_channels, m1.kernel_size, m1.groups) == (
                m15.in_channels,
                m15.out_channels,
                m15.kernel_size,
                m15.groups,
            )
            if m1.stride != m15.stride:
                differences.append((key, m1.stride, m15.stride))
    # Exactly the first block of stages 2-4: v1 strides conv1 (1x1), v1.5 strides conv2 (3x3).
    assert sorted(differences) == sorted(
        [(f"layer{s}.0.conv1", (2, 2), (1, 1)) for s in (2, 3, 4)]
        + [(f"layer{s}.0.conv2", (1, 1), (2, 2)) for s in (2, 3, 4)]
    )
    v15.load_state_dict(v1.state_dict())  # same parameters, key for key


# ---- Structure of the paper's choices ----------------------------------------------------------


def test_cifar_resnet_uses_option_a_and_plain_has_no_shortcuts() -> None:
    res, plain = create_model("resnet20"), create_model("plain20")
    assert sum(isinstance(m, PadShortcut) for m in res.modules()) == 2
    assert all(not getattr(m, "residual", False) for m in plain.modules() if hasattr(m, "residual"))
    assert [s.shape for s in res.state_dict().values()] == [s.shape for s in plain.state_dict().values()]


def test_kaiming_fan_out_init() -> None:
    model = create_model("resnet56")
    conv = model.layer3[0].conv2  # 64 -> 64, 3x3: fan_out = 64 * 9
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.05


def test_zero_init_last_makes_blocks_identity() -> None:
    model = create_model("resnet50", zero_init_last=True)
    assert all(b.bn3.weight.abs().sum() == 0 for s in model.stages for b in s)
    assert all(b.bn3.weight.abs().sum() > 0 for s in create_model("resnet50").stages for b in s)
    pre = create_model("preact_resnet_cifar_8", zero_init_last=True)
    assert all(b.conv2.weight.abs().sum() == 0 for s in pre.stages for b in s)


def test_parametric_names() -> None:
    assert meta_params("resnet_cifar_20") == CIFAR_PARAMS["resnet20"]
    assert meta_params("wrn_28_10") == meta_params("wrn28_10")
    assert meta_params("preact_resnet_cifar_164", bottleneck=True) == meta_params("preact_resnet164")
    with pytest.raises(ConfigError, match="6n\\+2"):
        create_model("resnet_cifar_21")
    with pytest.raises(ConfigError, match="6n\\+4"):
        create_model("wrn_27_2")


# ---- Blocks and stages ---------------------------------------------------------------------------

BLOCKS = [BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck]


def blocks_of(model: ResNet) -> list[list[ResidualBlock]]:
    return [list(stage) for stage in model.stages]


@pytest.mark.parametrize(
    "name,shortcut,expected",
    [
        # resnet20: 3 stages of 3 blocks; only the first block of stages 2 and 3 changes shape.
        ("resnet20", "A", [[None] * 3, [PadShortcut, None, None], [PadShortcut, None, None]]),
        ("resnet20", "B", [[None] * 3, [torch.nn.Sequential, None, None], [torch.nn.Sequential, None, None]]),
        ("resnet20", "C", [[torch.nn.Sequential] * 3] * 3),
        ("plain20", None, [[None] * 3] * 3),
        # resnet50: stage 1 widens 64 -> 256 at stride 1, so its first block projects too.
        ("resnet50", "B", [[torch.nn.Sequential] + [None] * (n - 1) for n in (3, 4, 6, 3)]),
    ],
)
def test_stage_builds_each_shortcut_and_hands_it_to_the_block(
    monkeypatch, name: str, shortcut: str | None, expected: list[list[type | None]]
) -> None:
    made: list[torch.nn.Module] = []
    make_shortcut = resnet_module.make_shortcut

    def recording_make_shortcut(*args, **kwargs):
        module = make_shortcut(*args, **kwargs)
        if module is not None:
            made.append(module)
        return module

    monkeypatch.setattr(resnet_module, "make_shortcut", recording_make_shortcut)
    with torch.device("meta"):
        model = create_model(name) if shortcut is None else create_model(name, shortcut=shortcut)
    blocks = blocks_of(model)
    assert [[None if b.downsample is None else type(b.downsample) for b in stage] for stage in blocks] == expected
    # The very modules the stage built, in order, and nothing a block made for itself.
    handed_in = [b.downsample for stage in blocks for b in stage if b.downsample is not None]
    assert len(handed_in) == len(made) and all(a is b for a, b in zip(handed_in, made))


def test_preact_projections_have_no_batchnorm() -> None:
    model = create_model("preact_resnet_cifar_8", shortcut="C")
    for stage in blocks_of(model):
        for block in stage:
            assert [type(m) for m in block.downsample] == [torch.nn.Conv2d]


@pytest.mark.parametrize(
    "block_type,last",
    [(BasicBlock, "bn2"), (Bottleneck, "bn3"), (PreActBasicBlock, "conv2"), (PreActBottleneck, "conv3")],
)
def test_zero_init_last_zeroes_only_the_last_layer_and_the_block_starts_as_identity(
    block_type: type[ResidualBlock], last: str
) -> None:
    channels = 16 * block_type.expansion  # in = out channels at stride 1: the shortcut is the identity
    block = block_type(channels, 16).eval()
    torch.nn.init.normal_(getattr(block, last).weight)  # not already zero, whatever the default init
    before = {k: v.clone() for k, v in block.state_dict().items()}
    block.zero_init_last()
    after = block.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == [f"{last}.weight"]
    assert after[f"{last}.weight"].abs().sum() == 0
    x = torch.rand(2, channels, 8, 8)  # non-negative, so the post-activation ReLU keeps it as it is
    with torch.no_grad():
        assert torch.equal(block(x), x)


@pytest.mark.parametrize("name", ["resnet56", "resnet50", "resnext29_8x64d", "preact_resnet164", "plain20"])
def test_unsupported_drop_rate_names_model_and_option(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        create_model(name, drop_rate=0.3)
    message = str(err.value)
    assert f"model {name} " in message and "drop_rate" in message and "model.drop_rate at 0" in message


def test_drop_rate_is_built_where_supported_and_range_checked() -> None:
    model = create_model("wrn_10_2", drop_rate=0.3)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.3] * 3
    for bad in (-0.1, 1.0, 1.5, float("nan"), "0.3"):
        with pytest.raises(ConfigError, match=r"wrn_10_2: drop_rate .*\[0, 1\)"):
            create_model("wrn_10_2", drop_rate=bad)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_drop_rate_zero_is_accepted_everywhere(name: str) -> None:
    with torch.device("meta"):
        create_model(name, drop_rate=0.0)


def test_block_built_on_its_own_refuses_options_it_does_not_implement() -> None:
    with pytest.raises(ConfigError, match="BasicBlock does not support drop_rate"):
        BasicBlock(16, 16, options=BlockOptions(drop_rate=0.3))
    with pytest.raises(ConfigError, match="PreActBasicBlock does not support groups"):
        PreActBasicBlock(16, 16, options=BlockOptions(groups=2))
    with pytest.raises(ConfigError, match="BasicBlock does not support stride_on"):
        BasicBlock(16, 16, 2, options=BlockOptions(stride_on="1x1"))
    with pytest.raises(ConfigError, match="Bottleneck does not support drop_rate"):
        Bottleneck(64, 16, options=BlockOptions(drop_rate=0.3))
    with pytest.raises(ConfigError, match="stride_on must be one of"):
        Bottleneck(64, 16, options=BlockOptions(stride_on="7x7"))
    assert PreActBottleneck(64, 16, options=BlockOptions(groups=4, base_width=8)).conv2.groups == 4


def test_cli_unsupported_option_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    rc = main(
        [
            "train",
            "--data",
            "synthetic",
            "--model",
            "resnet20",
            "--iterations",
            "1",
            "--no-progress",
            "--set",
            "data.split=full",  # the paper split holds out more images than synthetic data has
            "--set",
            "model.drop_rate=0.3",
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "resnet20" in err and "drop_rate" in err


# ---- Bad input ------------------------------------------------------------------------------


def test_unknown_name_lists_closest() -> None:
    with pytest.raises(UnknownModelError, match="resnet50") as err:
        create_model("resnt50")
    assert "Closest" in str(err.value)


def test_bad_option_is_named() -> None:
    with pytest.raises(ConfigError, match="shortcut"):
        create_model("resnet20", shortcut="D")
    with pytest.raises(ConfigError, match="dropout"):
        create_model("resnet20", dropout=0.5)


def test_wrong_channels_or_size_names_expected_shape() -> None:
    model = create_model("resnet50")
    with pytest.raises(InputShapeError, match=r"\(B, 3, H, W\) with H, W >= 32; got \(1, 1, 64, 64\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(InputShapeError, match=r"got \(1, 3, 16, 16\)"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(InputShapeError, match="expects input"):
        model(torch.randn(3, 64, 64))


def test_any_input_size_is_fully_convolutional() -> None:
    model = create_model("resnet18", num_classes=4).eval()
    for size in (32, 57, 100):
        assert model(torch.randn(1, 3, size, size + 3)).shape == (1, 4)
    assert isinstance(model, ResNet)


def test_zero_init_last_on_a_plain_net_is_refused() -> None:
    """A plain block has no shortcut: zeroing its last layer would cut the network, not start it as identity."""
    with pytest.raises(ConfigError, match="plain20.*zero_init_last"):
        create_model("plain20", zero_init_last=True)
    assert create_model("plain20", zero_init_last=False).name == "plain20"
