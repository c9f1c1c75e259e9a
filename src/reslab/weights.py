"""Portable weights: one .safetensors file that rebuilds a network and its preprocessing.

Layout: the model's state dict under its own keys, the input normalisation as the two tensors
`_preprocess.mean` and `_preprocess.std` (in units of pixel/255, shape (C, 1, 1) per channel or
(C, H, W) per pixel), and a JSON document in the safetensors metadata under "reslab" that names
the architecture, the classes and how images were prepared. safetensors holds tensors and
strings only, so loading one never runs code.

`load_weights` returns a `Weights`: the model, its `WeightsMeta` and its `NormStats`, with the
`Preprocess` record that every consumer (evaluation, predict, serve, export) prepares images by.
Everything read from a file is checked before use: metadata types and ranges, tensor names and
shapes against the architecture (built on the "meta" device first, so a file that claims a huge
network allocates nothing), and the normalisation's shape and values.
"""

from __future__ import annotations

import json
import reprlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from reslab.atomic import atomic_write_bytes
from reslab.data.norm import NormStats
from reslab.data.preprocess import Preprocess, check_resize
from reslab.errors import CheckpointError, ReslabError
from reslab.hub import HF_HUB, fetch_hub_weights, is_hub_spec
from reslab.models import ResNet, create_model
from reslab.models.ensemble import Ensemble
from reslab.models.registry import OPTIONS, model_info
from reslab.rundir import RunDir
from reslab.vocab import PRECISIONS, SHORTCUTS

FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
MEAN_KEY, STD_KEY = "_preprocess.mean", "_preprocess.std"

# Bounds on what metadata may claim, far above any real network, so a small file cannot make
# reslab allocate gigabytes before its tensors are compared with the architecture.
MAX_CLASSES = 100_000
MAX_INPUT_SIZE = 1024
MAX_IN_CHANS = 16
MAX_META_BYTES = 16 * 1024 * 1024  # of the JSON metadata (class names of 100k classes fit)
# What `reslab calibrate` may store as the temperature: outside it the softmax would be nearly
# one-hot (T -> 0) or nearly uniform (T -> inf), which no useful fit produces.
TEMPERATURE_RANGE = (0.05, 20.0)
MAX_MEMBERS = 20  # networks in an ensemble (--folds allows 20)


