"""Runs that survive (issue 4): kill -9 or SIGTERM mid-epoch, resume, end bit-identical.

Each test starts `reslab train` as a subprocess on synthetic data with a checkpoint after every
step, interrupts it at a step drawn from a seeded RNG (so a failure can be replayed), resumes it
with `reslab train --resume`, and compares the final weights with those of an uninterrupted run
of the same command, bit for bit. The model has dropout and the run keeps an EMA, so the torch
RNG state and the EMA must be restored too, not only weights and optimizer.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import train_tiny_run, train_tiny_synthetic

from reslab.checkpoint import load_checkpoint
from reslab.rundir import RunDir

STEPS_PER_EPOCH = 8  # 64 images / batch 8
EPOCHS = 3
# A deterministic run that checkpoints every step, keeping three (test_modern_resume.py builds on it).
BASE_ARGS = [
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
    "data.synthetic_size=64",
    "--set",
    "train.threads=1",
    "--set",
    "train.checkpoint_every=1",
    "--set",
    "train.keep_checkpoints=3",
]
ARGS = [*BASE_ARGS, "--set", "optim.ema_decay=0.9", "--set", "model.drop_rate=0.3"]


def reslab(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "RESLAB_CACHE_DIR": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "reslab", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_for_checkpoint(proc: subprocess.Popen, ckpt_dir: Path, step: int, timeout: float = 120) -> None:
    """Poll until the checkpoint of `step` (or a later one) exists; the run goes on meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(int(p.stem.split("-")[1]) >= step for p in ckpt_dir.glob("ckpt-*.pt")):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {step}: {finish(proc)[1][-2000:]}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no checkpoint for step {step} within {timeout} s")


def newest_step(run: Path) -> int:
    return int(RunDir(run).list_checkpoints()[-1].stem.split("-")[1])


