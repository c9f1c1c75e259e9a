"""Local paths out of what `reslab push` publishes.

A weights file records where it came from on the machine that trained it: the data source
("imagefolder:/home/me/photos"), data_dir, and the training command with its --data-dir and
--run-dir. A public repository says what the data is (reslab.infer.publish names it by kind,
folder name, image count and checksum) but not where it lived, so every absolute path in a
published string is replaced by a placeholder that says what it was:

    /home/me/photos/train            -> DATA_DIR/train       (a path push knows: `LocalPaths`)
    --run-dir /home/me/runs/x        -> --run-dir RUN_DIR    (named after the option before it)
    --set data.cache_dir=/scratch/c  -> --set data.cache_dir=CACHE_DIR   (after the key)
    imagefolder:/mnt/elsewhere       -> imagefolder:PATH     (nothing to name it by)

Relative paths stay: they say nothing about the machine. `redact` works on any string;
`public_meta` applies it to a weights file's metadata, naming the data by kind and folder name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from reslab.weights import WeightsMeta

PATH = "PATH"  # the placeholder of an absolute path with nothing to name it by
# The placeholders of the two folders a run records: its data and the run directory itself.
DATA_DIR, RUN_DIR = "DATA_DIR", "RUN_DIR"
# Absolute on some machine: /..., ~ (a home the shell did not expand), C:\ or C:/, \\server\share.
_ABSOLUTE = re.compile(r"/|~|[A-Za-z]:[\\/]|\\\\")
_KIND = re.compile(r"[\w.+-]+")  # the `imagefolder` of "imagefolder:/data/x"
_SPACE = re.compile(r"(\s+)")
# What may stand before and after a path inside a longer string: "--data-dir /x", "key=/x",
# "imagefolder:/x", "'/x'"; after it a sub-path ("/x/train"), the end, a quote or a separator.
_BEFORE, _AFTER = r"(?<![^\s=:'\"])", r"(?=$|[\s/\\'\",;:)])"


def is_local_path(text: str) -> bool:
    """Whether `text` is an absolute path (of this machine or another): it names a place."""
    return bool(_ABSOLUTE.match(text))


def folder_name(path: str) -> str:
    """The last component of a POSIX or Windows path: "/home/me/photos/" -> "photos"."""
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1]


def placeholder(name: str) -> str:
    """A placeholder named after an option or a config key: --data-dir -> DATA_DIR,
    data.cache_dir -> CACHE_DIR; PATH for a one-letter option."""
    word = re.sub(r"[^A-Za-z0-9]+", "_", name.rsplit(".", 1)[-1]).strip("_").upper()
    return word if len(word) > 1 else PATH  # -o /x/feats.npy -> -o PATH


@dataclass(frozen=True)
class LocalPaths:
    """Absolute paths whose meaning push knows, each with its placeholder (the data folder ->
    DATA_DIR, the run directory -> RUN_DIR), replaced wherever they appear, sub-paths included."""

    named: tuple[tuple[str, str], ...] = ()  # (absolute path, placeholder), longest path first

    @classmethod
    def of(cls, paths: Mapping[str, Iterable[str | Path]]) -> LocalPaths:
        """From placeholder -> paths as recorded; each is also known by its absolute and its
        resolved (symlink-free) form, so "runs/x" and "/home/me/runs/x" both become RUN_DIR."""
        pairs: set[tuple[str, str]] = set()
        for name, recorded in paths.items():
            for path in map(str, recorded):
                if not path:
                    continue
                expanded = Path(path).expanduser()
                for form in (path, os.path.abspath(expanded), str(expanded.resolve())):
                    form = form.rstrip("\\/")
                    if is_local_path(form) and not _top_level(form):
                        pairs.add((form, name))
        return cls(tuple(sorted(pairs, key=lambda pair: (-len(pair[0]), pair))))

    def replace(self, text: str) -> str:
        """`text` with each known path (and each path under it) replaced by its placeholder."""
        for path, name in self.named:
            text = re.sub(_BEFORE + re.escape(path) + _AFTER, name, text)
        return text


def _top_level(path: str) -> bool:
    """Whether `path` is a root or a folder right under one ("/", "/tmp", "C:\\"): too short to stand
    for one place, replacing it would mangle every path under it."""
    return len(re.split(r"[\\/]+", os.path.expanduser(path).strip("\\/"))) < 2


def redact(text: str, known: LocalPaths | None = None) -> str:
    """`text` (a command line, or any recorded string) with every absolute path replaced: the
    known ones by their names, the others word by word (see the module docstring). Words and
    the spaces between them are kept as they were, so a command without local paths is unchanged."""
    words = _SPACE.split((known or LocalPaths()).replace(text))  # words at even indices, spaces between
    option: str | None = None  # the word before, when it is an option that takes a value
    for i in range(0, len(words), 2):
        word = words[i]
        words[i] = _redact_word(word, option)
        option = word if word.startswith("-") and "=" not in word else None
    return "".join(words)


def _redact_word(word: str, option: str | None) -> str:
    """One word of a command: a path itself (named after `option`), or the value of KEY=VALUE
    (named after KEY) or of KIND:VALUE; quotes, brackets and commas around it are kept."""
    bare = word.strip("'\"()[],;")
    if bare and bare != word:
        start = word.index(bare)
        return word[:start] + _redact_word(bare, option) + word[start + len(bare) :]
    if is_local_path(word):
        return placeholder(option) if option else PATH
    key, equals, value = word.partition("=")
    if equals and key:
        return f"{key}={_redact_word(value, key)}"
    kind, colon, value = word.partition(":")
    if colon and _KIND.fullmatch(kind) and is_local_path(value) and not value.startswith("//"):  # not a URL
        return f"{kind}:{_redact_word(value, option)}"
    return word


def data_location(meta: WeightsMeta) -> str:
    """Where the weights say their data was: the source's own path ("imagefolder:/x" -> "/x"),
    else data_dir ("" : the default search path)."""
    _, colon, where = meta.dataset.partition(":")
    return where.strip() if colon and where.strip() else meta.data_dir


def local_paths(meta: WeightsMeta, run: Path | None) -> LocalPaths:
    """The folders whose meaning push knows: the data (DATA_DIR) and the run pushed (RUN_DIR)."""
    return LocalPaths.of({DATA_DIR: [meta.data_dir, data_location(meta)], RUN_DIR: [run] if run else []})


def public_meta(meta: WeightsMeta, known: LocalPaths) -> WeightsMeta:
    """`meta` as a public repository shows it: the data named by kind and folder name
    ("imagefolder:my-data"), data_dir "" (the reader's own search path), and every other
    recorded string (the command, how the temperature was fitted, ...) with its absolute paths
    replaced. Class names are kept: they are the network's outputs, and a label such as Open
    Images' "/m/0dzct" is no place."""
    values = {f.name: _redacted(getattr(meta, f.name), known) for f in fields(meta) if f.name != "classes"}
    kind, colon, where = meta.dataset.partition(":")
    if colon and is_local_path(where.strip()):
        values["dataset"] = f"{kind}:{folder_name(where.strip())}"
    values["data_dir"] = "" if is_local_path(meta.data_dir) else meta.data_dir
    return replace(meta, **values)


def _redacted(value: object, known: LocalPaths) -> object:
    """`value` (a metadata field: string, number, or a mapping or list of them) without absolute paths."""
    if isinstance(value, str):
        return redact(value, known)
    if isinstance(value, dict):
        return {key: _redacted(item, known) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item, known) for item in value]
    return value