@dataclass
class WeightsMeta:
    model: str  # registry name
    num_classes: int
    in_chans: int
    options: dict[str, Any] = field(default_factory=dict)  # create_model options (shortcut, ...)
    classes: list[str] = field(default_factory=list)  # names, index = class id
    input_size: int = 32  # images are resized / cropped to input_size x input_size
    resize: str = "shorter-center-crop"  # how a photo of another size is brought to input_size
    dataset: str = ""  # what the weights were trained on
    data_dir: str = ""  # where that dataset's files were ("" = the default search path)
    data_sha256: str = ""  # SHA-256 over the dataset's source files (train + test); "listing:..." for streamed trees
    # e.g. {"test_top1_error": 0.08, "eval_tta_flip": 1.0}; eval_tta_flip = 1.0 when the test
    # metrics averaged the logits of each image and its mirror (`reslab eval --tta flip`)
    metrics: dict[str, float] = field(default_factory=dict)
    # how the metrics were measured: {"tta_flip": bool, "precision": "fp32", "channels_last": bool}
    evaluation: dict[str, Any] = field(default_factory=dict)
    command: str = ""  # the command that produced them
    reslab_version: str = ""
    # `reslab calibrate`: eval, predict, serve and exported files' users divide the logits by this
    # before the softmax (1.0: uncalibrated). It rescales confidence only: the top-1 class is unchanged.
    temperature: float = 1.0
    # how it was fitted: {"part": "val", "dataset": ..., "images": n, "nll_before": ..., "nll_after": ...}
    temperature_fit: dict[str, Any] = field(default_factory=dict)
    # An ensemble of K networks of this architecture (`reslab train --folds K --ensemble`,
    # reslab.models.ensemble): each member's temperature, in order; empty for one network. Member
    # k's tensors are "members.k.*", its input normalisation "_members.k.mean" / "_members.k.std".
    members: list[float] = field(default_factory=list)

    @property
    def ensemble(self) -> int:
        """Networks in the file: K for an ensemble, else 0."""
        return len(self.members)

    @property
    def tta_flip(self) -> bool:
        """Whether the recorded metrics were measured with flip test-time augmentation."""
        return bool(self.evaluation.get("tta_flip", self.metrics.get("eval_tta_flip", 0.0)))

    @property
    def calibrated(self) -> bool:
        """Whether `reslab calibrate` stored a temperature with these weights."""
        return bool(self.temperature_fit) or self.temperature != 1.0

    @property
    def dataset_name(self) -> str:
        """The dataset's registry name ("imagefolder:/data/x" -> "imagefolder")."""
        return self.dataset.split(":")[0].split()[0] if self.dataset.strip() else ""

    @property
    def class_names(self) -> list[str]:
        """One name per output; ids where the file names none."""
        return list(self.classes) + [str(i) for i in range(len(self.classes), self.num_classes)]

    @classmethod
    def from_json(cls, raw: str, where: str) -> WeightsMeta:
        """Parse and check the "reslab" metadata; a CheckpointError names the field and the file."""
        if len(raw) > MAX_META_BYTES:
            raise CheckpointError(f"{where}: its reslab metadata is {len(raw):,} bytes, over {MAX_META_BYTES:,}")
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{where} has damaged reslab metadata ({exc})") from None
        except RecursionError:
            raise CheckpointError(f"{where} has damaged reslab metadata (nested too deeply)") from None
        if not isinstance(values, dict):
            raise CheckpointError(f"{where}: its reslab metadata is not a JSON object")
        return cls.from_values(values, where)

    @classmethod
    def from_values(cls, values: dict[str, Any], where: str) -> WeightsMeta:
        """From a mapping of field values (unknown keys ignored), checked by `check`."""
        missing = [k for k in ("model", "num_classes", "in_chans") if k not in values]
        if missing:
            raise CheckpointError(f"{where}: its reslab metadata lacks {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        meta = cls(**{k: v for k, v in values.items() if k in known})
        meta.check(where)
        return meta

    def check(self, where: str) -> None:
        """Types and ranges of every field, so later code may trust them; the first wrong one
        raises a CheckpointError naming `where`, the field and what it should be."""
        self._check_architecture(where)
        self._check_records(where)
        self._check_calibration(where)
        for name in ("resize", "dataset", "data_dir", "data_sha256", "command", "reslab_version"):
            if not isinstance(getattr(self, name), str):
                raise self._bad(where, name, "a string")
        try:
            check_resize(self.resize, self.input_size)
        except ReslabError as exc:
            raise CheckpointError(f"{where}: metadata {exc}") from None

    def _bad(self, where: str, name: str, what: str) -> CheckpointError:
        """The error for field `name`, its value shortened: it may be megabytes."""
        return CheckpointError(f"{where}: metadata {name}={reprlib.repr(getattr(self, name))} is not {what}")

    def _check_integer(self, where: str, name: str, low: int, high: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._bad(where, name, f"an integer in [{low}, {high}]")

    def _check_architecture(self, where: str) -> None:
        """What the network is built from: model name, sizes, create_model options."""
        if not isinstance(self.model, str) or not self.model:
            raise self._bad(where, "model", "a model name")
        try:  # the name only: bounds on depth and width, nothing is built (ONNX files name one too)
            model_info(self.model)
        except ReslabError as exc:
            raise CheckpointError(f"{where}: metadata names a model reslab cannot build ({exc})") from None
        self._check_integer(where, "num_classes", 1, MAX_CLASSES)
        self._check_integer(where, "in_chans", 1, MAX_IN_CHANS)
        self._check_integer(where, "input_size", 1, MAX_INPUT_SIZE)
        if not isinstance(self.options, dict) or set(self.options) - set(OPTIONS) or not _valid_options(self.options):
            raise self._bad(
                where,
                "options",
                f"a mapping of {', '.join(OPTIONS)} (shortcut one of {', '.join(SHORTCUTS)}, "
                "zero_init_last true/false, drop_rate and drop_path_rate numbers in [0, 1))",
            )

    def _check_records(self, where: str) -> None:
        """The class names and what the metrics say and were measured with."""
        if not isinstance(self.classes, list) or not all(isinstance(c, str) for c in self.classes):
            raise self._bad(where, "classes", "a list of names")
        if self.classes and len(self.classes) != self.num_classes:
            raise self._bad(where, "classes", f"{self.num_classes} names (num_classes)")
        if not isinstance(self.metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in self.metrics.items()
        ):
            raise self._bad(where, "metrics", "a mapping of names to numbers")
        if not isinstance(self.evaluation, dict) or not _valid_evaluation(self.evaluation):
            raise self._bad(
                where,
                "evaluation",
                f"a mapping of tta_flip and channels_last (true/false) and precision ({', '.join(PRECISIONS)})",
            )

    def _check_calibration(self, where: str) -> None:
        """The temperature `reslab calibrate` stored, and the record of its fit."""
        low, high = TEMPERATURE_RANGE
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not low <= t <= high:  # NaN fails too
            raise self._bad(
                where, "temperature", f"a number in [{low:g}, {high:g}] (fit it again with `reslab calibrate`)"
            )
        if not isinstance(self.temperature_fit, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in self.temperature_fit.items()
        ):
            raise self._bad(where, "temperature_fit", "a mapping of names to strings or numbers")
        members = self.members
        if not isinstance(members, list) or (members and not 2 <= len(members) <= MAX_MEMBERS):
            raise self._bad(where, "members", f"a list of 2 to {MAX_MEMBERS} temperatures (or empty)")
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and low <= t <= high for t in members):
            raise self._bad(where, "members", f"temperatures in [{low:g}, {high:g}]")


def _valid_options(options: dict[str, Any]) -> bool:
    """create_model options of the right types (the names are checked by the caller)."""
    drops = [options.get(name, 0.0) for name in ("drop_rate", "drop_path_rate")]
    return (
        options.get("shortcut", "A") in SHORTCUTS
        and isinstance(options.get("zero_init_last", False), bool)
        and all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1 for p in drops)
    )


