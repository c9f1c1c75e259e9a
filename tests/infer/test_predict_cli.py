"""`reslab predict` end to end over the awkward-file corpus: once as a user runs it (a subprocess),
the other cases in process through the same `reslab.cli.main`."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from infer_testdata import BAD_FILES, CLASSES, CORPUS_MAX_PIXELS, GOOD_FILES

from reslab.cli import main as reslab_main
from reslab.data.preprocess import load_image
from reslab.infer.fast import FastPredictor
from reslab.infer.predict import collect_images, format_csv, format_table, predict_files
from reslab.weights import load_weights


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reslab", "predict", *args], capture_output=True, text=True, timeout=120
    )


def test_predict_folder_reports_bad_files_and_predicts_the_rest(weights_file: Path, corpus: Path) -> None:
    proc = run_predict(
        str(weights_file),
        str(corpus),
        "--json",
        "--top-k",
        "3",
        "--batch-size",
        "5",
        "--max-pixels",
        str(CORPUS_MAX_PIXELS),
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("reslab predict: error:")]
    assert len(errors) == len(BAD_FILES)
    for name in BAD_FILES:  # one line per bad file, naming it
        assert sum(str(corpus / name) in line for line in errors) == 1
    results = {Path(r["file"]).name: r for r in json.loads(proc.stdout)}
    assert set(results) == set(GOOD_FILES) | set(BAD_FILES)  # notes.txt is not an image suffix
    for name in GOOD_FILES:
        top = results[name]["predictions"]
        assert len(top) == 3 and all(p["class"] == CLASSES[p["class_id"]] for p in top)
        probs = [p["probability"] for p in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-5
    assert all("error" in results[name] for name in BAD_FILES)


def test_predict_table_globs_and_missing_files(weights_file: Path, corpus: Path, capsys: pytest.CaptureFixture) -> None:
    # In process (same code path as the command line, without paying for a second interpreter).
    files = [str(corpus / "image.bmp"), str(corpus / "grey.png")]
    status = reslab_main(
        [
            "predict",
            str(weights_file),
            *files,
            str(corpus / "one_*.png"),
            str(corpus / "nothing*.jpg"),
            str(corpus / "gone.png"),
            "-k",
            "2",
            "--precision",
            "fp32",
        ]
    )
    assert status == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert f"reslab predict: error: {corpus / 'nothing*.jpg'}: no files match this pattern" in errors
    assert f"reslab predict: error: {corpus / 'gone.png'}: no such file or folder" in errors
    lines = captured.out.splitlines()
    assert lines[0].split() == ["file", "rank", "class", "probability"] and len(lines) == 1 + 3 * 2
    assert lines[5].split()[0] == str(corpus / "one_pixel.png")  # the glob's match
    _w = load_weights(weights_file)
    model, mean, std = _w.model, _w.stats.mean, _w.stats.std
    x = torch.stack([load_image(f, in_chans=3, input_size=32) for f in files])
    with torch.inference_mode():
        probs = torch.softmax(model((x / 255.0 - mean) / std), dim=1)
    best = probs.argmax(1)
    assert lines[1].split()[:3] == [files[0], "1", CLASSES[best[0]]]
    assert lines[3].split()[:3] == [files[1], "1", CLASSES[best[1]]]
    assert abs(float(lines[1].split()[3]) - probs[0, best[0]].item()) < 1e-4


def test_predict_files_in_process_keeps_order_and_errors(weights_file: Path, corpus: Path) -> None:
    _w = load_weights(weights_file)
    model, meta = _w.model, _w.meta
    predictor = FastPredictor(model, _w.preprocess, precision="fp32")
    files = collect_images([str(corpus / "text.jpg"), str(corpus / "one_pixel.png"), str(corpus / "gone.png")])
    out = list(predict_files(predictor, meta, files, batch_size=2, k=20))
    assert [Path(p.file).name for p in out] == ["text.jpg", "one_pixel.png", "gone.png"]
    assert out[0].error and out[2].error and out[1].error is None
    assert len(out[1].top) == 10  # k is capped at the number of classes
    rows = list(csv.DictReader(io.StringIO(format_csv(out))))
    assert len(rows) == 10 and {r["file"] for r in rows} == {files[1][0]}
    assert rows[0]["class"] == CLASSES[int(rows[0]["class_id"])] and rows[0]["rank"] == "1"
    table = format_table(out).splitlines()
    assert len(table) == 11 and table[1].split()[0] == files[1][0] and table[2].split()[0] == "2"
