"""Start-up (issue 24, item 4): `reslab --help`, `reslab COMMAND --help` and argument errors
import no heavy library (torch, numpy, PIL, onnx, ...): each command imports those inside its
function, after its arguments are parsed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "PIL", "onnx", "onnxruntime", "torchvision", "fastapi", "matplotlib", "safetensors")
PROBE = """
import json, sys
from reslab.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
print(json.dumps({"status": status, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""
COMMANDS = ("train", "demo", "eval", "predict", "export", "serve", "embed", "calibrate", "reproduce", "report")


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["--version"], *([c, "--help"] for c in COMMANDS), ["train", "--budget"], ["predict"]],
    ids=lambda a: " ".join(a) or "(none)",
)
def test_help_and_argument_errors_import_no_heavy_library(args: list[str]) -> None:
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] in (0, 2), result.stderr[-2000:]  # help / version: 0, argument error: 2
    assert outcome["heavy"] == [], f"reslab {' '.join(args)} imported {outcome['heavy']}"


def test_the_public_names_still_import_on_use() -> None:
    import reslab

    assert reslab.create_model("resnet20", num_classes=10).num_classes == 10
    assert "resnet20" in reslab.list_models()
    with pytest.raises(AttributeError):
        _ = reslab.no_such_name
