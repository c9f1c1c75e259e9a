"""Checkpoints (issue 4): full state, damage detection and fallback, refusal of unsafe pickles,
a full disk, and NaN/inf handling. Runs are in-process on a few synthetic images."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import train_tiny_synthetic

from reslab import __version__
from reslab import checkpoint as ckpt
from reslab.cli import main
from reslab.data import InMemoryTrainBatches
from reslab.errors import CheckpointError
from reslab.models.interop import from_torchvision, read_state_dict
from reslab.rundir import RunDir

# The tiny synthetic run: 32 images / batch 8 = 4 steps per epoch; 2 epochs; a checkpoint after every step.
SETTINGS = ("train.threads=2", "train.checkpoint_every=1", "train.keep_checkpoints=4")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_CACHE_DIR", str(tmp_path / "cache"))


def train(run: Path, *settings: str, status: int = 0, epochs: float = 2) -> Path:
    return train_tiny_synthetic(run, *SETTINGS, *settings, epochs=epochs, status=status)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "weights.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    x, y = weights(a), weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def step_of(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


# ---- What a checkpoint holds; atomic writes ------------------------------------------------------


def test_checkpoint_holds_the_full_state_as_plain_values(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    train(run, "optim.ema_decay=0.9")
    checkpoints = RunDir(run).list_checkpoints()
    assert [step_of(p) for p in checkpoints] == [5, 6, 7, 8]  # keep_checkpoints=4
    assert all(ckpt.verify(p) is None for p in checkpoints)
    mid = checkpoints[1]  # step 6: epoch 1, batch 2
    # Nothing in it needs more than torch's weights_only unpickler: no code can hide there.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(mid)) == []
    payload = ckpt.load_checkpoint(mid)
    assert {
        "model",
        "optimizer",
        "ema",
        "state",
        "rng",
        "data_order",
        "config",
        "reslab_version",
        "world_size",
    } <= payload.keys()
    assert payload["state"]["step"] == 6 and payload["state"]["epoch"] == 1
    assert payload["state"]["batch_in_epoch"] == 2 and "plateau_decays" in payload["state"]["schedule"]
    assert set(payload["rng"][0]) >= {"python", "numpy", "torch"} and payload["world_size"] == 1
    assert payload["data_order"][0].shape == (32,)
    assert payload["config"]["train"]["checkpoint_every"] == 1 and payload["reslab_version"] == __version__
    assert payload["optimizer"]["state"]  # momentum buffers


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_full_disk_leaves_previous_checkpoint_usable(tmp_path, monkeypatch, failing) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    ckpt.save_checkpoint(RunDir(tmp_path), 1, {"w": torch.ones(3)})

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, failing, no_space)
    with pytest.raises(CheckpointError) as info:
        ckpt.save_checkpoint(RunDir(tmp_path), 2, {"w": torch.zeros(3)})
    monkeypatch.undo()
    message = str(info.value)
    assert "No space left on device" in message and "ckpt-00000001.pt is intact" in message
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["ckpt-00000001.pt", "ckpt-00000001.pt.sha256"]
    assert torch.equal(ckpt.load_checkpoint(RunDir(tmp_path).list_checkpoints()[-1])["w"], torch.ones(3))


def test_full_disk_during_training_stops_with_resume_hint(tmp_path, monkeypatch, capsys) -> None:
    reference, run = tmp_path / "reference", tmp_path / "run"
    train(reference)
    real_replace = os.replace

    def replace(src, dst):  # the disk fills up when step 3's checkpoint is written
        if "ckpt-00000003" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    capsys.readouterr()
    train(run, status=2)
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert "could not write checkpoint" in err and "No space left on device" in err
    assert "ckpt-00000002.pt is intact" in err and f"reslab train --resume {run}" in err
    assert "Traceback" not in err
    assert [step_of(p) for p in RunDir(run).list_checkpoints()] == [1, 2]
    assert main(["train", "--resume", str(run)]) == 0
    assert "from ckpt-00000002.pt" in capsys.readouterr().err
    assert same_weights(run, reference)


# ---- Damaged checkpoints -------------------------------------------------------------------------


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_skips_truncated_and_flipped_checkpoints(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    train(run)
    finished = tmp_path / "finished.safetensors"
    shutil.copy(run / "weights.safetensors", finished)
    (run / "weights.safetensors").unlink()
    newest, second = RunDir(run).list_checkpoints()[-1:-3:-1]  # steps 8 and 7
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    flip_byte(second, second.stat().st_size // 2)  # one flipped byte, same length

    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    warned = " ".join(line for line in err.splitlines() if "falling back" in line)
    assert "ckpt-00000008.pt" in warned and "ckpt-00000007.pt" in warned and "checksum" in warned
    assert "from ckpt-00000006.pt" in err
    assert "set aside damaged ckpt-00000008.pt" in err and (run / "checkpoints" / "ckpt-00000007.pt.damaged").exists()
    # The resumed run redid steps 7 and 8 and ended where the undamaged run did.
    assert [step_of(p) for p in RunDir(run).list_checkpoints()] == [5, 6, 7, 8]
    assert load_file(str(finished)).keys() == weights(run).keys()
    assert all(torch.equal(v, weights(run)[k]) for k, v in load_file(str(finished)).items())

    # Damage every checkpoint: resume stops with one clear line naming them. (Without its summary:
    # a finished run is not resumed at all.)
    (run / "summary.json").unlink()
    for path in RunDir(run).list_checkpoints():
        flip_byte(path, 100)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err and "ckpt-00000005.pt" in err and "Traceback" not in err


def test_missing_checksum_is_damage(tmp_path) -> None:
    path = ckpt.save_checkpoint(RunDir(tmp_path), 1, {"w": torch.ones(1)})
    path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(CheckpointError, match="checksum file is missing"):
        ckpt.load_checkpoint(path)


# ---- Files that would run code -------------------------------------------------------------------


class MakesMarker:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_evil(path: Path, marker: Path, *, zip_format: bool = True) -> Path:
    payload = {"model": {"conv1.weight": torch.zeros(1)}, "state": MakesMarker(marker)}
    if zip_format:
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)  # the protocol torch's unpickler expects
    # Prove the file is live: a plain unpickling does create the marker.
    with open(path, "rb") as f:
        pickle.loads(f.read()) if not zip_format else torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "bare-pickle"])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, capsys, zip_format) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    train(run, epochs=0.25)  # a real run directory: config.yaml, one checkpoint
    (run / "summary.json").unlink()  # not finished: a resume reads its checkpoint
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    evil = write_evil(RunDir(run).checkpoint(1), marker, zip_format=zip_format)
    # A matching checksum, so the refusal comes from the unpickler, not the damage check.
    evil.with_name(evil.name + ".sha256").write_text(hashlib.sha256(evil.read_bytes()).hexdigest() + "\n")

    with pytest.raises(CheckpointError, match="refused") as info:
        ckpt.load_checkpoint(evil)
    if zip_format:
        assert "io.open" in str(info.value)  # names what it would have called (builtins.open)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "never runs code" in err
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "bare-pickle"])
def test_torchvision_file_that_would_run_code_is_refused(tmp_path, capsys, zip_format) -> None:
    marker = tmp_path / "pwned"
    evil = write_evil(tmp_path / "resnet18.pth", marker, zip_format=zip_format)
    for load in (read_state_dict, from_torchvision):
        with pytest.raises(CheckpointError, match="never runs code"):
            load(evil)
    train(tmp_path / "run", f"model.pretrained={evil}", status=2)  # fine-tuning from it
    assert "never runs code" in capsys.readouterr().err
    assert not marker.exists()


# ---- NaN / inf -----------------------------------------------------------------------------------


@pytest.fixture
def nan_batches(monkeypatch):
    """Put a NaN pixel into the given (epoch, batch) training batches."""
    bad: set[tuple[int, int]] = set()
    original = InMemoryTrainBatches.epoch

    def poisoned(self, epoch, start_batch=0):
        for i, (x, y) in enumerate(original(self, epoch, start_batch), start=start_batch):
            if (epoch, i) in bad:  # training batches only: the class patched is theirs
                x = x.clone()
                x[0, 0, 0, 0] = float("nan")
            yield x, y

    monkeypatch.setattr(InMemoryTrainBatches, "epoch", poisoned)
    return bad


def test_nan_skip_mode_skips_counts_and_keeps_batchnorm_clean(tmp_path, capsys, nan_batches) -> None:
    nan_batches.add((0, 2))
    run = tmp_path / "run"
    train(run, "train.on_nonfinite=skip")
    captured = capsys.readouterr()
    assert "skipped: non-finite loss (nan) at step 2 (epoch 0, batch 2) (1 of at most 10 skips)" in captured.err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["steps"] == 8
    # The skipped batch's forward pass did not leave NaN in the BN running statistics.
    assert all(torch.isfinite(v).all() for v in weights(run).values())
    assert 0.0 <= summary["final"]["test_loss"] < float("inf")


def test_nan_skip_mode_gives_up_after_max_skips(tmp_path, capsys, nan_batches) -> None:
    nan_batches.update({(0, 1), (0, 2), (0, 3)})
    run = tmp_path / "run"
    train(run, "train.on_nonfinite=skip", "train.max_skips=2", status=2)
    err = capsys.readouterr().err
    assert "non-finite loss (nan) at step 1 (epoch 0, batch 3); stopped after 2 skipped steps" in err
    assert [step_of(p) for p in RunDir(run).list_checkpoints()] == [1]


def test_nan_stop_mode_names_the_step_and_keeps_the_checkpoint(tmp_path, capsys, nan_batches) -> None:
    nan_batches.add((1, 1))  # epoch 1, batch 1 = step 5
    run = tmp_path / "run"
    train(run, status=2)
    err = capsys.readouterr().err
    assert "non-finite loss (nan) at step 5 (epoch 1, batch 1); stopped" in err and "Traceback" not in err
    newest = RunDir(run).list_checkpoints()[-1]
    assert step_of(newest) == 5 and ckpt.load_checkpoint(newest)["state"]["step"] == 5
    assert not (run / "weights.safetensors").exists()