def _valid_evaluation(evaluation: dict[str, Any]) -> bool:
    """The settings the metrics were measured with; `reslab eval` of a bare file reuses them."""
    return (
        isinstance(evaluation.get("tta_flip", False), bool)
        and isinstance(evaluation.get("channels_last", False), bool)
        and evaluation.get("precision", "fp32") in PRECISIONS
    )


@dataclass
class Weights:
    """A network with everything needed to use it: metadata, normalisation, where it came from."""

    model: ResNet | Ensemble  # in eval mode (an Ensemble when meta.members names several networks)
    meta: WeightsMeta
    stats: NormStats  # the uint8 -> float affine of its inputs
    path: Path | None = None

    @property
    def preprocess(self) -> Preprocess:
        """How an image becomes this network's input (the single source of truth for every consumer)."""
        return Preprocess(self.meta.in_chans, self.meta.input_size, self.meta.resize, self.stats)

    def to(self, device: str | torch.device) -> Weights:
        return Weights(self.model.to(device), self.meta, self.stats.to(device), self.path)


def save_weights(path: str | Path, model: ResNet, meta: WeightsMeta, stats: NormStats) -> Path:
    """Write weights atomically (see reslab.atomic)."""
    from reslab import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta.reslab_version = meta.reslab_version or __version__
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors[MEAN_KEY] = stats.mean.detach().to("cpu", torch.float32).contiguous()
    tensors[STD_KEY] = stats.std.detach().to("cpu", torch.float32).contiguous()
    payload = save(tensors, metadata={"reslab": json.dumps(asdict(meta)), "format": str(FORMAT_VERSION)})
    atomic_write_bytes(path, payload)
    return path


def write_meta(source: str | Path, meta: WeightsMeta, out: str | Path | None = None) -> Path:
    """The weights file `source` with its reslab metadata replaced by `meta` (checked first) and its
    tensors as they are, written atomically over `source`, or to `out` when given (`reslab calibrate`)."""
    source = Path(source)
    target = Path(out) if out is not None else source
    meta.check(str(target))
    metadata, _ = _open(source)
    try:
        tensors = load_file(str(source), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source} is damaged ({exc})") from None
    payload = save(tensors, metadata={**metadata, "reslab": json.dumps(asdict(meta))})
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, payload)
    return target


def shipped_names() -> list[str]:
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))


