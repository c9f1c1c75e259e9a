"""Shipped weights evaluate to the accuracy recorded beside them, on the real test set (issue 6)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from reslab.cli import main
from reslab.weights import PRETRAINED_DIR, read_meta

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
SHIPPED = sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))


def test_something_is_shipped_with_provenance() -> None:
    assert SHIPPED
    for name in SHIPPED:
        meta = read_meta(name)
        assert meta.command.startswith("reslab train") and len(meta.data_sha256) == 64
        assert "test_top1_error" in meta.metrics and meta.metrics["eval_tta_flip"] in (0.0, 1.0)
        assert (PRETRAINED_DIR / f"{name}.safetensors").stat().st_mode & stat.S_IROTH


@pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist (make test installs it)")
@pytest.mark.parametrize("name", [n for n in SHIPPED if "fashion-mnist" in n])
def test_shipped_weights_reach_their_recorded_accuracy(name: str, tmp_path, capsys) -> None:
    from reslab.data.datasets import dataset_sha256

    meta = read_meta(name)
    assert meta.data_sha256 == dataset_sha256("fashion-mnist", str(FMNIST.parent))
    # Evaluate the way the recorded number was measured (with or without flip TTA).
    tta = "flip" if meta.metrics["eval_tta_flip"] else "none"
    rc = main(
        [
            "eval",
            name,
            "--data",
            "fashion-mnist",
            "--data-dir",
            str(FMNIST.parent),
            "--tta",
            tta,
            "--json",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["images"] == 10_000
    # Same weights, same images, same flip TTA: only kernel-level float differences remain.
    assert report["top1_error"] == pytest.approx(meta.metrics["test_top1_error"], abs=0.0005)
