"""No two modules of reslab import each other, directly or around a loop: not at module level, not
inside a function, not under `if TYPE_CHECKING:` (a cycle for typing only is still two modules that
each need the other to be read). Every import counts, as tests/test_layers.py finds them."""

from __future__ import annotations

from pathlib import Path

from test_layers import SRC, imports_of, module_name


def import_cycles(root: Path = SRC) -> list[list[str]]:
    """The groups of modules that import one another around a loop (strongly connected
    components of more than one module), each sorted; [] when there is none."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {m: sorted(t for t in imports_of(p, root) if t in modules and t != m) for m, p in modules.items()}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in graph[module]:
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return cycles


def test_no_module_imports_itself_around_a_loop() -> None:
    assert import_cycles() == []


def test_the_checker_sees_a_cycle_for_typing_only(tmp_path: Path) -> None:
    package = tmp_path / "reslab" / "train"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "trainer.py").write_text("from reslab.train.resume import resume\n")
    (package / "resume.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from reslab.train.trainer import Trainer\n"
    )
    (package / "step.py").write_text("def f():\n    from reslab.train import trainer\n")
    assert import_cycles(tmp_path / "reslab") == [["reslab.train.resume", "reslab.train.trainer"]]
