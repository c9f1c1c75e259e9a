"""A finished degradation experiment read back from its results.json, to draw beside another
schedule's (`reslab reproduce degradation --compare DIR`).

The file may come from anywhere (a copy in docs/results/, a colleague's run), so every key used is
checked before use and the file's size is bounded; a file that fails a check is refused with one
line naming the key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reslab.analysis.runs import Curve
from reslab.errors import ConfigError

RESULTS = "results.json"
MAX_RESULTS_BYTES = 16 * 2**20  # a degradation results.json of 5 seeds x 4 nets x 1,000 points is < 2 MiB


@dataclass
class OtherSchedule:
    source: str  # as given to --compare
    label: str  # "3 epochs, 1,404 iterations"
    iterations: int
    milestones: list[int]
    curves: dict[str, dict[str, Curve]]  # network ("ResNet-56") -> {"train": Curve, "test": Curve}
    finals: dict[str, dict[str, float | None]]  # network -> {"train": final error, "test": final error}

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


def load_other_schedule(text: str, data: str, experiment: str) -> OtherSchedule:
    """--compare TEXT: a degradation experiment's directory, or a folder holding its results.json
    (or the file itself), on the same dataset `data`."""
    path = Path(text)
    file = path / RESULTS if path.is_dir() else path
    where = f"--compare {text}"
    if not file.is_file():
        raise ConfigError(
            f"{where}: no {RESULTS} there; give a finished {experiment} experiment's directory "
            f"(or the folder its {RESULTS} was copied to, e.g. docs/results/degradation-fashion-mnist)"
        )
    size = file.stat().st_size
    if size > MAX_RESULTS_BYTES:
        raise ConfigError(f"{where}: {file} is {size:,} bytes, over the {MAX_RESULTS_BYTES:,} a {RESULTS} may have")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: {file} is not valid JSON ({exc})") from None

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"{where}: {file}: {key} {what}; it was not written by reslab reproduce {experiment}")

    if not isinstance(results, dict) or results.get("experiment") != experiment:
        found = results.get("experiment") if isinstance(results, dict) else None
        raise bad("experiment", f"is {found!r}, not {experiment!r}")
    if results.get("data") != data:
        raise ConfigError(
            f"{where}: that experiment ran on {results.get('data')!r}, this one on {data!r}; "
            "compare schedules on the same data"
        )
    iterations = results.get("iterations")
    if not _is_int(iterations) or iterations <= 0:
        raise bad("iterations", "is not a positive integer")
    milestones = results.get("milestones")
    if not isinstance(milestones, list) or not all(_is_int(m) and 0 < m < iterations for m in milestones):
        raise bad("milestones", f"is not a list of iterations between 0 and {iterations}")
    epochs = (results.get("settings") or {}).get("epochs") if isinstance(results.get("settings"), dict) else None
    if epochs is not None and not (_is_number(epochs) and epochs > 0):
        raise bad("settings.epochs", "is not a positive number")
    return OtherSchedule(
        source=text,
        label=schedule_label(iterations, epochs),
        iterations=iterations,
        milestones=list(milestones),
        curves=_curves(results.get("curves"), iterations, bad),
        finals=_finals(results.get("table"), bad),
    )


def _curves(curves: Any, iterations: int, bad) -> dict[str, dict[str, Curve]]:
    if not isinstance(curves, dict) or not curves:
        raise bad("curves", "is missing or empty")
    out: dict[str, dict[str, Curve]] = {}
    for net, pair in curves.items():
        if not isinstance(pair, dict):
            raise bad(f"curves.{net}", "is not an object")
        out[str(net)] = {}
        for kind in ("train", "test"):
            c = pair.get(kind)
            key = f"curves.{net}.{kind}"
            if not isinstance(c, dict) or not isinstance(c.get("steps"), list) or not isinstance(c.get("values"), list):
                raise bad(key, "has no steps and values lists")
            steps, values = c["steps"], c["values"]
            if len(steps) != len(values):
                raise bad(key, f"has {len(steps)} steps but {len(values)} values")
            if not all(_is_int(s) and 0 <= s <= iterations for s in steps) or steps != sorted(steps):
                raise bad(f"{key}.steps", f"are not increasing iterations within 0..{iterations}")
            if not all(_is_number(v) and 0 <= v <= 1 for v in values):
                raise bad(f"{key}.values", "are not error fractions between 0 and 1")
            out[str(net)][kind] = Curve(list(steps), [float(v) for v in values])
    return out


def _finals(table: Any, bad) -> dict[str, dict[str, float | None]]:
    if not isinstance(table, list):
        raise bad("table", "is not a list")
    finals = {}
    for i, row in enumerate(table):
        if not isinstance(row, dict) or not isinstance(row.get("model"), str):
            raise bad(f"table[{i}]", "has no model name")
        pair = {}
        for kind, key in (("train", "train_error_mean"), ("test", "test_error_mean")):
            value = row.get(key)
            if value is not None and not (_is_number(value) and 0 <= value <= 1):
                raise bad(f"table[{i}].{key}", "is not an error fraction between 0 and 1")
            pair[kind] = value
        finals[row["model"]] = pair
    return finals


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
