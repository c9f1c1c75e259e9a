"""The model registry: every network by name, built through one `create_model`.

Fixed names (`resnet20`, `resnet50_v1`, `wrn28_10`, ...) are registered below; parametric names
build any valid depth or width: `resnet_cifar_D` / `plain_cifar_D` (D = 6n+2),
`preact_resnet_cifar_D` (D = 6n+2 basic, or 9n+2 with `bottleneck=True`), `wrn_D_K` (D = 6n+4),
with D at most MAX_PARAMETRIC_DEPTH and K at most MAX_WIDEN_FACTOR.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from reslab.errors import ConfigError, UnknownModelError
from reslab.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ResidualBlock
from reslab.models.features import FeatureNet
from reslab.models.resnet import ResNet, ResNetSpec, Stem

# Options a user may pass to create_model(..., **options); everything else is fixed by the name.
OPTIONS = ("shortcut", "zero_init_last", "drop_rate", "drop_path_rate")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str  # e.g. "resnet-cifar", "resnet-v1", "resnet-v1.5", "plain-cifar", "wide-resnet"
    depth: int  # weighted layers, as in the papers' names
    input_size: int  # native resolution: 32 (CIFAR) or 224 (ImageNet)
    num_classes: int  # default classifier size
    build: Callable[..., ResNet]  # build(num_classes=..., in_chans=..., name=..., **options)
    paper: str  # where the architecture comes from


_REGISTRY: dict[str, ModelInfo] = {}


def _register(
    name: str, family: str, depth: int, input_size: int, num_classes: int, build: Callable[..., ResNet], paper: str
) -> None:
    _REGISTRY[name] = ModelInfo(name, family, depth, input_size, num_classes, build, paper)


# ---- CIFAR networks (paper sec. 4.2) -------------------------------------------------------------


def _resnet(
    block: type[ResidualBlock],
    layers: tuple[int, ...],
    planes: tuple[int, ...],
    *,
    stem: Stem,
    stem_width: int,
    **kw: Any,
) -> ResNet:
    """The network of the registry's keywords: num_classes, in_chans and name are the network's
    own; every other one (the name's fixed choices and the user's options) goes into its spec."""
    own = {key: kw.pop(key) for key in ("num_classes", "in_chans", "name") if key in kw}
    return ResNet(ResNetSpec(block, layers, planes, stem, stem_width, **kw), **own)


def _cifar_n(depth: int, per_block: int, extra: int, what: str) -> int:
    n, rem = divmod(depth - extra, per_block * 3)
    if rem or n < 1:
        raise ConfigError(f"{what} depth must be {per_block * 3}n+{extra} with n >= 1, got {depth}")
    return n


def cifar_resnet(depth: int, *, residual: bool = True, shortcut: str = "A", **kw: Any) -> ResNet:
    """Paper's CIFAR net: conv3x3(16), 3 stages of n basic blocks (16/32/64), depth 6n+2."""
    n = _cifar_n(depth, 2, 2, "CIFAR ResNet")
    return _resnet(
        BasicBlock, (n, n, n), (16, 32, 64), stem="cifar", stem_width=16, residual=residual, shortcut=shortcut, **kw
    )


def preact_cifar_resnet(depth: int, *, bottleneck: bool = False, shortcut: str = "B", **kw: Any) -> ResNet:
    """He et al. 2016 CIFAR nets: basic (6n+2, e.g. 110) or bottleneck (9n+2, e.g. 164, 1001)."""
    if bottleneck:
        n = _cifar_n(depth, 3, 2, "pre-activation bottleneck ResNet")
        return _resnet(PreActBottleneck, (n, n, n), (16, 32, 64), stem="cifar", stem_width=16, shortcut=shortcut, **kw)
    n = _cifar_n(depth, 2, 2, "pre-activation ResNet")
    return _resnet(PreActBasicBlock, (n, n, n), (16, 32, 64), stem="cifar", stem_width=16, shortcut=shortcut, **kw)


