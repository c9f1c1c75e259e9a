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


# ---- the shared arguments (reslab.commands.args) -------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "w", "--batch-size", "0"],
        ["calibrate", "w", "--batch-size", "-2"],
        ["predict", "m", "x.png", "--top-k", "0"],
        ["embed", "w", "x.png", "-o", "f.npy", "--batch-size", "many"],
        ["serve", "m", "--batch-wait-ms", "-1"],
        ["serve", "m", "--max-batch", "0"],
        ["export", "w", "--min-agreement", "1.5"],
        ["eval", "w", "--tta", "mirror"],
    ],
)
def test_a_bad_value_is_refused_while_parsing_in_one_line(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage line
    assert last.startswith(f"reslab {argv[0]}: error: argument ") and argv[-2] in last and argv[-1] in last


def test_every_device_option_defaults_to_auto_and_tta_is_a_bool() -> None:
    parser = cli.build_parser()
    for argv in (["eval", "w"], ["calibrate", "w"], ["embed", "w", "x.png", "-o", "f.npy"]):
        assert parser.parse_args(argv).device == "auto", argv[0]
    assert parser.parse_args(["train"]).device is None  # the settings' train.device decides
    for argv in (["eval", "w"], ["predict", "m", "x.png"], ["serve", "m"]):
        assert parser.parse_args(argv).tta_flip is None
        assert parser.parse_args([*argv, "--tta", "flip"]).tta_flip is True
        assert parser.parse_args([*argv, "--tta", "none"]).tta_flip is False
