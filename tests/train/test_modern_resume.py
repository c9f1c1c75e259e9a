"""kill -9 mid-epoch with every modern training feature on, resume: bit-identical to a run that was
never stopped (CPU, deterministic). The features: stochastic depth, gradient accumulation, an EMA
updated every 3 steps, a warm-up in epochs, TrivialAugment, random erasing, mixup + cutmix and
repeated augmentation, each drawing from an RNG (or counting steps) that the checkpoint must carry.

The harness is test_resume.py's (subprocess, seeded kill step, final state compared bit for bit).
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from test_resume import (
    BASE_ARGS,
    STEPS_PER_EPOCH,
    assert_same_final_state,
    finish,
    newest_step,
    reslab,
    wait_for_checkpoint,
)

MODERN = [
    *BASE_ARGS,
    *("--set", "model.drop_path_rate=0.3"),
    *("--set", "train.accum_steps=2"),
    *("--set", "optim.ema_decay=0.9"),
    *("--set", "optim.ema_every=3"),
    *("--set", "schedule.name=cosine"),
    *("--set", "schedule.warmup_epochs=1"),
    *("--set", "schedule.warmup_lr=0.01"),
    *("--set", "optim.label_smoothing=0.1"),
    *("--set", "data.policy=trivialaugment"),
    *("--set", "data.random_erasing=0.5"),
    *("--set", "data.mixup_alpha=0.2"),
    *("--set", "data.cutmix_alpha=1.0"),
    *("--set", "data.repeats=2"),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("reference")
    rc, out = finish(reslab(*MODERN, "--run-dir", str(cwd / "run"), cwd=cwd))
    assert rc == 0, out[-3000:]
    assert "EMA 0.9 every 3 steps, stochastic depth 0.3" in out and "in 2 micro-batches" in out
    for feature in ("TrivialAugmentWide", "random erasing p=0.5", "mixup alpha=0.2 or cutmix alpha=1", "2 times"):
        assert feature in out, feature  # the data features are on too
    return cwd / "run"


def test_kill_9_with_every_modern_feature_then_resume_is_bit_exact(tmp_path: Path, reference: Path) -> None:
    kill_at = random.Random(6).randrange(STEPS_PER_EPOCH + 2, 2 * STEPS_PER_EPOCH - 3)  # epoch 1, batch 2..4
    run = tmp_path / "run"
    proc = reslab(*MODERN, "--run-dir", str(run), cwd=tmp_path)
    wait_for_checkpoint(proc, run / "checkpoints", kill_at)
    proc.send_signal(signal.SIGKILL)
    rc, _ = finish(proc)
    assert rc == -signal.SIGKILL
    assert newest_step(run) % STEPS_PER_EPOCH, "the kill should land mid-epoch"

    rc, out = finish(reslab("train", "--resume", str(run), cwd=tmp_path))
    assert rc == 0, out[-3000:]
    assert f"resuming {run} from ckpt-" in out and "warning" not in out
    assert_same_final_state(run, reference)
