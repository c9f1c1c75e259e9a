"""The package's layer order, checked by parsing every import (function-level ones included).

    errors, atomic, machine, vocab, records         (0) no reslab imports but each other
    config, models, data, rundir, expdir, device    (1) the building blocks
    weights, checkpoint, hub                        (2) what a trained network and a run's state are
    evaluation, calibration                         (3) one evaluation for everyone above
    train, infer                                    (4) training; prediction, export, serving
    analysis                                        (5) experiments and reports
    commands, cli, __main__                         (6) the command line: wiring only

A module imports only from its own layer or below. Within a layer, the groups listed in
SEPARATE import nothing from each other: models and data stay independent, training and
inference stay independent, and evaluation and the analysis never reach into train/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "reslab"

LAYERS: dict[str, int] = {
    "errors": 0, "atomic": 0, "machine": 0, "vocab": 0, "records": 0,
    "config": 1, "models": 1, "data": 1, "rundir": 1, "expdir": 1, "device": 1,
    "weights": 2, "checkpoint": 2, "hub": 2,
    "evaluation": 3, "calibration": 3,
    "train": 4, "infer": 4,
    "analysis": 5,
    "commands": 6, "cli": 6, "__main__": 6,
}  # fmt: skip
# Same-layer groups that must not import each other.
SEPARATE = [("models", "data"), ("models", "config"), ("data", "config"), ("train", "infer")]


def group_of(module: str) -> str | None:
    """reslab.data.batches -> "data"; reslab (the package root, for __version__) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "reslab" else None


def module_name(path: Path, root: Path = SRC) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = SRC) -> set[str]:
    """Every reslab module `path` imports, anywhere in the file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # `from reslab import data`
    return {m for m in found if m.split(".")[0] == "reslab"}


def test_every_module_has_a_layer() -> None:
    groups = {group_of(module_name(p)) for p in SRC.rglob("*.py")} - {None}
    assert groups <= set(LAYERS), f"modules without a layer: {sorted(groups - set(LAYERS))}"


def violations(root: Path = SRC) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        me = group_of(module_name(path, root))
        if me is None:
            continue
        for target in sorted(imports_of(path, root)):
            other = group_of(target)
            if other is None or other == me or other not in LAYERS:
                continue
            where = f"{path.relative_to(root.parent)} imports {target}"
            if LAYERS[other] > LAYERS[me]:
                found.append(f"{where}: layer {LAYERS[me]} ({me}) may not import layer {LAYERS[other]} ({other})")
            elif {me, other} in [set(pair) for pair in SEPARATE]:
                found.append(f"{where}: {me} and {other} stay independent")
    return found


def test_imports_follow_the_layer_order() -> None:
    assert violations() == []


def test_the_checker_sees_a_violation(tmp_path) -> None:
    """A layer-1 module importing the trainer is caught (so the check above can fail)."""
    fake = tmp_path / "reslab" / "data" / "_layer_probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from reslab.train.trainer import Trainer\n    from ..models import resnet\n")
    found = violations(tmp_path / "reslab")
    assert any("_layer_probe.py imports reslab.train.trainer" in v for v in found)
    assert any("_layer_probe.py imports reslab.models" in v and "independent" in v for v in found)


@pytest.mark.parametrize("module", ["reslab.evaluation", "reslab.analysis", "reslab.commands.eval"])
def test_evaluation_and_analysis_do_not_import_train(module: str) -> None:
    paths = [SRC.parent / (module.replace(".", "/") + ".py")]
    if not paths[0].is_file():
        paths = list((SRC.parent / module.replace(".", "/")).rglob("*.py"))
    imported = set().union(*(imports_of(p) for p in paths))
    assert not {m for m in imported if m.startswith("reslab.train")}
