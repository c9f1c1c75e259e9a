"""The dispatcher: every command registers, a broken command module fails loudly, user mistakes are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reslab import cli

COMMANDS = ["models", "train", "demo", "eval", "calibrate", "predict", "export", "serve", "embed", "push",
            "reproduce", "report"]  # fmt: skip


def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(f"    {name}" in out for name in COMMANDS)


def test_a_command_module_with_a_broken_import_fails_loudly(tmp_path, monkeypatch) -> None:
    """A broken internal import is a bug: --help raises it instead of dropping the command."""
    (tmp_path / "broken_command.py").write_text(
        "from reslab.no_such_module import thing\n\ndef register(s):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "broken_command"))
    with pytest.raises(ModuleNotFoundError, match="reslab.no_such_module"):
        cli.main(["--help"])


def test_a_broken_command_module_shows_its_traceback_in_a_subprocess(tmp_path) -> None:
    (tmp_path / "broken_command.py").write_text("import reslab.no_such_module\n")
    code = (
        "import reslab.cli as c; c.COMMAND_MODULES = (*c.COMMAND_MODULES, 'broken_command'); "
        "raise SystemExit(c.main(['--help']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "reslab.no_such_module" in proc.stderr


def test_a_user_mistake_is_one_line_with_exit_2(capsys) -> None:
    assert cli.main(["models", "resnet_nonsense_9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reslab models: error: unknown model") and "\n" not in err


def test_reslab_alone_prints_the_help(capsys) -> None:
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: reslab") and all(f"    {name}" in out for name in COMMANDS)
