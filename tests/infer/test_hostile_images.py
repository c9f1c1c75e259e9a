"""Hostile images: a tiny PNG of extreme aspect ratio is refused with one line, in bounded memory,
by `reslab predict` (a subprocess whose memory is measured and capped) and `reslab serve` (a
413/422 answer, and the server goes on); a corrupt image in a streamed ImageFolder run stops it
with one line naming the file."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from dataset_files import write_image_tree
from PIL import Image

LINUX = sys.platform.startswith("linux")
GIB = 1024**3
# Run as `python -m reslab`, printing the process's peak virtual size (VmPeak) on stderr at exit.
PEAK_WRAPPER = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    line = [s for s in open('/proc/self/status') if s.startswith('VmPeak')][0]\n"
    "    print('test-vmpeak-kb', line.split()[1], file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "sys.argv = ['reslab', *sys.argv[1:]]\n"
    "runpy.run_module('reslab', run_name='__main__')\n"
)


def strip_png(path: Path, width: int) -> Path:
    """A grey width x 1 PNG: zlib squeezes the constant row to a few KB."""
    Image.new("L", (width, 1), 200).save(path, optimize=True)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-images")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(root / "a.png")
    Image.new("RGB", (36, 48), (30, 30, 200)).save(root / "b.png")
    strip_png(root / "strip.png", 2_000_000)
    strip_png(root / "strip4m.png", 4_000_000)
    return root


def run_measured(args: list[str], *, address_space: int | None = None, wrapper: bool = False):
    """(exit status, stdout, stderr, peak RSS in bytes) of `python -m reslab ARGS`, optionally under
    RLIMIT_AS. The peak RSS is this child's own (os.wait4), not the maximum over all children."""

    def limit() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    command = [sys.executable, "-c", PEAK_WRAPPER, *args] if wrapper else [sys.executable, "-m", "reslab", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, preexec_fn=limit, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.skipif(not LINUX, reason="needs /proc, RLIMIT_AS and wait4's rusage (Linux)")
def test_predict_refuses_strip_images_in_bounded_memory(weights_file: Path, images: Path) -> None:
    for name in ("strip.png", "strip4m.png"):
        assert (images / name).stat().st_size < 5_000  # 2 KB and 4 KB on disk...
    # ...that resized to the 32-pixel shorter side would be 64,000,000 x 32 and 128,000,000 x 32
    # RGB: 6.1 GB and 12.3 GB.
    needed_by_resize = 2_000_000 * 32 * 32 * 3

    # A normal batch first: what predict needs here (torch maps much virtual memory at import).
    rc, out, err, normal_rss = run_measured(
        ["predict", str(weights_file), str(images / "a.png"), str(images / "b.png")], wrapper=True
    )
    assert rc == 0, err
    normal_vm = int(err.split("test-vmpeak-kb")[1].split()[0]) * 1024
    cap = normal_vm + GIB  # a safe margin over a normal run, and less than either resize needs on top
    assert cap - normal_vm < needed_by_resize

    files = [images / "a.png", images / "strip.png", images / "strip4m.png", images / "b.png"]
    rc, out, err, strip_rss = run_measured(["predict", str(weights_file), *map(str, files), "--csv"], address_space=cap)
    assert rc == 1, err  # some files failed
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("reslab predict: error:")]
    assert len(errors) == 2, err
    for line, name in zip(errors, ("strip.png", "strip4m.png")):
        assert str(images / name) in line and "aspect ratio is too extreme" in line, line
    predicted = {line.split(",")[0] for line in out.splitlines()[1:]}
    assert predicted == {str(images / "a.png"), str(images / "b.png")}
    # The strips cost about nothing: within 150 MB of the normal batch's peak, against the
    # gigabytes a resize would have taken.
    assert strip_rss < normal_rss + 150 * 1024**2, (strip_rss, normal_rss)
    print(
        f"predict peak RSS: normal {normal_rss / 2**20:.0f} MiB, with the strips {strip_rss / 2**20:.0f} MiB; "
        f"RLIMIT_AS {cap / 2**20:.0f} MiB (normal VmPeak {normal_vm / 2**20:.0f} MiB)"
    )


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_serve_answers_a_strip_with_a_client_error_and_keeps_serving(weights_file: Path, images: Path) -> None:
    from fastapi.testclient import TestClient

    from reslab.infer.backends import load_predictor
    from reslab.infer.serve import ServeConfig, create_app

    predictor, meta, params = load_predictor(weights_file, precision="fp32")
    app = create_app(predictor, meta, ServeConfig(), num_params=params)
    good = (images / "a.png").read_bytes()
    with TestClient(app) as client:
        for name in ("strip.png", "strip4m.png"):
            response = client.post("/predict", files={"file": (name, (images / name).read_bytes())})
            assert response.status_code in (413, 422), response.text
            assert name in response.json()["detail"] and "aspect ratio" in response.json()["detail"]
            response = client.post("/predict", files={"file": ("a.png", good)})
            assert response.status_code == 200, response.text
            assert len(response.json()["predictions"]) == 5
        assert client.get("/health").json()["status"] == "ok"


def test_streamed_imagefolder_run_stops_at_a_corrupt_image_with_one_line(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "tree", size=(40, 36), per_class=8)
    corrupt = tmp_path / "tree" / "train" / "cat" / "img3.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not the rest of a PNG" * 8)
    args = [
        "train",
        "--data",
        "imagefolder",
        "--data-dir",
        str(tmp_path / "tree"),
        "--model",
        "resnet_cifar_8",
        "--epochs",
        "1",
        "--run-dir",
        str(tmp_path / "run"),
        *("--set", "data.in_memory=false", "--set", "data.workers=2", "--set", "data.split=full"),
        *("--set", "data.normalize=channel", "--set", "data.augment=scale", "--set", "data.image_size=32"),
        *("--set", "train.batch_size=4", "--set", "train.progress=false", "--set", "train.threads=1"),
    ]
    proc = subprocess.run([sys.executable, "-m", "reslab", *args], capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("reslab train: error: ")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "DataLoader" not in proc.stderr
    # the run's start-up lines (data, model) come first; then the error, on one line
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    assert str(corrupt) in errors[0]
