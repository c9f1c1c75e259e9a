"""No function in src/ is over 60 lines, checked by parsing every module (methods and nested
functions included).

A function is counted from its `def` line to its last line, docstring, comments and blank lines
included: what a reader has to hold in mind at once. ruff checks the other size rules (arguments,
statements, branches; pyproject.toml); it has no rule for length.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "reslab"
MAX_FUNCTION_LINES = 60


def long_functions(root: Path = SRC, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Every function under `root` longer than `limit` lines, as "path:line name (N lines)"."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_the_limit() -> None:
    assert long_functions() == []


def test_the_checker_sees_a_long_function(tmp_path: Path) -> None:
    """A 61-line method is caught and a 60-line function is not (so the check above can fail)."""
    probe = tmp_path / "reslab" / "models" / "_size_probe.py"
    probe.parent.mkdir(parents=True)
    body = "".join(f"        x = {i}\n" for i in range(59))
    short = "".join(f"    y = {i}\n" for i in range(59))
    probe.write_text(f"class C:\n    def long(self):\n{body}        return x\n\n\ndef short():\n{short}")
    assert long_functions(tmp_path / "reslab") == ["reslab/models/_size_probe.py:2 long (61 lines)"]
