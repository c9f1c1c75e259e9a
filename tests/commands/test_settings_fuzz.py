"""Property tests: no value of any setting makes `reslab train` show a traceback.

Any (section, key) of the config dataclasses gets an adversarial value (numbers at and beyond
every edge, inf / nan / -0.0, booleans, null, YAML syntax and tags, lists); the run either trains
(exit 0) or says what is wrong in one line (exit 2). Values that would make a legitimately long
run (a large dataset or image, many steps, a big network, torch.compile, real data) are left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reslab.cli import main
from reslab.config import CHOICES, Config, config_from_dict, load_config, validate
from reslab.errors import ConfigError, ReslabError
from reslab.models import model_info
from reslab.rundir import RunDir

SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "recipe"}
SETTINGS = [(section, key) for section, make in SECTIONS.items() for key in typing.get_type_hints(make)]

# Text that YAML reads as something else, or not at all; and words that settings accept.
YAML_TEXT = [
    "",
    "~",
    "null",
    "''",
    '""',
    "[",
    "]",
    "{",
    "{a: 1}",
    "[1, [2]]",
    "- a",
    "a: b",
    "? x",
    "|",
    ">",
    "#",
    "*a",
    "&a [*a]",
    "---",
    "...",
    "%YAML 1.1",
    "\t",
    "\n",
    "!!python/object/apply:os.system [echo hi]",
    "!!python/name:os.system",
    "!!binary a",
    "!!bool x",
    "!!int 1.5",
    "!!float x",
    "!!str [1]",
    "!!set {a}",
    "2020-13-45",
    "2020-01-01",
    "1:30",
    "0x1F",
    "0o17",
    "0b101",
    "1_000",
    "1e400",
    "-1e400",
    ".inf",
    "-.inf",
    ".nan",
    "inf",
    "nan",
    "NaN",
    "yes",
    "off",
    "True",
    # words of the vocabulary, so runs get past the choices into the code they select
    "auto",
    "cpu",
    "cuda",
    "cuda:0",
    "cuda:9999",
    "A",
    "B",
    "C",
    "adamw",
    "sgd",
    "plateau",
    "onecycle",
    "cosine",
    "step",
    "linear",
    "constant",
    "fp16",
    "bf16",
    "skip",
    "paper",
    "full",
    "none",
    "flip",
    "crop",
    "channel",
    "scale",
    "rrc",
    "resnet20",
    "resnet_cifar_8",
    "wrn_10_2",
    "cifar10",
    "synthetic",
]

numbers = st.one_of(
    st.integers(min_value=-3, max_value=10),
    st.integers(),
    st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 0.999999, 1.0, 1.5, 1e308, -1e308, 5e-324, 1e-30]),
)
scalars = st.one_of(
    numbers,
    st.booleans(),
    st.none(),
    st.sampled_from(YAML_TEXT),
    st.text(max_size=8),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))

# Values of the setting's own type, around the edges of what it accepts: these get past the type
# checks into the range checks and the code that uses the value.
edge_ints = st.one_of(st.integers(min_value=-2, max_value=70), st.sampled_from([1024, 1025, 4096, 4097, 2**63 - 1]))
edge_floats = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-12, 0.1, 0.5, 0.9, 0.999999, 1.0, 1.0000001, 2.0, 1e6, 1e308]),
    st.floats(min_value=-1.5, max_value=1.5),
)


def typed_values(section: str, key: str) -> st.SearchStrategy:
    hint = typing.get_type_hints(SECTIONS[section])[key]
    args = set(typing.get_args(hint)) | {hint}
    options = []
    if (section, key) in CHOICES:
        options.append(st.sampled_from(list(CHOICES[(section, key)])))
    if int in args:
        options.append(edge_ints)
    if float in args:
        options.append(edge_floats)
    if bool in args:
        options.append(st.booleans())
    if str in args:
        options.append(st.sampled_from(YAML_TEXT))
    if list[int] in args:
        options.append(st.lists(edge_ints, max_size=4))
    if list[float] in args:
        options.append(st.lists(edge_floats, max_size=3))
    if type(None) in args:
        options.append(st.none())
    return st.one_of(*options)


# Half the draws are of the setting's type, half anything at all.
setting_and_value = st.sampled_from(SETTINGS).flatmap(
    lambda s: st.tuples(st.just(s), st.one_of(typed_values(*s), values))
)


def as_yaml(value: object) -> str:
    """How a user would type the value after --set section.key=."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(as_yaml(v) for v in value) + "]"
    return str(value)  # floats as Python prints them: inf, nan, -0.0, 1e+308 (YAML reads those as text)


