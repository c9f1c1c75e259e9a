"""`reslab embed`: one pooled feature row per image, preprocessed as `predict` does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reslab.cli import main
from reslab.data.preprocess import load_image
from reslab.weights import load_weights

FILES = ("cmyk.jpg", "palette.png", "grey.png", "exif_rotated.jpg", "image.bmp")


def reference_rows(weights_file: Path, paths: list[Path]) -> torch.Tensor:
    """forward_head(pre_logits=True) of each image on its own, through the documented steps:
    decode + resize + crop (load_image), (pixel / 255 - mean) / std, the eval-mode network."""
    weights = load_weights(weights_file)
    meta, model = weights.meta, weights.model
    rows = []
    for path in paths:
        u8 = load_image(path, in_chans=meta.in_chans, input_size=meta.input_size, resize=meta.resize)
        x = (u8[None].float() / 255.0 - weights.stats.mean) / weights.stats.std
        with torch.inference_mode():
            rows.append(model.forward_head(model.forward_features(x), pre_logits=True)[0])
    return torch.stack(rows)


def test_rows_are_pre_logits_features_in_file_order(weights_file: Path, corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "feats.npy"
    paths = [corpus / name for name in FILES]
    assert main(["embed", str(weights_file), *map(str, paths), "-o", str(out), "--batch-size", "2"]) == 0
    assert "5 x 64 float32" in capsys.readouterr().out
    rows = np.load(out)
    assert rows.dtype == np.float32 and rows.shape == (5, 64)  # resnet20: 64 features
    info = json.loads((tmp_path / "feats.json").read_text())
    assert info["rows"] == [str(p) for p in paths] and info["failed"] == [] and info["shape"] == [5, 64]
    expected = reference_rows(weights_file, paths)
    torch.testing.assert_close(torch.from_numpy(rows), expected, rtol=1e-5, atol=1e-5)
    # rows differ between images: a constant (or mixed-up) output would not match each one
    assert not torch.allclose(expected[0], expected[1])


def test_unreadable_files_get_no_row_and_exit_1(weights_file: Path, corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "f.npy"
    files = [str(corpus / "truncated.jpg"), str(corpus / "grey.png"), str(tmp_path / "gone.png")]
    assert main(["embed", str(weights_file), *files, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "truncated.jpg" in err and "gone.png: no such file or folder" in err and "2 file(s) failed" in err
    info = json.loads((tmp_path / "f.json").read_text())
    assert info["rows"] == [files[1]] and [f["file"] for f in info["failed"]] == [files[0], files[2]]
    torch.testing.assert_close(
        torch.from_numpy(np.load(out)), reference_rows(weights_file, [Path(files[1])]), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("output", ["feats.txt", "feats"])
def test_output_must_be_npy(weights_file: Path, corpus: Path, tmp_path: Path, output: str, capsys) -> None:
    assert main(["embed", str(weights_file), str(corpus / "grey.png"), "-o", str(tmp_path / output)]) == 2
    assert "name a .npy file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