def wide_resnet(depth: int, k: int, *, shortcut: str = "B", **kw: Any) -> ResNet:
    """WRN-d-k (Zagoruyko & Komodakis 2016): pre-activation basic blocks, widths 16k/32k/64k, d = 6n+4."""
    n = _cifar_n(depth, 2, 4, "Wide ResNet")
    if k < 1:
        raise ConfigError(f"Wide ResNet widening factor must be >= 1, got {k}")
    return _resnet(
        PreActBasicBlock, (n, n, n), (16 * k, 32 * k, 64 * k), stem="cifar", stem_width=16, shortcut=shortcut, **kw
    )


def resnext29(cardinality: int, width: int, *, shortcut: str = "B", **kw: Any) -> ResNet:
    """ResNeXt-29 for CIFAR (Xie et al. 2017): conv3x3(64), 3 stages of 3 grouped bottlenecks."""
    return _resnet(
        Bottleneck,
        (3, 3, 3),
        (64, 128, 256),
        stem="cifar",
        stem_width=64,
        groups=cardinality,
        base_width=width,
        shortcut=shortcut,
        **kw,
    )


for _d in (20, 32, 44, 56, 110, 1202):
    _register(
        f"resnet{_d}", "resnet-cifar", _d, 32, 10, lambda d=_d, **kw: cifar_resnet(d, **kw), "He et al. 2015, sec. 4.2"
    )
for _d in (20, 32, 44, 56, 110):
    _register(
        f"plain{_d}",
        "plain-cifar",
        _d,
        32,
        10,
        lambda d=_d, **kw: cifar_resnet(d, residual=False, **kw),
        "He et al. 2015, sec. 4.2",
    )
_register(
    "preact_resnet110",
    "preact-resnet-cifar",
    110,
    32,
    10,
    lambda **kw: preact_cifar_resnet(110, **kw),
    "He et al. 2016",
)
for _d in (164, 1001):
    _register(
        f"preact_resnet{_d}",
        "preact-resnet-cifar",
        _d,
        32,
        10,
        lambda d=_d, **kw: preact_cifar_resnet(d, bottleneck=True, **kw),
        "He et al. 2016",
    )
for _d, _k in ((16, 8), (28, 10), (40, 4)):
    _register(
        f"wrn{_d}_{_k}",
        "wide-resnet-cifar",
        _d,
        32,
        10,
        lambda d=_d, k=_k, **kw: wide_resnet(d, k, **kw),
        "Zagoruyko & Komodakis 2016",
    )
_register("resnext29_8x64d", "resnext-cifar", 29, 32, 10, lambda **kw: resnext29(8, 64, **kw), "Xie et al. 2017")


def fast_resnet10(*, shortcut: str = "B", **kw: Any) -> ResNet:
    """The `fast` recipe's network: the paper's basic blocks in ResNet-18's four-stage layout with
    one block per stage, widths 16/32/64/128 (ResNet-18's at 1/4) and the CIFAR 3x3 stem.
    Depth 10 = stem + 4 blocks x 2 convs + classifier. Chosen by time to accuracy on 2 CPU cores:
    the fourth stage works at 1/8 resolution, where wide layers are cheap (recipes/fast.yaml)."""
    return _resnet(BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128), stem="cifar", stem_width=16, shortcut=shortcut, **kw)


_register(
    "fast_resnet10",
    "fast-resnet",
    10,
    32,
    10,
    fast_resnet10,
    "reslab: He et al. 2015 basic blocks, ResNet-18 layout at 1/4 width, one block per stage",
)


# ---- ImageNet networks (paper Table 1) -----------------------------------------------------------

IMAGENET_LAYERS: dict[int, tuple[bool, tuple[int, ...]]] = {  # depth -> (bottleneck?, blocks/stage)
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}


