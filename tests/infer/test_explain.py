"""Grad-CAM: it localises the evidence (a small net trained here, in seconds), and `reslab predict
--explain` and `serve`'s POST /explain write and return heatmap PNGs, with one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from infer_testdata import CLASSES, make_weights, random_png, solid_png
from PIL import Image

from reslab.cli import main as reslab_main
from reslab.data.norm import NormStats
from reslab.data.preprocess import Preprocess
from reslab.infer.backends import load_predictor
from reslab.infer.explain import SUFFIX, GradCam, overlay_names
from reslab.infer.serve import ServeConfig, create_app
from reslab.models import create_model
from reslab.weights import load_weights

SIZE, BAR = 24, 8  # image side; a bar is BAR x 2 pixels


def bar_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 (n, 1, S, S), class (n,), side (n,): 0 left, 1 right). Dim noise with one bright bar
    in a random place of a random half: class 0 a horizontal bar, class 1 a vertical one. The two
    classes have the same brightness, so only the bar itself tells them apart."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (n, 1, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 2, (n,), generator=gen)
    sides = torch.randint(0, 2, (n,), generator=gen)
    half = SIZE // 2
    for i in range(n):
        h, w = (2, BAR) if labels[i] == 0 else (BAR, 2)
        top = int(torch.randint(0, SIZE - h + 1, (1,), generator=gen))
        left = int(sides[i]) * half + int(torch.randint(0, half - w + 1, (1,), generator=gen))
        x[i, 0, top : top + h, left : left + w] = 255
    return x, labels, sides


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread; more only contend on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_grad_cam_puts_the_heat_on_the_half_with_the_evidence(one_thread) -> None:
    """A resnet_cifar_8 trained here (60 steps, ~5 s) to tell the bars apart; Grad-CAM of its top-1
    class on held-out images puts >= 70% of the map on the bar's half (measured: ~88%; a map
    blind to the evidence gives 50%, a mirrored one ~12%)."""
    torch.manual_seed(0)
    stats = NormStats(torch.full((1, 1, 1), 0.2), torch.full((1, 1, 1), 0.3))
    model = create_model("resnet_cifar_8", num_classes=2, in_chans=1)
    x, y, _ = bar_images(512, seed=0)
    inputs = stats.apply(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        batch = torch.randint(0, len(x), (32,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(model(inputs[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    held_x, held_y, held_side = bar_images(128, seed=1)  # images the net never saw
    cam = GradCam(model, Preprocess(1, SIZE, "shorter-center-crop", stats))
    maps, classes = cam(held_x)
    assert (classes == held_y).float().mean() >= 0.9  # the net learned the task
    assert maps.shape == (128, SIZE, SIZE) and maps.min() >= 0 and maps.amax((1, 2)).max() <= 1
    half = SIZE // 2
    left = maps[..., :half].sum((1, 2)) / maps.sum((1, 2)).clamp(min=1e-12)
    on_bar_side = torch.where(held_side == 0, left, 1 - left)
    assert on_bar_side.mean() >= 0.7, on_bar_side.mean()


# ---- predict --explain ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights(tmp_path_factory.mktemp("w") / "w.safetensors", name="resnet_cifar_8")


def png(seed: int) -> bytes:
    return random_png((40, 32), seed)


def test_overlay_names_keep_two_images_of_one_stem_apart() -> None:
    names = overlay_names(["a/cat.png", "b/cat.jpg", "dog.png", "c/cat.png"])
    assert names == [f"cat{SUFFIX}", f"cat-2{SUFFIX}", f"dog{SUFFIX}", f"cat-3{SUFFIX}"]


def test_predict_explain_writes_an_overlay_per_image(weights: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "y.png"]
    for i, f in enumerate(files):
        f.write_bytes(png(i))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "cams"
    args = ["predict", str(weights), *map(str, files), str(broken), "--explain", str(out), "--backend", "torch"]
    assert reslab_main(args) == 1  # the broken file fails, the rest are explained
    err = capsys.readouterr().err
    assert "Grad-CAM of the top-1 class: 3 overlay(s)" in err and str(broken) in err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([f"x{SUFFIX}", f"x-2{SUFFIX}", f"y{SUFFIX}"])
    with Image.open(out / f"y{SUFFIX}") as img:
        assert img.format == "PNG" and img.size == (224, 224) and img.mode == "RGB"  # 32 px x 7


def test_explain_a_chosen_class(weights: Path, tmp_path: Path, capsys) -> None:
    image = tmp_path / "z.png"
    image.write_bytes(png(5))
    args = ["predict", str(weights), str(image), "--explain", str(tmp_path / "cams"), "--backend", "torch"]
    assert reslab_main([*args, "--class", "c"]) == 0
    assert "Grad-CAM of class c: 1 overlay(s)" in capsys.readouterr().err
    cam = GradCam.from_weights(load_weights(weights))
    x = cam.preprocess.load(image)[None]
    assert not torch.allclose(cam(x, 0)[0], cam(x, 5)[0])  # another class, another map
    assert cam(x, [2])[1].tolist() == [2] and cam(x)[1].tolist() == [int(cam.model(cam.stats.apply(x)).argmax())]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_predict_explain_decodes_each_image_once_and_reads_the_weights_once(
    weights: Path, tmp_path: Path, monkeypatch, backend: str
) -> None:
    """The images predict decoded are the ones explained, and the weights Grad-CAM loaded are the
    ones the PyTorch backend runs (or, under onnxruntime, a first export exports)."""
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    from reslab import weights as weights_module

    copy = tmp_path / "w.safetensors"  # its own ONNX cache, built by this call
    copy.write_bytes(weights.read_bytes())
    files = [tmp_path / f"{i}.png" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(png(10 + i))
    reads, decodes = [], []
    read, decode = weights_module.load_file, Preprocess.load
    monkeypatch.setattr(weights_module, "load_file", lambda path, **kw: reads.append(path) or read(path, **kw))
    monkeypatch.setattr(Preprocess, "load", lambda self, src, **kw: decodes.append(str(src)) or decode(self, src, **kw))
    args = ["predict", str(copy), *map(str, files), "--explain", str(tmp_path / "cams"), "--backend", backend]
    assert reslab_main(args) == 0
    assert reads == [str(copy)]
    assert sorted(decodes) == sorted(map(str, files))
    assert len(list((tmp_path / "cams").iterdir())) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--explain", "OUT", "--class", "zebra"], "class 'zebra' is not a class of these weights"),
        (["--explain", "OUT", "--class", "10"], "give an id 0-9"),
        (["--class", "1"], "add --explain OUTDIR"),
    ],
)
def test_bad_explain_options_are_one_line(weights: Path, tmp_path: Path, capsys, extra, message) -> None:
    image = tmp_path / "z.png"
    image.write_bytes(png(6))
    extra = [str(tmp_path / "out") if e == "OUT" else e for e in extra]
    assert reslab_main(["predict", str(weights), str(image), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_an_onnx_file_cannot_be_explained(tmp_path: Path, capsys) -> None:
    image = tmp_path / "z.png"
    image.write_bytes(png(7))
    assert reslab_main(["predict", str(tmp_path / "model.onnx"), str(image), "--explain", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Grad-CAM needs gradients" in err and "ONNX" in err


# ---- serve: POST /explain ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(weights: Path):
    predictor, meta, _ = load_predictor(weights, backend="torch", precision="fp32")
    app = create_app(
        predictor,
        meta,
        ServeConfig(max_upload_bytes=20_000, max_pixels=100_000),
        explainer=GradCam.from_weights(load_weights(weights)),
    )
    with TestClient(app) as c:
        yield c


def test_serve_explain_returns_a_png_of_the_top1_class(client: TestClient) -> None:
    image = png(1)
    top1 = client.post("/predict", files={"file": ("a.png", image)}).json()["predictions"][0]["class_id"]
    r = client.post("/explain", files={"file": ("a.png", image)})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert int(r.headers["x-class-id"]) == top1
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.format == "PNG" and img.size == (224, 224)
    chosen = client.post("/explain", params={"class": "c"}, files={"file": ("a.png", image)})
    assert chosen.status_code == 200 and chosen.headers["x-class-id"] == str(CLASSES.index("c"))


@pytest.mark.parametrize(
    ("body", "params", "status", "words"),
    [
        (b"plain text, not an image", {}, 415, "not an image"),
        (solid_png((400, 300)), {}, 413, "--max-pixels"),  # 120,000 pixels > 100,000, in a small file
        (b"\x89PNG" + b"x" * 30_000, {}, 413, "--max-upload-bytes"),
        (png(3), {"class": "zebra"}, 422, "not a class"),
    ],
)
def test_serve_explain_refuses_bad_input_in_one_line(client: TestClient, body, params, status, words) -> None:
    r = client.post("/explain", params=params, files={"file": ("f.png", body)})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert words in detail and "\n" not in detail


def test_serve_explain_without_pytorch_weights_is_501(weights: Path) -> None:
    predictor, meta, _ = load_predictor(weights, backend="torch", precision="fp32")
    with TestClient(create_app(predictor, meta)) as c:
        r = c.post("/explain", files={"file": ("a.png", png(4))})
    assert r.status_code == 501 and "ONNX" in r.json()["detail"]
