"""Typed run configuration: one dataclass per concern, layered defaults < recipe < overrides.

A recipe is a YAML file (the package's `recipes/NAME.yaml`, or any path) whose top-level keys are
the sections below. Overrides are `section.key=value` strings (`--set optim.lr=0.05`), values
parsed as YAML scalars. Unknown sections or keys are an error naming the valid ones; so is a
value of the wrong type, and a number outside its setting's range (`RANGES`, checked by `validate`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reslab import vocab
from reslab.atomic import atomic_write_bytes
from reslab.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class ModelConfig:
    name: str = "resnet20"  # registry name (`reslab models`)
    shortcut: str | None = None  # "A" / "B" / "C"; None = the model's paper default
    zero_init_last: bool = False  # zero the last BN of each branch (not in the paper)
    drop_rate: float = 0.0  # Wide ResNet dropout probability between convs, in [0, 1) (0 = the paper's no dropout)
    pretrained: str | None = None  # start from weights: reslab .safetensors/run dir, or a torchvision file
    activation_checkpointing: bool = False  # recompute each stage in backward: less memory, ~30% more compute
    # stochastic depth (Huang et al. 2016): the last block's probability of skipping its residual branch,
    # the others' rising linearly with depth from 0 (the linear rule); identity at evaluation. 0 = off
    drop_path_rate: float = 0.0


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10 | cifar100 | fashion-mnist | mnist | imagefolder | synthetic
    data_dir: str | None = None  # where the files are (None: dataset default search path)
    download: bool = False  # fetch through torchvision when online
    # "paper": hold out val_size training images at random (CIFAR's 45k / 5k); "full": train on all;
    # "auto": validate on the dataset's own val part (ImageFolder val/, CSV split column), else on a
    # stratified, seeded val_fraction of the training images
    split: str = "paper"
    val_size: int = 5000  # held-out images under split=paper (paper: 45k train / 5k val)
    val_fraction: float = 0.1  # under split=auto without a val part: the share of each class held out
    # K-fold cross-validation (`reslab train --folds K` sets both): val is fold `fold` (1..folds) of the
    # training images, stratified and seeded by train.seed, in place of what data.split would hold out
    folds: int = 0
    fold: int = 0
    normalize: str = "pixel-mean"  # pixel-mean (paper sec. 4.2) | channel (mean/std) | none
    augment: str = "crop-flip"  # none | flip | crop | crop-flip (in memory); scale | rrc (ImageFolder loader)
    pad: int = 4  # pixels of zero padding before the random crop
    hflip: bool = True  # false where a mirrored image is another class (digits, text): no flip augmentation or TTA
    image_size: int | None = None  # pixels, 1..4096: resize ImageFolder images / pad small images up to this size
    in_chans: int | None = None  # 1 (grey) or 3 (RGB); None: 1 when every image is grey, else 3
    in_memory: bool = True  # decode once into a uint8 tensor; False = DataLoader workers (large ImageFolders)
    sampler: str = "random"  # random (a permutation per epoch) | balanced (classes drawn equally often)
    # repeated augmentation (Hoffer et al. 2020; torchvision's --ra-reps): each epoch shows every image
    # this many times, differently augmented, spread over the processes; the epoch keeps its length. 1 = off
    repeats: int = 1
    # an augmentation policy of torchvision.transforms.v2 applied per training image on uint8 pixels:
    # none | trivialaugment (TrivialAugmentWide) | randaugment | autoaugment (the ImageNet policy)
    policy: str = "none"
    policy_magnitude: int = 9  # RandAugment's magnitude, 0..30 (torchvision's default 9; 2 ops per image)
    random_erasing: float = 0.0  # probability of erasing a random rectangle of each training image (RandomErasing)
    mixup_alpha: float = 0.0  # > 0: mix pairs of images and their targets, lambda ~ Beta(alpha, alpha) (MixUp)
    cutmix_alpha: float = 0.0  # > 0: paste a box of another image, targets by area (CutMix); with mixup, one of
    # the two per batch at random (torchvision's reference)
    eval_image_size: int | None = None  # test resolution when it differs from the training crop (image_size):
    # evaluate at this size (FixRes: train 176, test 224 in torchvision's recipe); None = image_size
    eval_resize_size: int | None = None  # ImageFolder evaluation: shorter side before the centre crop of
    # eval_image_size; None = eval_image_size * 256 / 224 (torchvision's V2 recipe: 232 for 224)
    workers: int = 2  # DataLoader workers when in_memory is False
    synthetic_size: int = 512  # images in the synthetic smoke-test set
    cache_dir: str | None = None  # uint8 cache location (default ~/.cache/reslab)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # peak learning rate at batch_size
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False  # exclude BN parameters and biases from weight decay
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    ema_decay: float = 0.0  # EMA of weights per update (e.g. 0.999); 0 = off
    ema_every: int = 1  # update the EMA every N optimizer steps (torchvision's --model-ema-steps 32)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW only
    class_weights: str = "none"  # none | auto (cross-entropy weighted by inverse class frequency)


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # constant | step | multistep | cosine | linear | onecycle | plateau
    milestones: list[int] = field(default_factory=lambda: [32000, 48000])  # iterations (multistep)
    step_size: int = 30000  # iterations between decays (step)
    gamma: float = 0.1  # decay factor (step, multistep, plateau)
    warmup_steps: int = 0  # linear warm-up from warmup_lr to lr over these iterations
    warmup_lr: float = 0.0  # lr at step 0 of a linear warm-up
    warmup_epochs: float = 0.0  # the warm-up in epochs (in steps once the epoch's are known); or warmup_steps
    warmup_until_error: float = 0.0  # paper ResNet-110: hold warmup_lr until train error < this (0 = off)
    warmup_min_depth: int = 0  # apply warmup_until_error only to models at least this deep (paper: 110)
    final_lr: float = 0.0  # lr at the last step (cosine, linear, onecycle)
    pct_start: float = 0.25  # onecycle: fraction of steps rising to lr
    patience: int = 5  # plateau: evaluations without improvement before decaying


@dataclass
class TrainConfig:
    iterations: int = 0  # total optimizer steps (paper: 64000); 0 = use epochs
    epochs: float = 0.0  # total epochs if iterations is 0
    # A time budget for the whole run ("90s", "10m", "2h"; a bare number is seconds; "" = none): the
    # run measures its own step and evaluation speed at its start and sets the steps so that it ends
    # within it (reslab.train.budget). It replaces the length epochs / iterations give; the schedule's
    # step-based settings (milestones, warm-up, step size) are scaled to the steps it chose.
    budget: str = ""
    budget_steps: int = 0  # written by the run: the steps the budget came to (0 = not measured yet)
    batch_size: int = 128  # global batch (split across processes under torchrun)
    # gradient accumulation: each process splits its share of a batch into this many micro-batches
    # and sums their gradients before one optimizer step; the batch (and so the recipe) is unchanged,
    # the memory is that of a micro-batch. batch_size must divide evenly. 1 = off
    accum_steps: int = 1
    eval_every: int = 0  # evaluate every N iterations; 0 = once per epoch; -1 = only after the last step
    # all: every evaluation covers val and test; watched: only the watched part (val), and the other
    # parts once, at the end, on the kept weights (the test part touched once; evaluations cost less)
    eval_parts: str = "all"
    # Images of each part an evaluation DURING training uses (0 = all): a fixed random subset, the
    # same for every run with this value (seed 0), for cheaper curve points; the last evaluation and
    # the kept weights' numbers use every image. In-memory data only.
    eval_images: int = 0
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms; bit-exact resume on CPU
    # Started again on a run directory that holds a run: resume it (from its newest good checkpoint)
    # instead of refusing. Always on when torchrun's elastic agent restarted the workers
    # (TORCHELASTIC_RESTART_COUNT > 0): a restarted group goes on where the run was.
    auto_resume: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaler) | auto: per machine, at run time: CUDA bf16
    # where the GPU has it, else fp16; CPU bf16 where it is native (AVX512-BF16 or AMX), else fp32
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False  # torch.compile the model (cold compile costs about a minute on CPU)
    tta_flip: bool = False  # evaluate on the image and its mirror, averaging logits
    # At the end of a run with a val part, on the kept weights (reslab.train.finish): fit a temperature
    # on val (as `reslab calibrate`) and store it with the weights; false: uncalibrated logits.
    calibrate: bool = True
    decide_tta: bool = True  # with tta_flip: keep flip TTA in the weights only where it lowers the val error
    threads: int = 0  # torch threads, at most 1024; 0 = torch's default
    checkpoint_every: int = 0  # write a checkpoint every N iterations; 0 = each epoch end only
    keep_checkpoints: int = 2  # newest K checkpoints kept; 0 = keep all (as reslab.checkpoint.save_checkpoint)
    on_nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss or gradient does
    max_skips: int = 10  # under "skip", stop after this many skipped steps
    sync_bn: bool = False  # SyncBatchNorm under torchrun
    out_dir: str = "runs"  # run directories are created under this
    progress: bool = True  # progress bar on stderr
    keep: str = "last"  # the weights a run ends with: last (the final step's) | best (best val top-1 error)
    early_stop: int = 0  # stop after this many evaluations without a better val top-1 error; 0 = off


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recipe: str = "defaults"  # where the settings came from (informational)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "recipe"}


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?")
DURATION_UNITS = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
MAX_BUDGET_S = 30 * 24 * 3600.0  # 30 days: longer is a typo
# What a time budget keeps back and allows, for a run (reslab.train.budget) and an experiment
# (reslab.analysis.budget) alike: a share of the budget for what is not measured and a shared
# CPU's drift, and the share of the training steps' time evaluations may take.
BUDGET_MARGIN = 0.05
BUDGET_EVAL_SHARE = 0.15


def budget_seconds(text: str) -> float:
    """train.budget ("90s", "10m", "1.5h", "300") -> seconds; a ConfigError for anything else."""
    match = DURATION.fullmatch(str(text).strip().lower())
    seconds = float(match[1]) * DURATION_UNITS[match[2]] if match else 0.0
    if not 0 < seconds <= MAX_BUDGET_S:
        raise ConfigError(f"train.budget must be a duration such as 90s, 10m or 2h (at most 30 days); got {text!r}")
    return seconds


def _section_class(name: str) -> type:
    return {
        "model": ModelConfig,
        "data": DataConfig,
        "optim": OptimConfig,
        "schedule": ScheduleConfig,
        "train": TrainConfig,
    }[name]


def shown(value: Any) -> str:
    """A number (or list of numbers) for a message; an integer of more than 20 digits (1e308 read
    into an int setting) in scientific notation rather than 309 digits."""
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"
    return str(value)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a field's type; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, item, where) for v in value]
    return _coerce_scalar(value, annotation, where)


def _number_in_text(text: str, annotation: type) -> Any:
    """YAML 1.1 reads 1e30 (no dot) as a string: the number it spells (an int for an int field,
    where it is whole), or the text unchanged when it spells none."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if annotation is float or not number.is_integer() else int(number)