def imagenet_resnet(
    depth: int,
    *,
    version: str = "v1.5",
    preact: bool = False,
    residual: bool = True,
    shortcut: str = "B",
    groups: int = 1,
    base_width: int = 64,
    **kw: Any,
) -> ResNet:
    """ImageNet ResNet (Table 1). version "v1" strides a bottleneck's first 1x1 (the paper);
    "v1.5" strides its 3x3 (torchvision). Pre-activation nets stride the 3x3 (He et al. 2016 code)."""
    if depth not in IMAGENET_LAYERS:
        raise ConfigError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_LAYERS)}, got {depth}")
    bottleneck, layers = IMAGENET_LAYERS[depth]
    if preact:
        block = PreActBottleneck if bottleneck else PreActBasicBlock
    else:
        block = Bottleneck if bottleneck else BasicBlock
    # A basic block's only strided conv is its first 3x3, so v1 and v1.5 differ only in bottlenecks;
    # asking a basic block to stride a 1x1 would be an error.
    stride_on = "1x1" if version == "v1" and bottleneck else "3x3"
    return _resnet(
        block,
        layers,
        (64, 128, 256, 512),
        stem="imagenet",
        stem_width=64,
        residual=residual,
        shortcut=shortcut,
        stride_on=stride_on,
        groups=groups,
        base_width=base_width,
        **kw,
    )


for _d in IMAGENET_LAYERS:
    _register(
        f"resnet{_d}",
        "resnet-v1.5",
        _d,
        224,
        1000,
        lambda d=_d, **kw: imagenet_resnet(d, version="v1.5", **kw),
        "He et al. 2015, Table 1; stride on 3x3 as torchvision",
    )
    _register(
        f"resnet{_d}_v1",
        "resnet-v1",
        _d,
        224,
        1000,
        lambda d=_d, **kw: imagenet_resnet(d, version="v1", **kw),
        "He et al. 2015, Table 1",
    )
    _register(
        f"preact_resnet{_d}",
        "preact-resnet",
        _d,
        224,
        1000,
        lambda d=_d, **kw: imagenet_resnet(d, preact=True, **kw),
        "He et al. 2016",
    )
for _d in (18, 34):
    _register(
        f"plain{_d}",
        "plain",
        _d,
        224,
        1000,
        lambda d=_d, **kw: imagenet_resnet(d, version="v1", residual=False, **kw),
        "He et al. 2015, Table 1 (plain)",
    )
_register(
    "resnext50_32x4d",
    "resnext",
    50,
    224,
    1000,
    lambda **kw: imagenet_resnet(50, groups=32, base_width=4, **kw),
    "Xie et al. 2017",
)
_register(
    "resnext101_32x8d",
    "resnext",
    101,
    224,
    1000,
    lambda **kw: imagenet_resnet(101, groups=32, base_width=8, **kw),
    "Xie et al. 2017",
)
for _d in (50, 101):
    _register(
        f"wide_resnet{_d}_2",
        "wide-resnet",
        _d,
        224,
        1000,
        lambda d=_d, **kw: imagenet_resnet(d, base_width=128, **kw),
        "Zagoruyko & Komodakis 2016, torchvision's bottleneck variant",
    )


# ---- Parametric names ----------------------------------------------------------------------------

# Bounds on what a parametric name may ask for: above the deepest and widest nets in the papers
# (ResNet-1202, WRN-28-10, ResNet-1001), far below what would take minutes and gigabytes to build.
# A name arrives from files as well as from users (weights metadata), so it is checked before
# any module is made.
MAX_PARAMETRIC_DEPTH = 2000
MAX_WIDEN_FACTOR = 64

_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], ModelInfo]]] = [
    (
        re.compile(r"resnet_cifar_(\d+)"),
        lambda m: ModelInfo(
            m[0],
            "resnet-cifar",
            int(m[1]),
            32,
            10,
            lambda **kw: cifar_resnet(int(m[1]), **kw),
            "He et al. 2015, sec. 4.2",
        ),
    ),
    (
        re.compile(r"plain_cifar_(\d+)"),
        lambda m: ModelInfo(
            m[0],
            "plain-cifar",
            int(m[1]),
            32,
            10,
            lambda **kw: cifar_resnet(int(m[1]), residual=False, **kw),
            "He et al. 2015, sec. 4.2",
        ),
    ),
    (
        re.compile(r"preact_resnet_cifar_(\d+)"),
        lambda m: ModelInfo(
            m[0],
            "preact-resnet-cifar",
            int(m[1]),
            32,
            10,
            lambda **kw: preact_cifar_resnet(int(m[1]), **kw),
            "He et al. 2016",
        ),
    ),
    (
        re.compile(r"wrn_(\d+)_(\d+)"),
        lambda m: ModelInfo(
            m[0],
            "wide-resnet-cifar",
            int(m[1]),
            32,
            10,
            lambda **kw: wide_resnet(int(m[1]), int(m[2]), **kw),
            "Zagoruyko & Komodakis 2016",
        ),
    ),
]


