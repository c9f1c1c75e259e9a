"""Hostile weights, ONNX and fine-tuning files: one line naming the file and exit 2, never a
traceback, never memory out of proportion to the file.

Every case goes through the command line (`reslab.cli.main`, in process) at each entry point
that reads such a file: `eval`, `predict`, `export`, `serve` and `train --set model.pretrained=`.
Two property-based tests mutate the metadata of a real weights file and of a real ONNX export.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from infer_testdata import make_weights
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_run import tiny_synthetic_args

from reslab.cli import main
from reslab.errors import ReslabError
from reslab.weights import load_weights

MODEL = "resnet_cifar_8"  # the smallest registered network: files of ~300 KB


def train_argv(run: Path, pretrained: Path, *overrides: str, model: str = MODEL) -> list[str]:
    """Fine-tune `model` from `pretrained` for an epoch of the tiny synthetic run at 16x16, batch 16."""
    small = ("data.image_size=16", "train.batch_size=16", *overrides, f"model.pretrained={pretrained}")
    return tiny_synthetic_args(run, *small, epochs=1, model=model)


# ---- files -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tiny good weights (RGB and grey), an image, and a real ONNX export."""
    root = tmp_path_factory.mktemp("hostile")
    make_weights(root / "rgb.safetensors", name=MODEL)
    make_weights(root / "grey.safetensors", name=MODEL, in_chans=1)
    Image.new("RGB", (20, 24), (10, 120, 30)).save(root / "image.png")
    assert main(["export", str(root / "rgb.safetensors"), "-o", str(root / "rgb.onnx")]) == 0
    return root


def header(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), load_file(str(path))


def rewrite(
    source: Path,
    out: Path,
    changes: dict | None = None,
    *,
    drop: tuple[str, ...] = (),
    raw: str | None = None,
    tensors: dict | None = None,
) -> Path:
    """A copy of a weights file with its reslab metadata (or tensors) changed, as safetensors writes it."""
    metadata, stored = header(source)
    values = json.loads(metadata["reslab"])
    values.update(changes or {})
    for key in drop:
        values.pop(key)
    metadata["reslab"] = raw if raw is not None else json.dumps(values)
    stored.update(tensors or {})
    save_file(stored, str(out), metadata=metadata)
    return out


def one_line(rc: int, err: str, command: str, path: Path, words: str = "") -> str:
    """The error line, after checking the exit status and that it is the only line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"reslab {command}: error: ") and str(path) in lines[0], err
    assert words.lower() in lines[0].lower(), err
    return lines[0]


# ---- 1. model.pretrained=FILE ------------------------------------------------------------------------


def tensor_pickle(numel: int) -> bytes:
    """data.pkl of torch.save({"conv1.weight": float32 tensor of numel}) with storage key "0"."""

    class Storage:
        pass

    class Rebuild:
        def __reduce__(self):
            args = (Storage, 0, (numel,), (1,), False, collections.OrderedDict())
            return torch._utils._rebuild_tensor_v2, args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is Storage else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"conv1.weight": Rebuild()})
    return buf.getvalue()


def write_zip_bomb(path: Path, mib: int) -> Path:
    """torch.save's zip layout with a deflated tensor of `mib` MiB of zeros (~1000x smaller)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", tensor_pickle(mib << 18))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        with archive.open("archive/data/0", "w", force_zip64=True) as data:
            for _ in range(mib):
                data.write(bytes(1 << 20))
    return path


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def make_pretrained(case: str, files: Path, tmp: Path) -> tuple[Path, str]:
    """(file, a word its error line must hold) for each hostile fine-tuning file."""
    path = tmp / {"evil": "evil.pt", "torchvision34": "resnet34.pth", "zip_bomb": "bomb.pt"}.get(
        case, f"{case}.safetensors"
    )
    if case == "other_channels":
        return files / "grey.safetensors", "(16, 1, 3, 3) vs (16, 3, 3, 3)"
    if case == "garbage_header":
        path.write_bytes(struct.pack("<Q", 24) + b"{this is not JSON at all}" + bytes(16))
        return path, "not a readable safetensors file"
    if case == "oversized_header":  # an 8-byte length field of 1 TiB in front of a 40-byte file
        path.write_bytes(struct.pack("<Q", 1 << 40) + b'{"a": 1}' + bytes(32))
        return path, "not a readable safetensors file"
    if case == "empty":
        path = tmp / "empty.pt"
        path.write_bytes(b"")
        return path, "empty"
    if case == "text":
        path = tmp / "notes.pt"
        path.write_text("these are not weights\n" * 20)
        return path, "neither a torch.save file"
    if case == "evil":
        torch.save({"conv1.weight": RunsCode(tmp / "pwned")}, path)
        return path, "never runs code"
    if case == "torchvision34":
        import torchvision

        torch.save(torchvision.models.resnet34().state_dict(), path)
        return path, "does not fit resnet18"
    if case == "zip_bomb":
        write_zip_bomb(path, 64)
        assert path.stat().st_size < 200_000  # 64 MiB of tensor in a file of ~70 KB
        assert torch.load(path, weights_only=True)["conv1.weight"].numel() == 64 << 18  # a live bomb
        return path, "inflate"
    raise AssertionError(case)