def resolve_weights(source: str | Path) -> Path:
    """A weights path from a file, a run directory (its weights.safetensors), a shipped name, or a
    Hugging Face Hub repository `hf-hub:USER/NAME[@REVISION]` (through the Hub's cache, see
    reslab.hub). Every consumer (eval, predict, export, serve, embed, model.pretrained) comes here."""
    if is_hub_spec(source):
        return fetch_hub_weights(str(source))
    path = Path(source)
    if path.is_dir():
        run = RunDir(path)
        if run.weights.is_file():
            return run.weights
        raise CheckpointError(f"{path} holds no {run.weights.name}; is it a finished reslab run directory?")
    if path.is_file():
        return path
    shipped = PRETRAINED_DIR / f"{source}.safetensors"
    if shipped.is_file():
        return shipped
    raise CheckpointError(
        f"no weights at {source!r}: not a file, a run directory, a shipped name "
        f"(shipped: {', '.join(shipped_names()) or 'none'}) or {HF_HUB}USER/NAME"
    )


def _open(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, list[int]]]]:
    """(metadata, {tensor name: (dtype, shape)}) from the header, without reading any tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {}
            for key in f.keys():
                sliced = f.get_slice(key)
                shapes[key] = (sliced.get_dtype(), list(sliced.get_shape()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({first})") from None
    return metadata, shapes


def is_reslab_weights(path: str | Path) -> bool:
    """Whether a .safetensors file carries reslab metadata (a CheckpointError if it is unreadable)."""
    return "reslab" in _open(Path(path))[0]


def read_meta(source: str | Path) -> WeightsMeta:
    path = resolve_weights(source)
    metadata, _ = _open(path)
    raw = metadata.get("reslab")
    if raw is None:
        raise CheckpointError(f"{path} has no reslab metadata; for torchvision weights use --set model.pretrained=...")
    return WeightsMeta.from_json(raw, str(path))


def _check_stats_shapes(path: Path, meta: WeightsMeta, shapes: dict[str, tuple[str, list[int]]]) -> None:
    """The input normalisation's tensors (and each ensemble member's) are there, with their shapes."""
    for key in (MEAN_KEY, STD_KEY):
        if key not in shapes:
            raise CheckpointError(f"{path} lacks the tensor {key} (its input normalisation)")
        dims = shapes[key][1]
        size = meta.input_size
        if len(dims) != 3 or dims[0] != meta.in_chans or tuple(dims[1:]) not in ((1, 1), (size, size)):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(dims)}, expected ({meta.in_chans}, 1, 1) per channel "
                f"or ({meta.in_chans}, {size}, {size}) per pixel (in_chans, input_size)"
            )
    for k in range(meta.ensemble):
        for key, like in zip(member_stats_keys(k), (MEAN_KEY, STD_KEY), strict=True):
            if key not in shapes or shapes[key][1] != shapes[like][1]:
                raise CheckpointError(f"{path}: ensemble member {k} lacks {key} of shape {tuple(shapes[like][1])}")


def _check_tensors(path: Path, meta: WeightsMeta, shapes: dict[str, tuple[str, list[int]]]) -> None:
    """The file's tensors against the architecture its metadata names, built on the meta device."""
    _check_stats_shapes(path, meta, shapes)
    try:
        with torch.device("meta"):
            skeleton = create_model(meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.options)
    except ReslabError as exc:
        raise CheckpointError(f"{path}: its metadata names a network reslab cannot build ({exc})") from None
    if meta.input_size < skeleton.min_input_size:
        raise CheckpointError(
            f"{path}: metadata input_size={meta.input_size} is below the {skeleton.min_input_size} pixels "
            f"that {meta.model} needs"
        )
    expected = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    if meta.ensemble:
        expected = {f"members.{m}.{k}": dims for m in range(meta.ensemble) for k, dims in expected.items()}
    stats_keys = {MEAN_KEY, STD_KEY, *(key for m in range(meta.ensemble) for key in member_stats_keys(m))}
    stored = {k: dims for k, (_, dims) in shapes.items() if k not in stats_keys}
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    wrong = [k for k in expected.keys() & stored.keys() if expected[k] != stored[k]]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what} {items[:3]}"
            for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", sorted(wrong)))
            if items
        )
        raise CheckpointError(f"{path} does not match {meta.model} as its metadata describes it: {detail}")


