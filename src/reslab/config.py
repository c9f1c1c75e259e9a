"""Typed run configuration: one dataclass per concern, layered defaults < recipe < overrides.

A recipe is a YAML file (the package's `recipes/NAME.yaml`, or any path) whose top-level keys are
the sections below. Overrides are `section.key=value` strings (`--set optim.lr=0.05`), values
parsed as YAML scalars. Unknown sections or keys are an error naming the valid ones; so is a
value of the wrong type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reslab import vocab
from reslab.errors import ConfigError

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class ModelConfig:
    name: str = "resnet20"  # registry name (`reslab models`)
    shortcut: str | None = None  # "A" / "B" / "C"; None = the model's paper default
    zero_init_last: bool = False  # zero the last BN of each branch (not in the paper)
    drop_rate: float = 0.0  # Wide ResNet dropout between convs (0 = the paper's no dropout)
    pretrained: str | None = None  # start from weights: reslab .safetensors/run dir, or a torchvision file
    activation_checkpointing: bool = False  # recompute each stage in backward: less memory, ~30% more compute


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10 | cifar100 | fashion-mnist | mnist | imagefolder | synthetic
    data_dir: str | None = None  # where the files are (None: dataset default search path)
    download: bool = False  # fetch through torchvision when online
    split: str = "paper"  # "paper": hold out val_size training images for validation; "full": train on all
    val_size: int = 5000  # held-out images under split=paper (paper: 45k train / 5k val)
    normalize: str = "pixel-mean"  # pixel-mean (paper sec. 4.2) | channel (mean/std) | none
    augment: str = "crop-flip"  # none | flip | crop | crop-flip (in memory); scale | rrc (ImageFolder loader)
    pad: int = 4  # pixels of zero padding before the random crop
    image_size: int | None = None  # resize ImageFolder images / pad small images up to this size
    in_memory: bool = True  # decode once into a uint8 tensor; False = DataLoader workers (large ImageFolders)
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
    ema_decay: float = 0.0  # EMA of weights per step (e.g. 0.999); 0 = off
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW only


@dataclass
class ScheduleConfig:
    name: str = "multistep"  # constant | step | multistep | cosine | linear | onecycle | plateau
    milestones: list[int] = field(default_factory=lambda: [32000, 48000])  # iterations (multistep)
    step_size: int = 30000  # iterations between decays (step)
    gamma: float = 0.1  # decay factor (step, multistep, plateau)
    warmup_steps: int = 0  # linear warm-up from warmup_lr to lr over these iterations
    warmup_lr: float = 0.0  # lr at step 0 of a linear warm-up
    warmup_until_error: float = 0.0  # paper ResNet-110: hold warmup_lr until train error < this (0 = off)
    warmup_min_depth: int = 0  # apply warmup_until_error only to models at least this deep (paper: 110)
    final_lr: float = 0.0  # lr at the last step (cosine, linear, onecycle)
    pct_start: float = 0.25  # onecycle: fraction of steps rising to lr
    patience: int = 5  # plateau: evaluations without improvement before decaying


@dataclass
class TrainConfig:
    iterations: int = 0  # total optimizer steps (paper: 64000); 0 = use epochs
    epochs: float = 0.0  # total epochs if iterations is 0
    batch_size: int = 128  # global batch (split across processes under torchrun)
    eval_every: int = 0  # evaluate every N iterations; 0 = once per epoch; -1 = only after the last step
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms; bit-exact resume on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast; CPU and CUDA) | fp16 (CUDA AMP)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model (cold compile costs about a minute on CPU)
    tta_flip: bool = False  # evaluate on the image and its mirror, averaging logits
    threads: int = 0  # torch threads; 0 = torch's default
    checkpoint_every: int = 0  # write a checkpoint every N iterations; 0 = each epoch end only
    keep_checkpoints: int = 2  # newest K checkpoints kept
    on_nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss or gradient does
    max_skips: int = 10  # under "skip", stop after this many skipped steps
    sync_bn: bool = False  # SyncBatchNorm under torchrun
    out_dir: str = "runs"  # run directories are created under this
    progress: bool = True  # progress bar on stderr


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


def _section_class(name: str) -> type:
    return {
        "model": ModelConfig,
        "data": DataConfig,
        "optim": OptimConfig,
        "schedule": ScheduleConfig,
        "train": TrainConfig,
    }[name]


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
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (float, int) and isinstance(value, str):
        try:  # YAML 1.1 reads 1e30 (no dot) as a string
            number = float(value)
            value = number if annotation is float or not number.is_integer() else int(number)
        except ValueError:
            pass
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
            raise ConfigError(f"{source}: section {section!r} must be a mapping of keys to values")
        target = getattr(cfg, section)
        hints = typing.get_type_hints(_section_class(section))
        for key, value in values.items():
            if key not in hints:
                valid = ", ".join(hints)
                raise ConfigError(f"{source}: unknown setting {section}.{key}; valid keys of {section}: {valid}")
            setattr(target, key, _coerce(value, hints[key], f"{source}: {section}.{key}"))


def parse_override(text: str) -> dict[str, Any]:
    """'optim.lr=0.05' -> {'optim': {'lr': 0.05}} (value parsed as YAML)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value (e.g. optim.lr=0.05), got {text!r}")
    dotted, raw = text.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
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
            settings = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
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
    ("train", "on_nonfinite"): vocab.ON_NONFINITE,
}


def validate(cfg: Config) -> None:
    for (section, key), choices in CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{section}.{key} must be one of {', '.join(choices)}; got {value!r}")
    if cfg.model.shortcut is not None and cfg.model.shortcut not in vocab.SHORTCUTS:
        raise ConfigError(f"model.shortcut must be one of {', '.join(vocab.SHORTCUTS)}; got {cfg.model.shortcut!r}")
    if (cfg.train.iterations > 0) == (cfg.train.epochs > 0):
        raise ConfigError(
            "set exactly one of train.iterations and train.epochs (the other 0); "
            f"got iterations={cfg.train.iterations}, epochs={cfg.train.epochs}"
        )
    if cfg.train.batch_size < 1:
        raise ConfigError(f"train.batch_size must be >= 1; got {cfg.train.batch_size}")
    if cfg.train.eval_every < -1:
        raise ConfigError(
            "train.eval_every must be N > 0 (every N iterations), 0 (each epoch end) or -1 "
            f"(only after the last step); got {cfg.train.eval_every}"
        )
    if cfg.train.eval_every == -1 and cfg.schedule.name == "plateau":
        raise ConfigError("schedule plateau decays on evaluations: it needs train.eval_every >= 0, not -1")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0; got {cfg.optim.lr}")


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_from_dict(settings: dict[str, Any]) -> Config:
    cfg = Config()
    apply_settings(cfg, settings, "saved config")
    cfg.recipe = settings.get("recipe", "saved")
    return cfg