def assert_same_final_state(run: Path, reference: Path) -> None:
    """Final weights file, model, optimizer and EMA state equal bit for bit; same evaluations."""
    a, b = load_file(str(run / "weights.safetensors")), load_file(str(reference / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    x, y = (load_checkpoint(RunDir(r).list_checkpoints()[-1]) for r in (run, reference))
    assert x["state"] == y["state"]
    for part in ("model", "ema"):
        assert [k for k in x[part] if not torch.equal(x[part][k], y[part][k])] == [], part
    momentum = [
        (x["optimizer"]["state"][i]["momentum_buffer"], y["optimizer"]["state"][i]["momentum_buffer"])
        for i in y["optimizer"]["state"]
    ]
    assert momentum and all(torch.equal(p, q) for p, q in momentum)
    # Evaluations logged after the checkpoint by the interrupted process were dropped on resume.
    steps = [
        [json.loads(line)["step"] for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (run, reference)
    ]
    assert steps[0] == steps[1] == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run, shared by the tests of this module."""
    cwd = tmp_path_factory.mktemp("reference")
    rc, out = finish(reslab(*ARGS, "--run-dir", str(cwd / "run"), cwd=cwd))
    assert rc == 0, out[-3000:]
    return cwd / "run"


def test_kill_9_mid_epoch_then_resume_is_bit_exact(tmp_path: Path, reference: Path) -> None:
    kill_at = random.Random(4).randrange(STEPS_PER_EPOCH + 2, 2 * STEPS_PER_EPOCH - 3)  # epoch 1, batch 2..4
    run = tmp_path / "run"
    proc = reslab(*ARGS, "--run-dir", str(run), cwd=tmp_path)
    wait_for_checkpoint(proc, run / "checkpoints", kill_at)
    proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: possibly mid-step or mid-write
    rc, _ = finish(proc)
    assert rc == -signal.SIGKILL
    resume_from = newest_step(run)
    assert resume_from % STEPS_PER_EPOCH, "the kill should land mid-epoch"
    assert not (run / "weights.safetensors").exists()

    rc, out = finish(reslab("train", "--resume", str(run), cwd=tmp_path))
    assert rc == 0, out[-3000:]
    assert f"resuming {run} from ckpt-" in out
    assert not list((run / "checkpoints").glob(".*.tmp"))  # a write cut short by the kill is cleaned up
    assert_same_final_state(run, reference)


def test_sigterm_writes_checkpoint_and_resumes_cleanly(tmp_path: Path, reference: Path) -> None:
    stop_at = random.Random(5).randrange(2, STEPS_PER_EPOCH - 3)  # epoch 0, batch 2..4
    run = tmp_path / "run"
    proc = reslab(*ARGS, "--run-dir", str(run), cwd=tmp_path)
    wait_for_checkpoint(proc, run / "checkpoints", stop_at)
    proc.send_signal(signal.SIGTERM)
    rc, out = finish(proc)
    assert rc == 3, out[-3000:]  # stopped by a signal, checkpoint written
    assert "Traceback" not in out
    stopped = int(out.split("stopped by SIGTERM at step ")[1].split("/")[0])
    assert f"Resume with: reslab train --resume {run}" in out
    assert newest_step(run) == stopped and stopped % STEPS_PER_EPOCH
    assert load_checkpoint(RunDir(run).list_checkpoints()[-1])["state"]["batch_in_epoch"] == stopped

    rc, out = finish(reslab("train", "--resume", str(run), cwd=tmp_path))
    assert rc == 0, out[-3000:]
    assert f"from ckpt-{stopped:08d}.pt" in out and "warning" not in out
    assert_same_final_state(run, reference)


# ---- Stops at awkward moments (in-process: the test sends the signal to itself) ------------------

IN_PROCESS = ("train.threads=2", "train.checkpoint_every=3")  # 2 epochs of the tiny synthetic run (4 steps each)


def signal_during_evaluation(monkeypatch, *signals: signal.Signals) -> None:
    """Deliver `signals` to this process from inside the first evaluation (the end of epoch 0)."""
    from reslab.train import trainer

    real, pending = trainer.evaluate, list(signals)

    def evaluate(*args, **kwargs):
        while pending:
            os.kill(os.getpid(), pending.pop(0))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate)


def test_stop_between_epochs_then_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    from reslab.cli import main

    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    train_tiny_synthetic(tmp_path / "reference", *IN_PROCESS, epochs=2)
    run = tmp_path / "run"
    signal_during_evaluation(monkeypatch, signal.SIGTERM)
    train_tiny_synthetic(run, *IN_PROCESS, epochs=2, status=3)
    monkeypatch.undo()
    err = capsys.readouterr().err
    # The epoch is finished (evaluated, logged, checkpointed at its end), then the run stops.
    assert "stopped by SIGTERM at step 4/8" in err
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [4]
    newest = load_checkpoint(RunDir(run).list_checkpoints()[-1])["state"]
    assert (newest["step"], newest["epoch"], newest["batch_in_epoch"]) == (4, 1, 0)
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    # On resume, runtime settings (threads) may change; anything else given is ignored, with a note.
    threads = f"train.threads={torch.get_num_threads()}"
    assert main(["train", "--resume", str(run), "--set", threads, "--set", "optim.lr=9"]) == 0
    assert "--recipe and --set are ignored (except train.threads, train.progress)" in capsys.readouterr().err
    a, b = load_file(str(run / "weights.safetensors")), load_file(str(tmp_path / "reference" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_resume_takes_runtime_settings_only(tmp_path: Path) -> None:
    from reslab.config import load_config, save_config
    from reslab.train.loop import resolve_resume

    save_config(load_config("fast", ["train.threads=1"]), tmp_path / "config.yaml")
    cfg = resolve_resume(tmp_path, ["train.threads=2", "train.progress=false"])
    assert (cfg.train.threads, cfg.train.progress, cfg.optim.lr) == (2, False, load_config("fast").optim.lr)


def test_second_ctrl_c_quits_at_once(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))
    # A shell's background job starts with SIGINT ignored, which reslab keeps; test the usual case.
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signal_during_evaluation(monkeypatch, signal.SIGINT, signal.SIGINT)
        train_tiny_synthetic(tmp_path / "run", *IN_PROCESS, epochs=2, status=130)
    finally:
        restored = signal.signal(signal.SIGINT, outer)
    assert "interrupted" in capsys.readouterr().err
    assert restored is signal.default_int_handler  # reslab put back the handler it found


def test_an_ignored_sigint_stays_ignored(tmp_path: Path, monkeypatch) -> None:
    """nohup / background jobs: a SIGINT ignored by the parent is not turned into a stop request."""
    from reslab.train.signals import StopOnSignal

    outer = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopOnSignal() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.pending == ""
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)


def test_streamed_image_folder_stops_and_resumes_bit_exact(tmp_path: Path, monkeypatch, capsys) -> None:
    """data.in_memory=false (DataLoader over an ImageFolder tree): a stop at the end of epoch 0 and
    a resume end with the same weights as an uninterrupted run. With workers=0 the random
    augmentation draws from the process RNG, which the checkpoint restores."""
    from dataset_files import write_image_tree

    from reslab.cli import main

    write_image_tree(tmp_path / "tree", size=(40, 36), per_class=8, classes=("a", "b", "c"))
    settings = ("data.split=full", "data.in_memory=false", "data.image_size=32", "data.augment=scale")
    settings += ("data.normalize=channel", "data.workers=0", "train.threads=2")
    train_tiny_run(tmp_path / "reference", tmp_path / "tree", *settings, epochs=2)
    run = tmp_path / "run"
    signal_during_evaluation(monkeypatch, signal.SIGTERM)
    train_tiny_run(run, tmp_path / "tree", *settings, epochs=2, status=3)
    monkeypatch.undo()
    assert "stopped by SIGTERM at step 3/6" in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 0
    a, b = load_file(str(run / "weights.safetensors")), load_file(str(tmp_path / "reference" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