def _coerce_scalar(value: Any, annotation: Any, where: str) -> Any:
    """`_coerce` for a bool, int, float or str field (anything else passes unchecked)."""
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an int beyond 1.8e308
            raise ConfigError(f"{where}={shown(value)} is out of range: too large for a float") from None
    if annotation in (float, int) and isinstance(value, str):
        value = _number_in_text(value, annotation)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 6.4e4 in YAML
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if annotation in (str, float) and not isinstance(value, annotation):
        raise ConfigError(f"{where} must be a {annotation.__name__}, got {value!r}")
    return value


def apply_settings(cfg: Config, settings: dict[str, Any], source: str) -> None:
    """Set nested `{section: {key: value}}` settings on cfg, validating every name and type."""
    for section, values in settings.items():
        if section == "recipe":
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r}; valid: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(
                f"{source}: section {section!r} must be a mapping of keys to values, got {type(values).__name__}"
            )
        target = getattr(cfg, section)
        hints = typing.get_type_hints(_section_class(section))
        for key, value in values.items():
            if key not in hints:
                valid = ", ".join(hints)
                raise ConfigError(f"{source}: unknown setting {section}.{key}; valid keys of {section}: {valid}")
            setattr(target, key, _coerce(value, hints[key], f"{source}: {section}.{key}"))


