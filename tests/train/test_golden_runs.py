"""Golden runs: short deterministic trainings whose final weights must not change by accident.

Each run trains through the CLI (in `portable_reslab.py`'s host-independent numerics) and is
reduced to the SHA-256 of its final weights (every tensor of weights.safetensors: name, dtype,
shape, bytes) and its final evaluation numbers. golden_runs.json holds the values recorded with
the code before the "one coherent core" refactor (issue 11); a change that alters them on purpose
records new values with

    python tests/train/test_golden_runs.py --record NAME ...

and says which and why in its commit message.

The runs: resnet20 with the cifar-paper recipe on tiny CIFAR-10 pickles; fast_resnet10 with the
fast recipe on synthetic data; resnet20 streamed from an ImageFolder tree of odd-sized PNGs by
DataLoader workers; wrn_10_1 with dropout and EMA, which the kill test also runs killed with
SIGKILL after a checkpoint and resumed: it must end on the uninterrupted run's digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).parent
GOLDEN = HERE / "golden_runs.json"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "data"))

from dataset_files import write_cifar  # noqa: E402
from portable_reslab import PORTABLE_ENV  # noqa: E402

COMMON = ["--no-progress", "--deterministic", "--seed", "0", "--set", "train.threads=1"]
RUNS: dict[str, list[str]] = {
    "cifar-paper-resnet20": [
        "train",
        "--recipe",
        "cifar-paper",
        "--data-dir",
        "{data}",
        "--iterations",
        "12",
        "--set",
        "data.val_size=32",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.eval_every=6",
        "--set",
        "schedule.milestones=[6,9]",
    ],
    "fast-fast_resnet10-synthetic": [
        "train",
        "--recipe",
        "fast",
        "--data",
        "synthetic",
        "--epochs",
        "2.5",
        "--set",
        "data.synthetic_size=128",
        "--set",
        "train.batch_size=32",
        "--set",
        "train.precision=fp32",  # the recipe's auto would pick bf16 on CPUs that have it natively
    ],
    "streamed-imagefolder-resnet20": [
        "train",
        "--data",
        "imagefolder",
        "--data-dir",
        "{data}",
        "--model",
        "resnet20",
        "--iterations",
        "6",
        "--set",
        "data.in_memory=false",
        "--set",
        "data.split=full",
        "--set",
        "data.normalize=channel",
        "--set",
        "data.augment=scale",
        "--set",
        "data.image_size=32",
        "--set",
        "data.workers=2",
        "--set",
        "train.batch_size=8",
        "--set",
        "schedule.name=constant",
        "--set",
        "optim.lr=0.05",
    ],
    "resume-wrn_10_1-synthetic": [
        "train",
        "--data",
        "synthetic",
        "--model",
        "wrn_10_1",
        "--epochs",
        "3",
        "--set",
        "train.batch_size=8",
        "--set",
        "data.split=full",
        "--set",
        "data.synthetic_size=64",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.keep_checkpoints=3",
        "--set",
        "optim.ema_decay=0.9",
        "--set",
        "model.drop_rate=0.3",
    ],
}


def write_odd_tree(root: Path) -> None:
    """root/{train,val}/{a,b}/*.png: random RGB images of odd sizes (lossless, so decoding is exact)."""
    rng = np.random.default_rng(7)
    sizes = [(40, 36), (36, 48), (50, 30), (33, 33)]
    for split, per_class in (("train", 12), ("val", 4)):
        for class_name in ("a", "b"):
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def prepare(name: str, work: Path) -> Path:
    """The data a run reads, written under `work`; returns the data directory."""
    data = work / "data"
    if name.startswith("cifar"):
        write_cifar(data, "cifar10", per_batch=32)
    elif name.startswith("streamed"):
        write_odd_tree(data)
    return data


def portable(args: list[str], work: Path) -> subprocess.Popen:
    env = {**os.environ, **PORTABLE_ENV, "RESLAB_CACHE_DIR": str(work / "cache"), "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, str(HERE / "portable_reslab.py"), *args],
        cwd=work,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-3000:]}\n{err[-3000:]}"
    return out + err


def weights_digest(path: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def outcome(run_dir: Path) -> dict:
    """What a golden run is reduced to: the weights' digest and the final evaluation's numbers."""
    summary = json.loads((run_dir / "summary.json").read_text())
    final = {k: v for k, v in summary["final"].items() if k.endswith(("error", "loss"))}
    return {
        "weights_sha256": weights_digest(run_dir / "weights.safetensors"),
        "final": final,
        "steps": summary["steps"],
    }


def command(name: str, data: Path, run_dir: Path) -> list[str]:
    return [a.replace("{data}", str(data)) for a in RUNS[name]] + COMMON + ["--run-dir", str(run_dir)]


def run_golden(name: str, work: Path) -> dict:
    data = prepare(name, work)
    run_dir = work / "run"
    finish(portable(command(name, data, run_dir), work))
    return outcome(run_dir)


def recorded() -> dict:
    return json.loads(GOLDEN.read_text())["runs"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in RUNS if not n.startswith("resume")])
def test_golden_run(name: str, tmp_path: Path) -> None:
    assert run_golden(name, tmp_path) == recorded()[name]


@pytest.mark.slow
def test_golden_run_killed_and_resumed(tmp_path: Path) -> None:
    """SIGKILL right after the checkpoint of step 13 (of 24), then --resume: the uninterrupted digest."""
    name = "resume-wrn_10_1-synthetic"
    data = prepare(name, tmp_path)
    run_dir = tmp_path / "run"
    proc = portable(command(name, data, run_dir), tmp_path)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "ckpt-00000013.pt.sha256").exists():
        assert proc.poll() is None, f"the run ended before step 13: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint of step 13 within 300 s"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (run_dir / "summary.json").exists()
    finish(portable(["train", "--resume", str(run_dir), "--set", "train.threads=1"], tmp_path))
    assert outcome(run_dir) == recorded()[name]


def _record(names: list[str]) -> None:
    import tempfile

    data = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {"runs": {}}
    for name in names or list(RUNS):
        with tempfile.TemporaryDirectory() as tmp:
            data["runs"][name] = run_golden(name, Path(tmp))
        print(name, data["runs"][name], flush=True)
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--record"]:
        raise SystemExit("usage: python tests/train/test_golden_runs.py --record [NAME ...]")
    _record(sys.argv[2:])