def load_weights(source: str | Path, device: str | torch.device = "cpu") -> Weights:
    """The `Weights` of a weights file, run directory or shipped name, checked (see the module docstring)."""
    path = resolve_weights(source)
    metadata, shapes = _open(path)
    raw = metadata.get("reslab")
    if raw is None:
        raise CheckpointError(f"{path} has no reslab metadata; for torchvision weights use --set model.pretrained=...")
    meta = WeightsMeta.from_json(raw, str(path))
    _check_tensors(path, meta, shapes)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc})") from None
    stats = _stats(path, tensors, MEAN_KEY, STD_KEY)
    if meta.ensemble:
        model = _ensemble(path, meta, tensors)
    else:
        model = create_model(meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.options)
        _load_state(path, meta, model, tensors)
    model.eval()
    return Weights(model.to(device), meta, stats.to(device), path)


def one_network(weights: Weights, needs: str) -> ResNet:
    """The network of `weights`, which `needs` (Grad-CAM, embeddings, fine-tuning) one of: an
    ensemble is refused in one line that names a member's file."""
    if weights.meta.ensemble:
        raise CheckpointError(
            f"{weights.path} is an ensemble of {weights.meta.ensemble} networks, and {needs} needs one network: "
            "give one fold's weights (RUN/fold-1/weights.safetensors)"
        )
    return weights.model


def member_stats_keys(k: int) -> tuple[str, str]:
    """The tensors of ensemble member k's input normalisation."""
    return f"_members.{k}.mean", f"_members.{k}.std"


def _stats(path: Path, tensors: dict[str, torch.Tensor], mean_key: str, std_key: str) -> NormStats:
    """The normalisation popped from `tensors`, checked."""
    mean, std = tensors.pop(mean_key).float(), tensors.pop(std_key).float()
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError(f"{path}: its normalisation holds non-finite values or a std <= 0")
    return NormStats(mean, std)


def _load_state(path: Path, meta: WeightsMeta, model: ResNet, tensors: dict[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match {meta.model}: {str(exc).splitlines()[0]}") from None


def _ensemble(path: Path, meta: WeightsMeta, tensors: dict[str, torch.Tensor]) -> Ensemble:
    """An ensemble file's members, each with its own normalisation and temperature, as one network."""
    members, stats = [], []
    for k in range(meta.ensemble):
        stats.append(_stats(path, tensors, *member_stats_keys(k)))
        prefix = f"members.{k}."
        own = {key[len(prefix) :]: t for key, t in tensors.items() if key.startswith(prefix)}
        member = create_model(meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.options)
        _load_state(path, meta, member, own)
        members.append(member)
    return Ensemble(members, [(st.mean, st.std) for st in stats], list(meta.members))


def save_ensemble(path: str | Path, members: list[Weights], meta: WeightsMeta) -> Path:
    """Write `members` (one architecture, input and classes) as one ensemble weights file, atomically;
    `meta` describes the whole (its `members` are set here from the members' temperatures)."""
    from reslab import __version__

    first = members[0].meta
    for w in members[1:]:
        same = (w.meta.model, w.meta.num_classes, w.meta.in_chans, w.meta.options, w.meta.input_size, w.meta.resize)
        if same != (first.model, first.num_classes, first.in_chans, first.options, first.input_size, first.resize):
            raise CheckpointError(f"{w.path}: an ensemble's members must share architecture, classes and input")
    meta.members = [float(w.meta.temperature) for w in members]
    meta.reslab_version = meta.reslab_version or __version__
    meta.check(str(path))
    tensors = {
        f"members.{k}.{key}": v.detach().to("cpu").contiguous()
        for k, w in enumerate(members)
        for key, v in w.model.state_dict().items()
    }
    for k, w in enumerate(members):
        mean_key, std_key = member_stats_keys(k)
        tensors[mean_key] = w.stats.mean.detach().to("cpu", torch.float32).contiguous()
        tensors[std_key] = w.stats.std.detach().to("cpu", torch.float32).contiguous()
    tensors[MEAN_KEY], tensors[STD_KEY] = (
        tensors[member_stats_keys(0)[0]].clone(),
        tensors[member_stats_keys(0)[1]].clone(),
    )
    payload = save(tensors, metadata={"reslab": json.dumps(asdict(meta)), "format": str(FORMAT_VERSION)})
    atomic_write_bytes(Path(path), payload)
    return Path(path)
