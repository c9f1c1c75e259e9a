"""kill -9 at every write boundary of a run, then resume: the run ends bit-identical.

`reslab.atomic`'s test hook (RESLAB_FAULT_INJECT="GLOB:POINT[:N]") kills the process with SIGKILL
inside one atomic write: after the temp file is opened, written, fsynced, or renamed into place.
Each case kills `reslab train` inside one write of a run (a checkpoint's checksum file or the
checkpoint itself, the first one and a later one, the final weights, the summary), resumes it with
`reslab train --resume`, and checks that the final weights equal those of an uninterrupted run bit
for bit and that nothing a cut-short write left (temp files, orphan checksums, damaged checkpoints)
stays in the run directory. The first test checks the hook itself, on one write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import reslab.atomic
from reslab.atomic import FAULT_INJECT_ENV, FAULT_POINTS, FaultPlan
from reslab.config import load_config, save_config
from reslab.errors import CheckpointError
from reslab.rundir import RunDir
from reslab.train.distributed import Dist
from reslab.train.trainer import Trainer
from reslab.weights import load_weights

STEPS_PER_EPOCH = 4  # 32 images / batch 8
EPOCHS = 2
LATER_STEP = 5  # a checkpoint mid-way through epoch 1, with earlier ones beside it
ARGS = [
    "train",
    "--data",
    "synthetic",
    "--model",
    "wrn_10_1",
    "--epochs",
    str(EPOCHS),
    "--no-progress",
    "--deterministic",
    "--set",
    "train.batch_size=8",
    "--set",
    "data.split=full",
    "--set",
    "data.synthetic_size=32",
    "--set",
    "train.threads=1",
    "--set",
    "train.checkpoint_every=1",
    "--set",
    "optim.ema_decay=0.9",  # the EMA and dropout's RNG state must be restored too
    "--set",
    "model.drop_rate=0.3",
]

# Files of a run, relative to its directory, that a kill may cut short.
TARGETS = [
    "checkpoints/ckpt-00000001.pt.sha256",
    "checkpoints/ckpt-00000001.pt",
    f"checkpoints/ckpt-{LATER_STEP:08d}.pt.sha256",
    f"checkpoints/ckpt-{LATER_STEP:08d}.pt",
    "weights.safetensors",
    "summary.json",
]


def reslab_train(*args: str, cwd: Path, fault: str | None = None, timeout: float = 180) -> tuple[int, str]:
    env = {**os.environ, "RESLAB_CACHE_DIR": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_INJECT_ENV, None)
    if fault:
        env[FAULT_INJECT_ENV] = fault
    proc = subprocess.run(
        [sys.executable, "-m", "reslab", *args], cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout
    )
    return proc.returncode, proc.stdout + proc.stderr


def leftovers(run: Path) -> list[str]:
    """Temp files, checksums without their checkpoint and damaged checkpoints anywhere in the run."""
    found = [p for p in run.rglob(".*.tmp")] + [p for p in run.rglob("*.damaged")]
    found += [p for p in run.rglob("*.sha256") if not p.with_name(p.name.removesuffix(".sha256")).exists()]
    return sorted(str(p.relative_to(run)) for p in found)


def final_metrics(run: Path) -> dict[str, float]:
    """The metrics the final weights record (their names; the test-set values, which a resumed run
    measures again; the training metrics of a resumed epoch cover only the steps after the resume)."""
    metrics = load_weights(run / "weights.safetensors").meta.metrics
    return {k: v if k.startswith("test_") else None for k, v in metrics.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run, shared by the tests of this module."""
    cwd = tmp_path_factory.mktemp("reference")
    rc, out = reslab_train(*ARGS, "--run-dir", str(cwd / "run"), cwd=cwd)
    assert rc == 0, out[-3000:]
    return cwd / "run"


# ---- the hook itself -----------------------------------------------------------------------------