def load_yaml(text: str, what: str) -> Any:
    """`yaml.safe_load` (no python tags: nothing is constructed but plain data), with any problem
    of the text as one ConfigError line naming `what`. Besides YAMLError, PyYAML's constructors
    raise ValueError and KeyError for scalars that match a type's pattern but not its values
    (`2020-13-45`, `!!bool x`), and deep nesting exhausts the recursion limit."""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, KeyError, TypeError, RecursionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what} is not valid YAML ({first})") from None


def parse_override(text: str) -> dict[str, Any]:
    """'optim.lr=0.05' -> {'optim': {'lr': 0.05}} (value parsed as YAML)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value (e.g. optim.lr=0.05), got {text!r}")
    dotted, raw = text.split("=", 1)
    section, key = dotted.split(".", 1)
    if section not in SECTIONS:  # "recipe" too: it is not a section, and apply_settings skips it
        raise ConfigError(f"--set {text!r}: unknown section {section!r}; valid: {', '.join(SECTIONS)}")
    value = load_yaml(raw, f"--set {text!r}: the value") if raw != "" else None
    return {section: {key: value}}


def recipe_path(recipe: str) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    builtin = RECIPES_DIR / f"{recipe}.yaml"
    if builtin.is_file():
        return builtin
    raise ConfigError(f"unknown recipe {recipe!r}; built-in: {', '.join(list_recipes())}, or a path to a .yaml file")


def load_config(recipe: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """defaults < recipe < overrides."""
    cfg = Config()
    if recipe:
        path = recipe_path(recipe)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"recipe {path} cannot be read ({exc})") from None
        settings = load_yaml(text, f"recipe {path}") or {}
        if not isinstance(settings, dict):
            raise ConfigError(f"recipe {path} must be a mapping of sections")
        apply_settings(cfg, settings, str(path.name))
        cfg.recipe = recipe
    for text in overrides:
        apply_settings(cfg, parse_override(text), "--set")
    validate(cfg)
    return cfg


CHOICES = {
    ("data", "dataset"): vocab.DATASETS,
    ("data", "split"): vocab.SPLIT_MODES,
    ("data", "normalize"): vocab.NORMALIZE_KINDS,
    ("data", "augment"): vocab.AUGMENT_KINDS + tuple(k for k in vocab.FOLDER_AUGMENT_KINDS if k != "none"),
    ("optim", "name"): vocab.OPTIMIZERS,
    ("schedule", "name"): vocab.SCHEDULES,
    ("train", "precision"): vocab.PRECISIONS,
    ("data", "sampler"): vocab.SAMPLERS,
    ("optim", "class_weights"): vocab.CLASS_WEIGHTS,
    ("train", "keep"): vocab.KEEP,
    ("train", "eval_parts"): vocab.EVAL_PARTS,
    ("train", "on_nonfinite"): vocab.ON_NONFINITE,
    ("data", "policy"): vocab.POLICIES,
}


INT64_MAX = 2**63 - 1  # step counts, seeds and sizes reach torch as int64


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric setting: low <= value <= high (an open end excludes its bound;
    high None: no upper bound). Floats must also be finite, which `check_range` adds."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""  # what special values mean, for the error message

    def __contains__(self, value: float) -> bool:
        if value <= self.low if self.low_open else value < self.low:
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        def text(bound: float) -> str:
            return "2**63-1" if bound == INT64_MAX else str(int(bound)) if float(bound).is_integer() else str(bound)

        if self.high is None:
            shown = f"{'>' if self.low_open else '>='} {text(self.low)}"
        else:
            low, high = (
                f"{'(' if self.low_open else '['}{text(self.low)}",
                f"{text(self.high)}{')' if self.high_open else ']'}",
            )
            shown = f"in {low}, {high}"
        return f"{shown} ({self.note})" if self.note else shown


UNIT = Range(0, 1, high_open=True)  # probabilities, momenta and decays: [0, 1)
FRACTION = Range(0, 1)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
COUNT = Range(0, INT64_MAX)  # steps, iterations, evaluations; 0 usually means "off"
AT_LEAST_ONE = Range(1, INT64_MAX)

# Every int and float setting (and each item of a list of numbers), checked by `validate`.
RANGES: dict[tuple[str, str], Range] = {
    ("model", "drop_rate"): UNIT,  # a dropout probability; 1 would drop everything
    ("model", "drop_path_rate"): UNIT,  # the deepest block's drop probability; 1 would drop its branch always
    ("data", "repeats"): Range(1, 64),  # torchvision's recipe uses 4; more than 64 copies of an image is a typo
    ("data", "policy_magnitude"): Range(0, 30),  # torchvision's RandAugment has 31 magnitude bins
    ("data", "random_erasing"): FRACTION,  # a probability
    ("data", "mixup_alpha"): Range(0, 100),  # Beta(alpha, alpha); 0 = off (recipes use 0.1 .. 1)
    ("data", "cutmix_alpha"): Range(0, 100),
    ("data", "eval_image_size"): Range(1, 4096),  # or None (the training size)
    ("data", "eval_resize_size"): Range(1, 4096),  # or None (eval_image_size * 256 / 224)
    ("data", "val_size"): AT_LEAST_ONE,  # under split=paper; must also leave training images (checked on load)
    ("data", "val_fraction"): Range(0, 1, low_open=True, high_open=True),  # a share of each class
    ("data", "in_chans"): Range(1, 3),  # or None (auto); 2 is refused by validate
    # The padded copy of a batch grows as (H + 2 pad)^2; a crop shifts at most pad pixels, and more
    # than 256 on images of at most 4096 is a typo, not a recipe (the paper pads 4).
    ("data", "pad"): Range(0, 256),
    ("data", "image_size"): Range(1, 4096),  # or None (the native size); 4096 is beyond any ResNet input
    ("data", "workers"): Range(0, 1024),  # DataLoader processes; 0 decodes in the main process
    ("data", "synthetic_size"): Range(1, 1_000_000),  # a smoke-test set: 1M 32x32 RGB images are 3 GB
    ("optim", "lr"): POSITIVE,
    ("optim", "momentum"): UNIT,
    ("optim", "weight_decay"): NON_NEGATIVE,
    ("optim", "label_smoothing"): UNIT,  # 1 would make every target uniform: nothing left to learn
    ("optim", "grad_clip"): NON_NEGATIVE,  # 0 = off
    ("optim", "ema_decay"): UNIT,  # 0 = off; 1 would never move the average
    ("optim", "ema_every"): AT_LEAST_ONE,
    ("optim", "betas"): UNIT,  # each of the two (AdamW's beta1, beta2)
    ("schedule", "milestones"): COUNT,  # each
    ("schedule", "step_size"): AT_LEAST_ONE,
    ("schedule", "gamma"): Range(0, 1, low_open=True),  # a decay factor: 1 = no decay; 0 or less is no lr
    ("schedule", "warmup_steps"): COUNT,
    ("schedule", "warmup_lr"): NON_NEGATIVE,
    ("schedule", "warmup_epochs"): Range(0, 1e6),
    ("schedule", "warmup_until_error"): FRACTION,  # a training error; 0 = off
    ("schedule", "warmup_min_depth"): COUNT,
    ("schedule", "final_lr"): NON_NEGATIVE,
    ("schedule", "pct_start"): FRACTION,
    ("schedule", "patience"): COUNT,  # 0 decays after every evaluation without improvement
    ("train", "iterations"): COUNT,
    ("train", "budget_steps"): COUNT,  # written by a budgeted run
    ("train", "eval_images"): COUNT,
    ("data", "folds"): Range(0, 100, note="0 = off; else at least 2"),
    ("data", "fold"): Range(0, 100),
    # 1e9 epochs is beyond any run, and keeps epochs x steps per epoch well within int64.
    ("train", "epochs"): Range(0, 1e9),
    ("train", "batch_size"): AT_LEAST_ONE,
    ("train", "accum_steps"): Range(1, 4096, note="micro-batches per optimizer step; 1 = off"),
    ("train", "eval_every"): Range(
        -1, INT64_MAX, note="N > 0: every N iterations, 0: each epoch end, -1: only after the last step"
    ),
    ("train", "seed"): Range(0, INT64_MAX),  # torch.manual_seed takes 64 bits; negative seeds are not portable
    ("train", "threads"): Range(0, 1024),  # 0 = torch's default; torch.set_num_threads takes a C int
    ("train", "checkpoint_every"): COUNT,  # 0 = each epoch end only
    ("train", "keep_checkpoints"): Range(0, INT64_MAX, note="the newest N; 0 keeps all"),
    ("train", "max_skips"): COUNT,
    ("train", "early_stop"): Range(0, INT64_MAX, note="evaluations without improvement; 0 = off"),
}

# train.device: auto, cpu, cuda (this process's GPU) or cuda:N (reslab.device.resolve_device).
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]{1,4})?")


def check_range(section: str, key: str, value: Any) -> None:
    """A ConfigError naming the setting, its value and the valid range, when `value` is outside it."""
    rng = RANGES[(section, key)]
    items = value if isinstance(value, list) else [value]
    if all(v in rng and not (isinstance(v, float) and not math.isfinite(v)) for v in items):
        return
    finite = "finite " if any(isinstance(v, float) and not math.isfinite(v) for v in items) else ""
    what = f"{finite}values" if isinstance(value, list) else f"a {finite}value"
    raise ConfigError(f"{section}.{key}={shown(value)} is out of range: use {what} {rng}")


def validate(cfg: Config) -> None:
    """ConfigError for the first setting out of its range, not one of its choices, or at odds with
    another. Without data.hflip it also turns flip augmentation and flip TTA off, in place."""
    for (section, key), value in ((name, getattr(getattr(cfg, name[0]), name[1])) for name in RANGES):
        if value is not None:  # data.image_size and data.in_chans may be None (native / auto); nothing else can
            check_range(section, key, value)
    if not cfg.data.hflip:  # mirrored images are other classes: no flip augmentation, no flip TTA
        cfg.data.augment = {"crop-flip": "crop", "flip": "none"}.get(cfg.data.augment, cfg.data.augment)
        cfg.train.tta_flip = False
    _check_choices(cfg)
    _check_combinations(cfg)


def _check_choices(cfg: Config) -> None:
    """Settings whose value must be one of a few: channels, names from `CHOICES`, the device, betas."""
    if cfg.data.in_chans == 2:
        raise ConfigError("data.in_chans=2: images are read as 1 (grey) or 3 (RGB) channels; use 1, 3 or null (auto)")
    for (section, key), choices in CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{section}.{key} must be one of {', '.join(choices)}; got {value!r}")
    if not DEVICE_NAME.fullmatch(cfg.train.device):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N; got {cfg.train.device!r}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas must be two numbers [beta1, beta2]; got {cfg.optim.betas}")


def _check_combinations(cfg: Config) -> None:
    """Settings valid alone but not together (and model.shortcut, which may be None: the net's own)."""
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise ConfigError("optim.nesterov needs optim.momentum > 0 (Nesterov momentum without momentum is undefined)")
    if cfg.model.shortcut is not None and cfg.model.shortcut not in vocab.SHORTCUTS:
        raise ConfigError(f"model.shortcut must be one of {', '.join(vocab.SHORTCUTS)}; got {cfg.model.shortcut!r}")
    if cfg.data.folds == 1 or not (cfg.data.fold == 0 if cfg.data.folds == 0 else 1 <= cfg.data.fold <= cfg.data.folds):
        raise ConfigError(
            f"data.folds={cfg.data.folds}, data.fold={cfg.data.fold}: use at least 2 folds and a fold in 1..folds "
            "(reslab train --folds K sets both), or data.folds=0 and data.fold=0"
        )
    if cfg.train.budget:
        budget_seconds(cfg.train.budget)  # a ConfigError naming the value when it is not a duration
    elif (cfg.train.iterations > 0) == (cfg.train.epochs > 0):
        raise ConfigError(
            "set exactly one of train.iterations and train.epochs (the other 0); "
            f"got iterations={cfg.train.iterations}, epochs={cfg.train.epochs}"
        )
    if cfg.optim.ema_every > 1 and cfg.optim.ema_decay == 0:
        raise ConfigError(f"optim.ema_every={cfg.optim.ema_every} needs an EMA: set optim.ema_decay (e.g. 0.999)")
    if cfg.schedule.warmup_steps > 0 and cfg.schedule.warmup_epochs > 0:
        raise ConfigError(
            f"schedule.warmup_steps={cfg.schedule.warmup_steps} and schedule.warmup_epochs="
            f"{cfg.schedule.warmup_epochs:g} both set the warm-up; set one of them (the other 0)"
        )
    if cfg.schedule.name == "onecycle" and (cfg.schedule.warmup_steps > 0 or cfg.schedule.warmup_epochs > 0):
        raise ConfigError(
            "schedule onecycle rises from warmup_lr over pct_start of the steps itself: leave "
            "schedule.warmup_steps and schedule.warmup_epochs at 0 (set schedule.pct_start)"
        )
    if cfg.train.eval_every == -1 and cfg.schedule.name == "plateau":
        raise ConfigError("schedule plateau decays on evaluations: it needs train.eval_every >= 0, not -1")


def save_config(cfg: Config, path: Path) -> None:
    atomic_write_bytes(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())


def config_from_dict(settings: dict[str, Any], source: str = "saved config") -> Config:
    """A saved config (a run's config.yaml, a checkpoint's) on top of the defaults; `source` (the
    file) starts every error message. Not validated: `validate` it before training on it."""
    cfg = Config()
    apply_settings(cfg, settings, source)
    cfg.recipe = _coerce(settings.get("recipe", "saved"), str, f"{source}: recipe")
    return cfg
