"""A finished degradation experiment read back from its results.json, to draw beside another
schedule's (`reslab reproduce degradation --compare DIR`).

The file may come from anywhere (a copy in docs/results/, a colleague's run), so every key used is
checked before use and the file's size is bounded; a file that fails a check is refused with one
line naming the key.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reslab.analysis.runs import Curve
from reslab.errors import ConfigError

RESULTS = "results.json"
MAX_RESULTS_BYTES = 16 * 2**20  # a degradation results.json of 5 seeds x 4 nets x 1,000 points is < 2 MiB
MAX_ITERATIONS = 10**8
MAX_MILESTONES = 16
MAX_NETWORKS = 64
MAX_POINTS = 100_000  # per curve
COMPARED_SETTINGS = ("seeds", "overrides", "train_images")  # shown in the report when they differ
_repr = reprlib.Repr()  # keyword arguments need Python 3.12
_repr.maxstring = _repr.maxother = _repr.maxlist = 60
_short = _repr.repr  # a value from the file, quoted and cut short for a one-line message


@dataclass
class OtherSchedule:
    source: str  # as given to --compare
    label: str  # "3 epochs, 1,404 iterations"
    iterations: int
    milestones: list[int]
    curves: dict[str, dict[str, Curve]]  # network ("ResNet-56") -> {"train": Curve, "test": Curve}
    finals: dict[str, dict[str, float | None]]  # network -> {"train": final error, "test": final error}
    settings: dict[str, Any]  # its COMPARED_SETTINGS, as recorded

    def differences(self, settings: dict[str, Any]) -> list[str]:
        """Each COMPARED_SETTINGS value that differs from `settings`' ("seeds 3 there, 1 here"); of the
        --set overrides, the ones only one side has."""
        out = []
        for key in COMPARED_SETTINGS:
            theirs, ours = self.settings.get(key), settings.get(key)
            if theirs == ours:
                continue
            if key == "overrides" and isinstance(theirs, list) and isinstance(ours, list):
                there = [str(o) for o in theirs if o not in ours]
                here = [str(o) for o in ours if o not in theirs]
                out.append(
                    f"--set only there: {_short(', '.join(there)) if there else 'none'}, only here: "
                    f"{_short(', '.join(here)) if here else 'none'}"
                )
            else:
                out.append(f"{key} {_short(theirs)} there, {_short(ours)} here")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "label": self.label,
            "iterations": self.iterations,
            "milestones": self.milestones,
            "final": self.finals,
        }


def schedule_label(iterations: int, epochs: float | None) -> str:
    return (f"{epochs:g} epochs, " if epochs else "") + f"{iterations:,} iterations"


def load_other_schedule(text: str, data: str, experiment: str, own_dir: Path) -> OtherSchedule:
    """--compare TEXT: a degradation experiment's directory, or a folder holding its results.json
    (or the file itself), on the same dataset `data`; not the experiment `own_dir` itself."""
    where = f"--compare {text}"
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where}: give a directory or a {RESULTS} file")
    path = Path(text)
    file = path / RESULTS if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"{where}: no {RESULTS} there; give a finished {experiment} experiment's directory "
            f"(or the folder its {RESULTS} was copied to, e.g. docs/results/degradation-fashion-mnist)"
        )
    if file.resolve().parent == own_dir.resolve():
        raise ConfigError(f"{where}: that is this experiment's own {RESULTS}; compare with another experiment")
    try:
        size = file.stat().st_size
        if size > MAX_RESULTS_BYTES:
            raise ConfigError(f"{where}: {file} is {size:,} bytes, over the {MAX_RESULTS_BYTES:,} a {RESULTS} may have")
        results = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {file} ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit int, [[[[...
        raise ConfigError(f"{where}: {file} is not valid JSON ({_short(str(exc))})") from None

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"{where}: {file}: {key} {what}; it was not written by reslab reproduce {experiment}")

    if not isinstance(results, dict) or results.get("experiment") != experiment:
        found = results.get("experiment") if isinstance(results, dict) else None
        raise bad("experiment", f"is {_short(found)}, not {experiment!r}")
    if results.get("data") != data:
        raise ConfigError(
            f"{where}: that experiment ran on {_short(results.get('data'))}, this one on {data!r}; "
            "compare schedules on the same data"
        )
    iterations = results.get("iterations")
    if not _is_int(iterations) or not 0 < iterations <= MAX_ITERATIONS:
        raise bad("iterations", f"is not an integer between 1 and {MAX_ITERATIONS:,}")
    milestones = results.get("milestones")
    if (
        not isinstance(milestones, list)
        or len(milestones) > MAX_MILESTONES
        or not all(_is_int(m) and 0 < m <= iterations for m in milestones)
    ):
        raise bad("milestones", f"is not a list of at most {MAX_MILESTONES} iterations between 1 and {iterations}")
    settings = results.get("settings", {})
    if not isinstance(settings, dict):
        raise bad("settings", "is not an object")
    epochs = settings.get("epochs")
    if epochs is not None and not (_is_number(epochs) and 0 < epochs <= MAX_ITERATIONS):
        raise bad("settings.epochs", "is not a positive number")
    return OtherSchedule(
        source=text,
        label=schedule_label(iterations, epochs),
        iterations=iterations,
        milestones=list(milestones),
        curves=_curves(results.get("curves"), iterations, bad),
        finals=_finals(results.get("table"), bad),
        settings={key: settings.get(key) for key in COMPARED_SETTINGS},
    )


def _curves(curves: Any, iterations: int, bad) -> dict[str, dict[str, Curve]]:
    if not isinstance(curves, dict) or not curves or len(curves) > MAX_NETWORKS:
        raise bad("curves", f"is not an object of 1 to {MAX_NETWORKS} networks")
    out: dict[str, dict[str, Curve]] = {}
    for net, pair in curves.items():
        if not isinstance(pair, dict):
            raise bad(f"curves[{_short(net)}]", "is not an object")
        out[net] = {}
        for kind in ("train", "test"):
            c = pair.get(kind)
            key = f"curves[{_short(net)}].{kind}"
            if not isinstance(c, dict) or not isinstance(c.get("steps"), list) or not isinstance(c.get("values"), list):
                raise bad(key, "has no steps and values lists")
            steps, values = c["steps"], c["values"]
            if len(steps) != len(values) or len(steps) > MAX_POINTS:
                raise bad(key, f"has {len(steps)} steps and {len(values)} values (equal, at most {MAX_POINTS:,})")
            if not all(_is_int(s) and 0 <= s <= iterations for s in steps) or any(
                a >= b for a, b in zip(steps, steps[1:])
            ):
                raise bad(f"{key}.steps", f"are not increasing iterations within 0..{iterations}")
            if not all(_is_number(v) and 0 <= v <= 1 for v in values):
                raise bad(f"{key}.values", "are not error fractions between 0 and 1")
            out[str(net)][kind] = Curve(list(steps), [float(v) for v in values])
    return out


def _finals(table: Any, bad) -> dict[str, dict[str, float | None]]:
    if not isinstance(table, list) or len(table) > MAX_NETWORKS:
        raise bad("table", f"is not a list of at most {MAX_NETWORKS} networks")
    finals = {}
    for i, row in enumerate(table):
        if not isinstance(row, dict) or not isinstance(row.get("model"), str):
            raise bad(f"table[{i}]", "has no model name")
        pair = {}
        for kind, key in (("train", "train_error_mean"), ("test", "test_error_mean")):
            value = row.get(key)
            if isinstance(value, float) and math.isnan(value):
                value = None  # reslab writes NaN for a network with no final number
            if value is not None and not (_is_number(value) and 0 <= value <= 1):
                raise bad(f"table[{i}].{key}", "is not an error fraction between 0 and 1")
            pair[kind] = value
        finals[row["model"]] = pair
    return finals


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    """A finite int or float (an int of any size: math.isfinite would overflow on a huge one)."""
    return _is_int(x) or (isinstance(x, float) and math.isfinite(x))