def model_info(name: str) -> ModelInfo:
    """The registry entry for `name`; unknown names raise an error listing the closest ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for pattern, make in _PATTERNS:
        match = pattern.fullmatch(name)
        if match:
            _check_parametric(name, match)
            return make(match)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5) if len(name) <= 100 else []
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise UnknownModelError(
        f"unknown model {reprlib.repr(name)}.{hint} `reslab models` lists all "
        f"({len(_REGISTRY)} registered, plus resnet_cifar_D, plain_cifar_D, wrn_D_K)."
    )


def _check_parametric(name: str, match: re.Match[str]) -> None:
    """A ConfigError for a parametric name over the depth or width bounds (before int() of a
    thousand-digit number, which Python refuses with a ValueError)."""
    limits = [("depth", MAX_PARAMETRIC_DEPTH)] + [("widening factor", MAX_WIDEN_FACTOR)] * (len(match.groups()) - 1)
    for digits, (what, limit) in zip(match.groups(), limits):
        digits = digits.lstrip("0") or "0"
        if len(digits) > len(str(limit)) or int(digits) > limit:
            shown = digits if len(digits) <= 12 else f"of {len(digits)} digits"
            raise ConfigError(f"model {reprlib.repr(name)}: {what} {shown} is over reslab's limit of {limit}")


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, e.g. list_models("resnet*")."""
    return [name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern)]


@overload
def create_model(
    name: str,
    num_classes: int | None = ...,
    in_chans: int = ...,
    *,
    features_only: Literal[False] = ...,
    **options: Any,
) -> ResNet: ...
@overload
def create_model(
    name: str,
    num_classes: int | None = ...,
    in_chans: int = ...,
    *,
    features_only: Literal[True],
    out_indices: Sequence[int] | None = ...,
    **options: Any,
) -> FeatureNet: ...
def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **options: Any,
) -> ResNet | FeatureNet:
    """Build a registered network with fresh (paper) initialisation.

    features_only=True returns its feature pyramid instead: a `FeatureNet` whose forward gives the
    feature maps of `out_indices` (0 the stem, 1.. the stages; default all) and whose `feature_info`
    lists their channels and reductions (reslab.models.features, timm's interface).

    Options: shortcut ("A"/"B"/"C"), zero_init_last (bool), drop_rate (float in [0, 1); only nets
    of pre-activation basic blocks: Wide ResNets, preact_resnet110/18/34, preact_resnet_cifar_D),
    drop_path_rate (stochastic depth, float in [0, 1); every residual net, not the plain ones).
    Extra keyword `bottleneck=True` is accepted by preact_resnet_cifar_D. An option the network's
    blocks do not implement raises `ConfigError` naming the model and the option.
    """
    info = model_info(name)
    unknown = sorted(set(options) - set(OPTIONS) - {"bottleneck"})
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {name}; valid: {list(OPTIONS)}")
    if "shortcut" in options and options["shortcut"] not in ("A", "B", "C"):
        raise ConfigError(f"shortcut must be 'A', 'B' or 'C', got {options['shortcut']!r}")
    if "shortcut" in options and info.family.startswith("plain"):
        options.pop("shortcut")  # plain nets have no shortcuts to choose
    if in_chans < 1:
        raise ConfigError(f"in_chans must be >= 1, got {in_chans}")
    if out_indices is not None and not features_only:
        raise ConfigError(f"out_indices chooses feature maps: pass features_only=True with it ({name})")
    # The name goes into the network so that its errors (an unsupported option) say which model.
    net = info.build(
        num_classes=info.num_classes if num_classes is None else num_classes, in_chans=in_chans, name=name, **options
    )
    return FeatureNet(net, out_indices) if features_only else net