# One atomic write in a fresh interpreter that loads atomic.py alone (no torch: fast).
WRITE_ONCE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
atomic = sys.modules["atomic"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
for text in sys.argv[3:]:
    atomic.atomic_write_bytes(sys.argv[2], text.encode())
"""


def write_in_subprocess(target: Path, *contents: str, fault: str) -> int:
    env = {**os.environ, FAULT_INJECT_ENV: fault}
    args = [sys.executable, "-c", WRITE_ONCE, reslab.atomic.__file__, str(target), *contents]
    return subprocess.run(args, env=env, capture_output=True, timeout=60).returncode


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_hook_kills_at_each_point(tmp_path: Path, point: str) -> None:
    target = tmp_path / "file.bin"
    target.write_text("old")
    assert write_in_subprocess(target, "new", fault=f"file.*:{point}") == -signal.SIGKILL
    temps = list(tmp_path.glob(".file.bin.*.tmp"))
    if point == "renamed":
        assert target.read_text() == "new" and temps == []
    else:
        assert target.read_text() == "old"
        assert len(temps) == 1
        assert temps[0].read_text() == ("" if point == "opened" else "new")


def test_hook_counts_matching_writes(tmp_path: Path) -> None:
    target, other = tmp_path / "a.txt", tmp_path / "b.txt"
    other.write_text("untouched")
    # The second write of a.txt dies; writes of other files do not count.
    assert write_in_subprocess(target, "first", "second", "third", fault="a.txt:synced:2") == -signal.SIGKILL
    assert target.read_text() == "first"
    assert write_in_subprocess(other, "b1", "b2", fault="a.txt:opened") == 0
    assert other.read_text() == "b2"


@pytest.mark.parametrize("text", ["a.txt", "a.txt:closed", "a.txt:opened:0", "a.txt:opened:x", ":renamed"])
def test_hook_rejects_a_malformed_plan(text: str) -> None:
    with pytest.raises(ValueError, match="GLOB:POINT"):
        FaultPlan.parse(text)


def test_hook_plan_matches_names() -> None:
    plan = FaultPlan.parse("ckpt-*.pt:renamed:2")
    assert [plan.point_for(n) for n in ("ckpt-1.pt.sha256", "ckpt-1.pt", "x", "ckpt-2.pt", "ckpt-3.pt")] == [
        None,
        None,
        None,
        "renamed",
        None,
    ]


# ---- a run killed before its first checkpoint --------------------------------------------------

SETTINGS = ["data.dataset=synthetic", "data.synthetic_size=32", "data.split=full", "model.name=resnet_cifar_8",
            "train.batch_size=8", "train.epochs=1", "train.progress=false", "train.checkpoint_every=1"]  # fmt: skip


def make_trainer(run: RunDir, *, resume: bool) -> Trainer:
    torch.manual_seed(0)  # as reslab.train.loop does before a new or a resumed run
    return Trainer(load_config(None, SETTINGS), run, Dist(), torch.device("cpu"), resume=resume)


def test_resume_before_the_first_checkpoint_starts_from_step_0(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    run = RunDir(tmp_path / "run")
    run.checkpoints_dir.mkdir(parents=True)
    save_config(load_config(None, SETTINGS), run.config)
    cut_short = [
        run.path / ".summary.json.x1.tmp",
        run.checkpoints_dir / ".ckpt-00000001.pt.x2.tmp",
        run.checkpoints_dir / "ckpt-00000001.pt.sha256",  # its checkpoint never landed
    ]
    for path in cut_short:
        path.write_text("x")
    run.append_metrics({"step": 1, "test_loss": 2.0})
    assert not run.holds_run()

    resumed = make_trainer(run, resume=True)
    assert "starting from step 0" in capsys.readouterr().err
    assert resumed.state.step == 0 and [p for p in cut_short if p.exists()] == [] and run.read_metrics() == []
    (tmp_path / "fresh").mkdir()
    fresh = make_trainer(RunDir(tmp_path / "fresh"), resume=False)
    assert all(
        torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), fresh.model.state_dict().values())
    )
    assert resumed.fit()["steps"] == 4 and len(run.list_checkpoints()) == 2


def test_resume_with_only_damaged_checkpoints_still_fails(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    run = RunDir(tmp_path / "run")
    run.checkpoints_dir.mkdir(parents=True)
    save_config(load_config(None, SETTINGS), run.config)
    (run.checkpoints_dir / "ckpt-00000003.pt.damaged").write_text("x")  # a run was here: do not start over
    assert run.holds_run()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        make_trainer(run, resume=True)


# ---- kill -9 inside every write of a run, then resume ----------------------------------------------


def landed_before_kill(target: str, point: str) -> bool:
    """Whether a checkpoint the resume can use had landed when the process was killed."""
    if target == "checkpoints/ckpt-00000001.pt.sha256":
        return False
    if target == "checkpoints/ckpt-00000001.pt":
        return point == "renamed"
    return True


# Each case runs `reslab train` twice (~8-20 s on 2 busy cores). One case per distinct outcome
# stays quick; the other 19 (the same outcomes at the other points) are marked slow.
QUICK = {
    ("checkpoints/ckpt-00000001.pt.sha256", "renamed"),  # a checksum without checkpoint: from step 0
    ("checkpoints/ckpt-00000001.pt", "synced"),  # a checksum and a temp file: from step 0
    ("checkpoints/ckpt-00000001.pt", "renamed"),  # the first checkpoint landed: from it
    (f"checkpoints/ckpt-{LATER_STEP:08d}.pt", "synced"),  # back to the checkpoint before
    ("weights.safetensors", "synced"),  # from the last step's checkpoint, straight to the results
}
CASES = [
    pytest.param(target, point, marks=() if (target, point) in QUICK else pytest.mark.slow, id=f"{target}-{point}")
    for target in TARGETS
    for point in FAULT_POINTS
]


@pytest.mark.parametrize(("target", "point"), CASES)
def test_kill_at_write_boundary_then_resume(tmp_path: Path, reference: Path, target: str, point: str) -> None:
    run = tmp_path / "run"
    rc, out = reslab_train(*ARGS, "--run-dir", str(run), cwd=tmp_path, fault=f"{Path(target).name}:{point}")
    assert rc == -signal.SIGKILL, out[-3000:]
    # The kill hit the write it was aimed at: the target is in place only once renamed.
    assert (run / target).exists() == (point == "renamed")
    assert bool(list((run / target).parent.glob(f".{Path(target).name}.*.tmp"))) == (point != "renamed")
    assert (run / "summary.json").exists() == (target == "summary.json" and point == "renamed")

    rc, out = reslab_train("train", "--resume", str(run), cwd=tmp_path)
    assert rc == 0, out[-3000:]
    if target == "summary.json" and point == "renamed":  # every file was written: the run is finished
        assert f"{run} is finished: nothing to resume" in out
    elif landed_before_kill(target, point):
        assert f"resuming {run} from ckpt-" in out
    else:
        assert "starting from step 0" in out
    assert leftovers(run) == []
    weights, expected = (load_file(str(r / "weights.safetensors")) for r in (run, reference))
    assert weights.keys() == expected.keys()
    assert [k for k in weights if not torch.equal(weights[k], expected[k])] == []
    assert final_metrics(run) == final_metrics(reference)
    assert RunDir(run).read_summary().final.keys() == RunDir(reference).read_summary().final.keys()
