"""JSON files as dataclasses: the writer fills one, every reader parses the file back into the same type.

A file format is a type (STYLE.md): `to_json(record)` is the JSON value of a dataclass and
`from_json(Type, value)` builds one back from parsed JSON by the type hints of its fields, so
the writer and the readers cannot drift apart. Hints understood: str, int, float (an int is a
float), bool, None, list[T], dict[str, T], unions (`X | None`, `str | Record`), nested dataclasses,
and `object` (any JSON value, kept as is).

Reading is lenient where files differ by age and strict where they are damaged: a key the type
does not know is ignored (a file from a newer reslab), a missing key takes its field's default
(an older one), and a value of the wrong type, or one a field's check refuses, is a `RecordError`
naming its key path (`curves['plain-8'].train.steps are not increasing`). Fields are read in the
order they are declared, and a field's check sees the fields read before it (milestones within
the iterations). Whoever owns the file turns the error into one line naming the file.

Field options (`field(metadata=...)`, built by `checked` and `optional`):
    check      (value, earlier fields) -> what is wrong ("is not ...") or None
    key        the JSON key when it is not a Python name ("1-crop")
    omit_none  a None value is left out of the file (an optional key, as older files have it)
    read       applied to the raw JSON value first (NaN read as None)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

R = TypeVar("R")
Check = Callable[[typing.Any, Mapping[str, object]], "str | None"]

_repr = reprlib.Repr()  # keyword arguments need Python 3.12
_repr.maxstring = _repr.maxother = _repr.maxlist = 60
short = _repr.repr  # a value from a file, quoted and cut short for a one-line message

TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


class RecordError(ValueError):
    """A file's content does not fit its type: `key` (a path such as table[0].model, or "" for the
    whole file) and `what` is wrong with it ("is not a list")."""

    def __init__(self, key: str, what: str) -> None:
        super().__init__(f"{key} {what}".strip())
        self.key, self.what = key, what

    def about(self, file: Path | str) -> str:
        """The problem as said of `file`: "F is not valid JSON (...)", "F: table is not a list"."""
        return f"{file}: {self.key} {self.what}" if self.key else f"{file} {self.what}"


def checked(
    test: Callable[[typing.Any], bool],
    what: str,
    *,
    read: Callable[[object], object] | None = None,
    **kwargs: typing.Any,
) -> typing.Any:
    """A dataclass field whose value must pass `test` (else "KEY `what`"), its raw JSON value passed
    through `read` first if given; kwargs as for `dataclasses.field`."""
    extra = {"read": read} if read else {}
    return _field(kwargs, check=lambda value, _: None if test(value) else what, **extra)


def optional(**kwargs: typing.Any) -> typing.Any:
    """A field that is None by default and left out of the file while it is None."""
    return _field({"default": None, **kwargs}, omit_none=True)


def _field(kwargs: dict[str, typing.Any], **metadata: object) -> typing.Any:
    metadata = {**kwargs.pop("metadata", {}), **metadata}
    return dataclasses.field(metadata=metadata, **kwargs)


# ---- writing -------------------------------------------------------------------------------------


def to_json(value: object) -> object:
    """The JSON value of a record (nested records, lists and dicts included), fields in declaration order."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if not (item is None and f.metadata.get("omit_none")):
                out[f.metadata.get("key", f.name)] = to_json(item)
        return out
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def dumps(record: object, indent: int = 1) -> bytes:
    """The file's bytes (NaN written as JSON's NaN, as `json.dumps` does: Python reads it back)."""
    return json.dumps(to_json(record), indent=indent).encode()


# ---- reading -------------------------------------------------------------------------------------


def load_json(path: Path, max_bytes: int | None = None) -> object:
    """Parsed JSON of `path`; unreadable, too large or not JSON is a RecordError about the whole file."""
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise RecordError("", f"is {size:,} bytes, over the {max_bytes:,} a {path.name} may have")
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecordError("", f"cannot be read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit int, [[[[...
        raise RecordError("", f"is not valid JSON ({short(str(exc))})") from None


def load_record(cls: type[R], path: Path, error: type[Exception], hint: str) -> R | None:
    """The `cls` record in `path`, or None when there is no such file; a damaged one is an `error`
    of one line naming the file, then `hint` (what to do about it)."""
    if not path.is_file():
        return None
    try:
        return from_json(cls, load_json(path))
    except RecordError as exc:
        raise error(f"{exc.about(path)}; {hint}") from None


def from_json(cls: type[R], value: object, key: str = "") -> R:
    """A `cls` record from parsed JSON `value` (see the module docstring); a RecordError names what does not fit."""
    if not isinstance(value, dict):
        raise RecordError(key, "is not an object")
    hints = _hints(cls)
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f.metadata.get("key", f.name)
        sub = f"{key}.{name}" if key else name
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if name not in value and has_default:
            continue
        raw = value.get(name)  # a missing key reads as null: "table is not a list"
        if "read" in f.metadata:
            raw = f.metadata["read"](raw)
        parsed = _parse(hints[f.name], raw, sub)
        if parsed is not None and "check" in f.metadata:
            try:
                what = f.metadata["check"](parsed, kwargs)
            except RecordError as exc:  # a check that names a part of the value: curves['x'].train.steps
                raise RecordError(f"{sub}{exc.key}", exc.what) from None
            if what:
                raise RecordError(sub, what)
        kwargs[f.name] = parsed
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _parse(hint: object, raw: object, key: str) -> object:
    """`raw` as the type `hint` says, or a RecordError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _parse_union(args, raw, key)
    if origin is list:
        if not isinstance(raw, list):
            raise RecordError(key, "is not a list")
        return [_parse(args[0], item, f"{key}[{i}]") for i, item in enumerate(raw)]
    if origin is dict:
        if not isinstance(raw, dict):
            raise RecordError(key, "is not an object")
        return {str(k): _parse(args[1], v, f"{key}[{short(k)}]") for k, v in raw.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, raw, key)
    if hint is object:
        return raw
    return _parse_scalar(hint, raw, key)


def _parse_union(args: tuple[object, ...], raw: object, key: str) -> object:
    if raw is None and type(None) in args:
        return None
    first: RecordError | None = None
    for arg in (a for a in args if a is not type(None)):
        try:
            return _parse(arg, raw, key)
        except RecordError as exc:
            first = first or exc
    assert first is not None  # a union has at least one member besides None
    raise first


def _parse_scalar(hint: object, raw: object, key: str) -> object:
    """str, int, float (an int too), bool, None: bool is not taken for a number."""
    number = isinstance(raw, int | float) and not isinstance(raw, bool)
    fits = {
        int: isinstance(raw, int) and not isinstance(raw, bool),
        float: number,
        str: isinstance(raw, str),
        bool: isinstance(raw, bool),
        type(None): raw is None,
    }
    if hint not in fits:
        raise TypeError(f"records cannot read a field of type {hint!r}")  # a bug in a record type
    if not fits[hint]:
        raise RecordError(key, f"is not {TYPE_WORDS[hint]}")
    return raw
