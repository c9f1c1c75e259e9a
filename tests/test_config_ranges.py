"""User mistakes in settings and run directories are one line and exit 2, never a traceback, and a
start that fails leaves no run directory behind (reslab.config.RANGES, reslab.train.loop)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import torch

from reslab.cli import main
from reslab.config import RANGES, Config, check_range, load_config, parse_override
from reslab.device import resolve_device
from reslab.errors import ConfigError
from reslab.rundir import RunDir
from reslab.train.loop import remove_failed_start

# A one-step run on 16 synthetic images, one thread (the test machines' cores are shared).
QUICK = [
    "train",
    "--data",
    "synthetic",
    "--no-progress",
    "--set",
    "data.synthetic_size=16",
    "--set",
    "train.batch_size=8",
    "--set",
    "data.split=full",
    "--set",
    "train.threads=1",
]


def quick(*args: str) -> list[str]:
    """QUICK, one iteration unless `args` set --epochs."""
    return [*QUICK, *([] if "--epochs" in args else ["--iterations", "1"]), *args]


@pytest.fixture(autouse=True)
def sandbox(tmp_path, monkeypatch):
    """Run in tmp_path with its own data cache; put back the torch thread count a run sets."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def one_line_error(capsys, argv: list[str], *names: str) -> str:
    """Run the CLI; assert exit 2 and exactly one stderr line that names each of `names`."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"reslab {argv[0]}: error: ")]
    assert rc == 2, err
    # a run that got as far as starting prints its start-up lines (data, model) before the error
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def leftovers(tmp_path: Path) -> list[str]:
    """What a failed run left in the sandbox (the data cache aside)."""
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.parts[len(tmp_path.parts)] != "cache")


# ---- the range table --------------------------------------------------------------------------


def numeric_settings() -> list[tuple[str, str]]:
    """(section, key) of every int, float, optional number or list of numbers in the config."""
    out = []
    for section in dataclasses.fields(Config):
        if section.name == "recipe":
            continue
        hints = typing.get_type_hints(type(getattr(Config(), section.name)))
        for key, hint in hints.items():
            inner = {a for a in typing.get_args(hint)} | {hint}
            if inner & {int, float, list[int], list[float]}:
                out.append((section.name, key))
    return out


def test_every_numeric_setting_has_a_range() -> None:
    assert set(numeric_settings()) == set(RANGES)


def test_defaults_and_builtin_recipes_are_in_range() -> None:
    cfg = Config()
    for section, key in RANGES:
        value = getattr(getattr(cfg, section), key)
        if value is not None:
            check_range(section, key, value)
    for name in ("cifar-paper", "imagenet-paper", "fast", "finetune"):
        load_config(name)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.label_smoothing=5", "optim.label_smoothing=5.0 is out of range: use a value in [0, 1)"),
        ("optim.lr=0", "optim.lr=0.0 is out of range: use a value > 0"),
        ("optim.lr=-0.0", "optim.lr=-0.0 is out of range: use a value > 0"),
        ("optim.lr=inf", "optim.lr=inf is out of range: use a finite value > 0"),
        ("optim.lr=.nan", "optim.lr=nan is out of range: use a finite value > 0"),
        ("optim.lr=1e400", "optim.lr=inf is out of range"),
        ("optim.momentum=1", "optim.momentum=1.0 is out of range: use a value in [0, 1)"),
        ("optim.betas=[0.9, 1.5]", "optim.betas=[0.9, 1.5] is out of range: use values in [0, 1)"),
        ("schedule.gamma=0", "schedule.gamma=0.0 is out of range: use a value in (0, 1]"),
        ("schedule.step_size=0", "schedule.step_size=0 is out of range: use a value in [1, 2**63-1]"),
        ("schedule.milestones=[100, -1]", "schedule.milestones=[100, -1] is out of range"),
        ("train.threads=-3", "train.threads=-3 is out of range: use a value in [0, 1024]"),
        ("data.image_size=0", "data.image_size=0 is out of range: use a value in [1, 4096]"),
        ("data.image_size=4097", "data.image_size=4097 is out of range"),
        ("train.checkpoint_every=-1", "train.checkpoint_every=-1 is out of range: use a value in [0, 2**63-1]"),
        ("train.keep_checkpoints=-1", "train.keep_checkpoints=-1 is out of range: use a value in [0, 2**63-1]"),
        ("train.eval_every=-2", "-1: only after the last step"),
        ("train.seed=1e30", "train.seed=1.000e+30 is out of range: use a value in [0, 2**63-1]"),
        ("train.batch_size=0", "train.batch_size=0 is out of range: use a value in [1, 2**63-1]"),
        ("train.epochs=-1", "train.epochs=-1.0 is out of range: use a value in [0, 1000000000]"),
        ("train.epochs=inf", "train.epochs=inf is out of range: use a finite value in [0, 1000000000]"),
        ("optim.weight_decay=" + "9" * 400, "optim.weight_decay=9.999e+399 is out of range: too large for a float"),
    ],
)
def test_out_of_range_names_key_value_and_range(override: str, message: str) -> None:
    overrides = [override] if override.startswith("train.epochs") else [override, "train.epochs=1"]
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_image_size_none_is_the_native_size() -> None:
    assert load_config(None, ["data.image_size=null", "train.epochs=1"]).data.image_size is None


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_pass_validation(device: str) -> None:
    assert load_config(None, [f"train.device={device}", "train.epochs=1"]).train.device == device


@pytest.mark.parametrize("device", ["tpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda0", "mps", ""])
def test_other_device_names_are_refused(device: str) -> None:
    with pytest.raises(ConfigError, match="train.device must be auto, cpu, cuda or cuda:N"):
        load_config(None, [f"train.device='{device}'", "train.epochs=1"])
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device(device)


def test_a_cuda_index_beyond_the_visible_devices_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cuda:99"):
        resolve_device("cuda:99")


def test_cross_checks() -> None:
    with pytest.raises(ConfigError, match="optim.betas must be two numbers"):
        load_config(None, ["optim.betas=[0.9]", "train.epochs=1"])
    with pytest.raises(ConfigError, match="optim.nesterov needs optim.momentum > 0"):
        load_config(None, ["optim.nesterov=true", "optim.momentum=0", "train.epochs=1"])


@pytest.mark.parametrize("raw", ["2020-13-45", "!!bool x", "!!int abc", "!!float x", "[1, 2", "*alias", "!!binary a"])
def test_values_yaml_cannot_construct_are_config_errors(raw: str) -> None:
    with pytest.raises(ConfigError, match="the value is not valid YAML") as info:
        parse_override(f"train.seed={raw}")
    assert "\n" not in str(info.value)


def test_recipe_is_not_a_section_to_set() -> None:
    with pytest.raises(ConfigError, match="unknown section 'recipe'"):
        parse_override("recipe.name=x")


# ---- reslab train: each mistake is one line, exit 2 -------------------------------------------


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--epochs", "inf"], ["train.epochs=inf", "finite"]),
        (["--epochs", "-1"], ["train.epochs=-1.0", "[0, 1000000000]"]),
        (["--set", "optim.label_smoothing=5"], ["optim.label_smoothing=5.0", "[0, 1)"]),
        (["--set", "model.drop_rate=2"], ["model.drop_rate=2.0", "[0, 1)"]),
        (["--device", "tpu"], ["train.device", "'tpu'"]),
        (["--set", "train.threads=-3"], ["train.threads=-3"]),
        (["--set", "data.image_size=0"], ["data.image_size=0"]),
        (["--set", "train.checkpoint_every=-1"], ["train.checkpoint_every=-1"]),
        (["--set", "train.keep_checkpoints=-1"], ["train.keep_checkpoints=-1", "0 keeps all"]),
    ],
)
def test_train_refuses_bad_settings_in_one_line(tmp_path, capsys, args: list[str], names: list[str]) -> None:
    line = one_line_error(capsys, quick(*args, "--run-dir", str(tmp_path / "run")), *names)
    assert "exactly one of" not in line
    assert leftovers(tmp_path) == []


def test_run_dir_that_is_a_file(tmp_path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    one_line_error(capsys, quick("--run-dir", "notes.txt"), "notes.txt is a file", "--run-dir")
    one_line_error(capsys, quick("--run-dir", "notes.txt/run"), "notes.txt/run", "cannot create")
    assert (tmp_path / "notes.txt").read_text() == "mine" and leftovers(tmp_path) == ["notes.txt"]


# ---- a failed start leaves nothing behind -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--model", "no_such_net"], "no_such_net"),  # fails building the model, in the run directory's set-up
        (["--set", "data.split=paper"], "data.val_size=5000"),  # 16 images cannot give 5000 to validation
        (["--set", "model.pretrained=missing.safetensors"], "missing.safetensors"),
    ],
)
def test_failed_start_removes_the_directories_it_created(tmp_path, capsys, args: list[str], name: str) -> None:
    one_line_error(capsys, quick(*args, "--run-dir", "runs/a/b"), name)
    assert leftovers(tmp_path) == []


def test_failed_start_keeps_a_directory_that_existed(tmp_path, capsys) -> None:
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    one_line_error(capsys, quick("--model", "no_such_net", "--run-dir", str(run)), "no_such_net")
    assert (run / "notes.txt").read_text() == "mine"


def test_failed_start_keeps_files_it_did_not_write(tmp_path, capsys, monkeypatch) -> None:
    """Another file lands in the new run directory before the start fails: it and the directory stay."""
    import reslab.train.trainer as trainer

    def build_model(cfg, data):
        (tmp_path / "run" / "notes.txt").write_text("not the run's")
        raise ConfigError("no model today")

    monkeypatch.setattr(trainer, "build_model", build_model)
    one_line_error(capsys, quick("--run-dir", "run"), "no model today")
    assert leftovers(tmp_path) == ["run", "run/notes.txt"]


def test_failure_before_the_first_checkpoint_removes_what_the_run_wrote(tmp_path, capsys, monkeypatch) -> None:
    """config.yaml and the TensorBoard events are written when the first step fails."""
    import reslab.train.trainer as trainer

    def train_step(*args, **kwargs):
        assert (tmp_path / "run" / "config.yaml").is_file() and list((tmp_path / "run" / "tb").iterdir())
        raise ConfigError("stepped on a rake")

    monkeypatch.setattr(trainer, "train_step", train_step)
    one_line_error(capsys, quick("--run-dir", "run"), "stepped on a rake")
    assert leftovers(tmp_path) == []


def test_remove_failed_start_never_removes_checkpoints(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    run.checkpoints_dir.mkdir(parents=True)
    run.checkpoint(4).write_bytes(b"x")
    run.config.write_text("model: {}\n")
    remove_failed_start(run, [run.path])
    assert run.checkpoint(4).is_file() and run.config.is_file()


def test_a_run_that_finished_is_kept(tmp_path, capsys) -> None:
    assert main(quick("--model", "resnet_cifar_8", "--run-dir", "run")) == 0
    assert RunDir(tmp_path / "run").state() == "finished"


# ---- resuming from a damaged config.yaml ------------------------------------------------------


def resume_error(tmp_path: Path, capsys, config: str | bytes, *names: str) -> str:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_bytes(config if isinstance(config, bytes) else config.encode())
    return one_line_error(capsys, ["train", "--resume", str(run)], str(run / "config.yaml"), *names)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("model: {name: [\n", ["damaged"]),
        ("- 1\n- 2\n", ["mapping"]),
        ("just text\n", ["mapping"]),
        ("model: 3\n", ["section 'model'", "mapping"]),
        ("model: [resnet20]\n", ["section 'model'", "mapping"]),
        ("train:\n  batch_size: big\n", ["train.batch_size", "'big'"]),
        ("train:\n  progress: 3\n", ["train.progress"]),
        ("train:\n  nokey: 1\n", ["train.nokey"]),
        ("trainer:\n  epochs: 1\n", ["'trainer'"]),
        ("recipe: [1]\ntrain:\n  epochs: 1\n", ["recipe"]),
        ("train:\n  epochs: 1\n  threads: -3\n", ["train.threads=-3"]),
        ("train:\n  epochs: 1\n  iterations: 5\n", ["exactly one of train.iterations and train.epochs"]),
        (b"model:\n  name: \xff\xfe\n", ["damaged"]),
    ],
)
def test_resume_from_a_bad_config_is_one_line_naming_the_file(tmp_path, capsys, text, names: list[str]) -> None:
    resume_error(tmp_path, capsys, text, *names)


@pytest.mark.parametrize(
    "text",
    [
        'model: !!python/object/apply:os.system ["touch {marker}"]\n',
        '!!python/object/apply:os.system ["touch {marker}"]\n',
        "train:\n  seed: !!python/object/apply:subprocess.check_call [[touch, {marker}]]\n",
        "model:\n  name: !!python/name:os.system\n",
    ],
)
def test_resume_never_runs_python_tags(tmp_path, capsys, text: str) -> None:
    marker = tmp_path / "MARKER"
    resume_error(tmp_path, capsys, text.format(marker=marker), "damaged")
    assert not marker.exists()


def test_resume_from_a_config_with_an_impossible_date(tmp_path, capsys) -> None:
    resume_error(tmp_path, capsys, "train:\n  seed: 2020-13-45\n", "damaged")


def test_resume_runtime_override_out_of_range(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  epochs: 1\n")
    rc = main(["train", "--resume", str(run), "--set", "train.threads=-3"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "reslab train: error: train.threads=-3 is out of range: use a value in [0, 1024]"
    ]


# ---- shorthand flags are names, not YAML ------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["on", "1:30", "2020-13-45", "[x", "#x", "!!python/name:os.system", 'a "q" \\ \x01 \u2028']
)
def test_shorthand_text_flags_hold_exactly_what_was_typed(text: str) -> None:
    from reslab.cli import build_parser
    from reslab.commands.train import _overrides

    args = build_parser().parse_args(["train", "--data-dir", text, "--model", text, "--epochs", "1"])
    cfg = load_config(None, _overrides(args))
    assert cfg.data.data_dir == text and cfg.model.name == text