# One thread: the test machines' cores are shared, and oversubscribed torch threads run 10x slower.
BASE_SETTINGS = ["data.synthetic_size=16", "train.batch_size=8", "data.split=full", "train.threads=1"]
BASE = ["train", "--data", "synthetic", "--iterations", "1", "--no-progress"]
for _setting in BASE_SETTINGS:
    BASE += ["--set", _setting]
# What BASE resolves to, as load_config overrides (the shorthand flags are overrides too).
BASE_OVERRIDES = ["data.dataset=synthetic", "train.iterations=1", "train.epochs=0", *BASE_SETTINGS]
SMALL_MODELS = {"resnet20", "resnet_cifar_8"}


def is_long_run(cfg: Config) -> bool:
    """A setting that would make a legitimately long run (or read real data) rather than a mistake."""
    t, d, m = cfg.train, cfg.data, cfg.model
    try:
        registered = model_info(m.name) is not None
    except ReslabError:
        registered = False
    return (
        d.dataset != "synthetic"
        or d.synthetic_size > 64
        or (d.image_size or 0) > 64
        or t.iterations > 4
        or t.threads > 2
        or t.compile
        or (registered and m.name not in SMALL_MODELS)
        or any(p is not None and os.path.isabs(p) for p in (d.cache_dir, d.data_dir, m.pretrained))
    )


@contextlib.contextmanager
def sandbox(base: Path) -> Iterator[Path]:
    """A fresh directory per example (cwd and data cache), and torch's process-wide settings put
    back afterwards: a run sets threads, determinism, cudnn.benchmark, an env var and the RNG."""
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.get_rng_state(),
        dict(os.environ),
        os.getcwd(),
    )
    with tempfile.TemporaryDirectory(dir=base) as work:
        os.chdir(work)
        os.environ["RESLAB_CACHE_DIR"] = str(Path(work) / "cache")
        try:
            yield Path(work)
        finally:
            threads, deterministic, benchmark, rng, env, cwd = saved
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
            torch.backends.cudnn.benchmark = benchmark
            torch.set_rng_state(rng)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Iterator[Path]:
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # train.threads=0 ("torch's default") then also means one thread
    yield tmp_path_factory.mktemp("fuzz")
    torch.set_num_threads(torch_threads)


@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(setting_and_value)
def test_train_with_any_setting_value_exits_0_or_2_in_one_line(fuzz_dir, drawn) -> None:
    (section, key), value = drawn
    override = f"{section}.{key}={as_yaml(value)}"
    try:
        assume(not is_long_run(load_config(None, [*BASE_OVERRIDES, override])))
    except ConfigError:
        pass  # refused before anything runs: quick
    with sandbox(fuzz_dir) as work:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main([*BASE, "--set", override, "--run-dir", str(work / "run")])
        # Signals are the only source of exit 3; nothing here sends one.
        stderr = err.getvalue()
        errors = [line for line in stderr.splitlines() if line.startswith("reslab train: error:")]
        assert rc in (0, 2), (override, rc, stderr)
        assert "Traceback" not in stderr, (override, stderr)
        assert len(errors) <= 1, (override, stderr)
        assert (rc == 2) == (len(errors) == 1), (override, stderr)
        if rc == 2:  # a start that failed before its first checkpoint leaves no run directory behind
            run = RunDir(work / "run")
            assert not run.path.exists() or run.list_checkpoints(), (override, sorted(run.path.rglob("*")))


overrides_text = st.one_of(
    st.builds(lambda s_v: f"{s_v[0][0]}.{s_v[0][1]}={as_yaml(s_v[1])}", setting_and_value),
    st.builds(lambda s, t: f"{s[0]}.{s[1]}={t}", st.sampled_from(SETTINGS), st.text(max_size=12)),
    st.text(max_size=20),
)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(override=overrides_text, with_epochs=st.booleans())
def test_load_config_returns_a_valid_config_or_raises_config_error(override: str, with_epochs: bool) -> None:
    try:
        cfg = load_config(None, ["train.epochs=1", override] if with_epochs else [override])
    except ConfigError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    assert isinstance(cfg, Config)
    validate(cfg)
    # What a run saves is what a resume reads back: config.yaml round-trips to the same Config.
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    assert again == cfg