PRETRAINED_CASES = [
    "other_channels",
    "garbage_header",
    "oversized_header",
    "empty",
    "text",
    "evil",
    "torchvision34",
    "zip_bomb",
]


@pytest.mark.parametrize("case", PRETRAINED_CASES)
def test_hostile_pretrained_files_are_one_line(case: str, files: Path, tmp_path: Path, capsys) -> None:
    path, words = make_pretrained(case, files, tmp_path)
    model = "resnet18" if case == "torchvision34" else MODEL
    size = ["data.image_size=32"] if model == "resnet18" else []  # resnet18 needs 32x32 input
    capsys.readouterr()
    rc = main(train_argv(tmp_path / "run", path, *size, model=model))
    one_line(rc, capsys.readouterr().err, "train", path, words)
    assert not (tmp_path / "pwned").exists()


def test_legacy_torch_file_claiming_a_huge_storage_is_one_line(files: Path, tmp_path: Path, capsys) -> None:
    """torch's pre-1.6 format: a 400-byte file whose pickle claims a storage of 8 GB."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    numel = 2_000_000_000
    buf = io.BytesIO()
    for value in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION, "little_endian": True}):
        pickle.dump(value, buf, protocol=2)
    buf.write(tensor_pickle(numel))
    pickle.dump(["0"], buf, protocol=2)
    buf.write(struct.pack("<q", numel) + bytes(64))  # the storage's size, then 64 bytes, not 8 GB
    path = tmp_path / "legacy.pt"
    path.write_bytes(buf.getvalue())
    rc = main(train_argv(tmp_path / "run", path))
    one_line(rc, capsys.readouterr().err, "train", path, "cannot read")


# ---- 2. weights metadata at every entry point ----------------------------------------------------------

WEIGHTS_CASES = {
    "num_classes_2e9": dict(changes={"num_classes": 2_000_000_000, "classes": []}, words="num_classes"),
    "num_classes_float": dict(changes={"num_classes": 2e9, "classes": []}, words="num_classes"),
    "num_classes_text": dict(changes={"num_classes": "10"}, words="num_classes"),
    "input_size_100000": dict(changes={"input_size": 100_000}, words="input_size"),
    "classes_other_length": dict(changes={"classes": ["cat", "dog"]}, words="classes"),
    "missing_in_chans": dict(drop=("in_chans",), words="lacks in_chans"),
    "model_not_a_string": dict(changes={"model": ["resnet20"]}, words="model"),
    "wrn_100000_64": dict(changes={"model": "wrn_100000_64"}, words="limit of 2000"),
    "resnet_cifar_600002": dict(changes={"model": "resnet_cifar_600002"}, words="limit of 2000"),
    "wrn_16_1000": dict(changes={"model": "wrn_16_1000"}, words="limit of 64"),
    "thousand_digit_depth": dict(changes={"model": "resnet_cifar_" + "9" * 1000}, words="limit of 2000"),
    "options_junk": dict(changes={"options": {"drop_rate": "high"}}, words="options"),
    "evaluation_junk": dict(changes={"evaluation": {"precision": 64}}, words="evaluation"),
    "resize_huge": dict(changes={"resize": "shorter-99999999999999-center-crop"}, words="limit of 4096"),
    "nested_json": dict(raw="[" * 100_000 + "]" * 100_000, words="nested too deeply"),
    "not_json": dict(raw="{'model': 'resnet20'", words="damaged"),
    "mean_wrong_shape": dict(tensors={"_preprocess.mean": torch.zeros(3, 2)}, words="_preprocess.mean"),
    "mean_per_pixel_of_another_size": dict(
        tensors={"_preprocess.mean": torch.zeros(3, 1000, 1000), "_preprocess.std": torch.ones(3, 1000, 1000)},
        words="_preprocess.mean",
    ),
    "mean_infinite": dict(tensors={"_preprocess.mean": torch.full((3, 1, 1), float("inf"))}, words="non-finite"),
    "std_zero": dict(tensors={"_preprocess.std": torch.zeros(3, 1, 1)}, words="std <= 0"),
}


def entry_point_argv(command: str, path: Path, files: Path, tmp: Path) -> list[str]:
    return {
        "eval": ["eval", str(path), "--data", "synthetic", "--out", str(tmp / "eval")],
        "predict": ["predict", str(path), str(files / "image.png")],
        "export": ["export", str(path), "-o", str(tmp / "out.onnx")],
        "serve": ["serve", str(path), "--port", "0"],
        "train": train_argv(tmp / "run", path),
    }[command]


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch):
    """`reslab serve` in process: it must fail before serving; the sockets it bound are closed after
    (serve_command binds before loading the model and leaves the socket to process exit)."""
    import reslab.infer.serve as serve

    bound = []

    def bind(host: str, port: int):
        bound.append(real_bind(host, port))
        return bound[-1]

    def run_server(*args, **kwargs) -> None:
        raise AssertionError("a bad file started a server")

    real_bind = serve.bind_socket
    monkeypatch.setattr(serve, "bind_socket", bind)
    monkeypatch.setattr(serve, "run_server", run_server)
    yield
    for sock in bound:
        sock.close()


@pytest.mark.parametrize("command", ["eval", "predict", "export", "serve", "train"])
@pytest.mark.parametrize("case", list(WEIGHTS_CASES))
def test_bad_weights_metadata_at_every_entry_point(
    case: str, command: str, files: Path, tmp_path: Path, capsys, no_server
) -> None:
    spec = dict(WEIGHTS_CASES[case])
    words = spec.pop("words")
    path = rewrite(files / "rgb.safetensors", tmp_path / f"{case}.safetensors", **spec)
    rc = main(entry_point_argv(command, path, files, tmp_path))
    one_line(rc, capsys.readouterr().err, command, path, words)


@pytest.mark.parametrize("command", ["eval", "predict", "export", "serve"])
@pytest.mark.parametrize("case", ["garbage_header", "oversized_header", "empty", "text"])
def test_unreadable_weights_files_at_every_entry_point(
    case: str, command: str, files: Path, tmp_path: Path, capsys, no_server
) -> None:
    path, _ = make_pretrained(case, files, tmp_path)
    path = path.rename(path.with_suffix(".safetensors"))
    rc = main(entry_point_argv(command, path, files, tmp_path))
    one_line(rc, capsys.readouterr().err, command, path, "not a readable safetensors file")


def test_serve_of_bad_weights_exits_at_start(files: Path, tmp_path: Path) -> None:
    """As a user runs it: the process ends by itself, with one line, before listening."""
    path = rewrite(files / "rgb.safetensors", tmp_path / "bad.safetensors", {"model": "wrn_100000_64"})
    proc = subprocess.run(
        [sys.executable, "-m", "reslab", "serve", str(path), "--port", "0"], capture_output=True, text=True, timeout=120
    )
    one_line(proc.returncode, proc.stderr, "serve", path, "limit of 2000")
    assert "listening" not in proc.stdout


# ---- 2b. ONNX metadata ----------------------------------------------------------------------------------

ONNX_CASES = {
    "num_classes_2e9": ({"num_classes": 2_000_000_000, "classes": []}, "num_classes"),
    "num_classes_other_than_the_graph": ({"num_classes": 5, "classes": list("abcde")}, "returns 10 logits"),
    "in_chans_other_than_the_graph": ({"in_chans": 1, "mean": [[[0.5]]], "std": [[[0.5]]]}, "metadata says (B, 1"),
    "input_size_100000": ({"input_size": 100_000}, "input_size"),
    "input_size_other_than_the_graph": ({"input_size": 64}, "metadata says (B, 3, 64, 64)"),
    "classes_other_length": ({"classes": ["a"]}, "classes"),
    "mean_wrong_shape": ({"mean": [0.5, 0.5, 0.5]}, "reslab.mean"),
    "mean_per_pixel_of_another_size": ({"mean": [[[0.5] * 7] * 7] * 3, "std": [[[0.5] * 7] * 7] * 3}, "reslab.mean"),
    "mean_not_finite": ({"mean": [[[float("nan")]]] * 3}, "non-finite"),
    "mean_not_numbers": ({"mean": "grey"}, "numeric"),
    "model_wrn_100000_64": ({"model": "wrn_100000_64"}, "limit of 2000"),
    "model_resnet_cifar_600002": ({"model": "resnet_cifar_600002"}, "limit of 2000"),
    "model_wrong_type": ({"model": 5}, "model"),
    "num_params_text": ({"num_params": "many"}, "num_params"),
    "missing_std": ({"std": None}, "lacks reslab metadata std"),
}


def rewrite_onnx(source: Path, out: Path, changes: dict) -> Path:
    """A copy of an ONNX export with reslab.* metadata_props changed (value None: removed)."""
    import onnx

    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        props.pop(f"reslab.{key}")
        if value is not None:
            props[f"reslab.{key}"] = json.dumps(value)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("command", ["predict", "serve"])
@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_bad_onnx_metadata_at_every_entry_point(
    case: str, command: str, files: Path, tmp_path: Path, capsys, no_server
) -> None:
    changes, words = ONNX_CASES[case]
    path = rewrite_onnx(files / "rgb.onnx", tmp_path / f"{case}.onnx", changes)
    rc = main(entry_point_argv(command, path, files, tmp_path))
    one_line(rc, capsys.readouterr().err, command, path, words)


def test_the_untouched_onnx_export_predicts(files: Path, capsys) -> None:
    """The control: the file the ONNX cases start from is good."""
    assert main(["predict", str(files / "rgb.onnx"), str(files / "image.png")]) == 0
    assert "image.png" in capsys.readouterr().out


# ---- 3. property-based: mutated metadata ----------------------------------------------------------------

SPECIAL_TEXT = [
    "",
    "resnet20",
    MODEL,
    "wrn_100000_64",
    "resnet_cifar_600002",
    "wrn_16_65",
    "resnet_cifar_" + "9" * 5000,
    "stretch",
    "none",
    "shorter-256-center-crop",
    "shorter-99999999-center-crop",
    "fp16",
    "fp64",
    "A",
    "Z",
    "x" * 100_000,
]
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2_000_000_000, 100_000, 100_001, 1024, 1025, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(SPECIAL_TEXT),
)
JUNK = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELD_VALUES = {  # per field, junk plus values near the field's own type, so the checks past the type run
    "options": st.dictionaries(st.sampled_from(["shortcut", "zero_init_last", "drop_rate", "bottleneck", "x"]), JUNK),
    "evaluation": st.dictionaries(st.sampled_from(["tta_flip", "precision", "channels_last", "x"]), JUNK),
    "metrics": st.dictionaries(st.text(max_size=10), JUNK, max_size=3),
    "classes": st.lists(st.text(max_size=3), max_size=12) | st.lists(JUNK, max_size=12),
}
BASE_FIELDS = [
    "model",
    "num_classes",
    "in_chans",
    "options",
    "classes",
    "input_size",
    "resize",
    "dataset",
    "data_dir",
    "data_sha256",
    "metrics",
    "evaluation",
    "command",
    "reslab_version",
]


@st.composite
def metadata_mutations(draw: st.DrawFn) -> tuple[str, str, object]:
    """(action, field, value): replace, remove or add one field of the metadata, or replace all
    of its text ("raw")."""
    action = draw(st.sampled_from(["replace", "replace", "replace", "remove", "add", "raw"]))
    if action == "raw":
        return action, "", draw(st.text(max_size=40) | JUNK.map(json.dumps) | st.sampled_from(["[" * 50_000, "{}"]))
    if action == "add":
        return action, draw(st.text(min_size=1, max_size=12)), draw(JUNK)
    name = draw(st.sampled_from(BASE_FIELDS))
    return action, name, draw(FIELD_VALUES.get(name, JUNK) | JUNK)


def mutated_file(files: Path, out: Path, mutation: tuple[str, str, object]) -> Path:
    """The tiny weights file with its metadata text after one mutation."""
    source = files / "rgb.safetensors"
    action, name, value = mutation
    raw = str(value)
    if action != "raw":
        values = json.loads(header(source)[0]["reslab"])
        if action == "remove":
            values.pop(name)
        else:
            values[name] = value
        raw = json.dumps(values)
    return rewrite(source, out, raw=raw)


FUZZ = settings(
    derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@settings(FUZZ, max_examples=200)
@given(mutation=metadata_mutations())
def test_load_weights_of_mutated_metadata_returns_or_refuses(mutation, files: Path, tmp_path: Path) -> None:
    path = mutated_file(files, tmp_path / "fuzzed.safetensors", mutation)
    try:
        load_weights(path)
    except ReslabError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 2000, str(exc)[:500]


@settings(FUZZ, max_examples=16)
@given(mutation=metadata_mutations(), command=st.sampled_from(["predict", "predict", "predict", "eval"]))
def test_cli_on_mutated_metadata_exits_cleanly(mutation, command: str, files: Path, tmp_path: Path, capsys) -> None:
    path = mutated_file(files, tmp_path / "fuzzed.safetensors", mutation)
    capsys.readouterr()
    rc = main(entry_point_argv(command, path, files, tmp_path))
    err = capsys.readouterr().err
    assert rc in ((0, 1, 2) if command == "predict" else (0, 2)), err
    assert "Traceback" not in err
    if rc == 2:
        one_line(rc, err, command, path)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_read_onnx_meta_of_mutated_props_returns_or_refuses(data: st.DataObject, files: Path) -> None:
    from reslab.infer.backends import read_onnx_meta

    props = onnx_props(files / "rgb.onnx")
    key = data.draw(st.sampled_from(sorted(props) + ["reslab.x", "reslab.mean", "reslab.std"]))
    action = data.draw(st.sampled_from(["json", "json", "text", "remove"]))
    if action == "remove":
        props.pop(key, None)
    elif action == "text":
        props[key] = data.draw(st.text(max_size=30) | st.sampled_from(SPECIAL_TEXT))
    else:
        props[key] = json.dumps(data.draw(JUNK | FIELD_VALUES.get(key.removeprefix("reslab."), JUNK)))
    try:
        read_onnx_meta(props, "fuzzed.onnx")
    except ReslabError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 2000, str(exc)[:500]


_PROPS: dict[Path, dict[str, str]] = {}


def onnx_props(path: Path) -> dict[str, str]:
    """A fresh copy of an ONNX file's metadata_props (read once)."""
    if path not in _PROPS:
        import onnx

        _PROPS[path] = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return dict(_PROPS[path])
