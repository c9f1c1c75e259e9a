"""`reslab serve` as a user runs it: a subprocess on 127.0.0.1, real HTTP, bad input, load."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from infer_testdata import CLASSES, jpeg_bytes, random_png, solid_png
from PIL import Image

from reslab.infer.serve import MicroBatcher, QueueFullError

MAX_UPLOAD = 200_000  # bytes
MAX_PIXELS = 100_000


@pytest.fixture(scope="module")
def server(weights_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, log file) of a running `reslab serve`; stopped with SIGTERM afterwards."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reslab",
                "serve",
                str(weights_file),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--max-upload-bytes",
                str(MAX_UPLOAD),
                "--max-pixels",
                str(MAX_PIXELS),
                "--max-batch",
                "8",
                "--batch-wait-ms",
                "10",
                "--precision",
                "fp32",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            if match:
                url = match[1]
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        else:
            pytest.fail(f"server did not come up:\n{log.read_text()}")
        yield url, log
        assert proc.poll() is None, f"server died:\n{log.read_text()}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says what stopped it
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()


def post(url: str, data: bytes, name: str = "image.png", **params: object) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (name, data)}, params=params, timeout=30)


def test_health_and_metadata(server: tuple[str, Path]) -> None:
    url, _ = server
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    meta = httpx.get(f"{url}/metadata").json()
    assert meta["model"] == "resnet20" and meta["classes"] == CLASSES and meta["input_size"] == 32
    assert meta["params"] == 269_722 and meta["limits"]["max_upload_bytes"] == MAX_UPLOAD


def test_serve_runs_the_default_backend_of_predict(server: tuple[str, Path]) -> None:
    url, log = server
    predictor = httpx.get(f"{url}/metadata").json()["predictor"]
    assert predictor["backend"] == "onnxruntime"  # the cached, verified export (reslab.infer.onnx_cache)
    check = predictor["onnx_cache"]
    assert check["max_abs_logit_diff"] <= check["tolerance"] * max(1.0, check["logit_scale"])
    assert re.search(r"^reslab serve: backend onnxruntime \(auto: ", log.read_text(), re.MULTILINE)


def test_valid_images_get_top_k(server: tuple[str, Path], corpus: Path) -> None:
    url, _ = server
    for name in ("exif_rotated.jpg", "palette.png", "grey16.png", "lossless.webp", "animated.gif"):
        r = post(url, (corpus / name).read_bytes(), name, top_k=3)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["file"] == name and len(body["predictions"]) == 3
        assert all(p["class"] == CLASSES[p["class_id"]] for p in body["predictions"])
    assert len(post(url, random_png((40, 30))).json()["predictions"]) == 5  # default top_k
    assert len(post(url, random_png((40, 30)), top_k=50).json()["predictions"]) == 10  # capped


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("oversized", 413, "too large"),
        ("garbage", 415, "not an image"),
        ("empty", 422, "empty file"),
        ("truncated", 422, "truncated"),
        ("too many pixels", 413, "megapixels"),
    ],
)
def test_bad_uploads_get_a_clear_json_error(server: tuple[str, Path], case: str, status: int, words: str) -> None:
    url, _ = server
    data = {
        "oversized": np.random.default_rng(0).bytes(MAX_UPLOAD + 1000),
        "garbage": b"%PDF-1.4 definitely not an image" * 10,
        "empty": b"",
        "truncated": jpeg_bytes(Image.new("RGB", (64, 64), (9, 99, 199)))[:300],
        "too many pixels": solid_png((400, 300)),  # 120,000 px > 100,000, but a small file
    }[case]
    r = post(url, data, "upload.bin")
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_requests_without_a_file_or_with_bad_top_k_are_422(server: tuple[str, Path]) -> None:
    url, _ = server
    assert httpx.post(f"{url}/predict", files={"other": ("a.png", random_png((8, 8)))}).status_code == 422
    assert post(url, random_png((8, 8)), top_k=0).status_code == 422
    assert httpx.post(f"{url}/predict", content=b"raw bytes").status_code == 422


def test_chunked_oversized_upload_is_413(server: tuple[str, Path]) -> None:
    url, _ = server
    boundary = "reslabtestboundary"

    def body() -> Iterator[bytes]:  # a generator: sent chunked, no Content-Length for the server to check
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(8):
            yield b"\0" * 64_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(
        f"{url}/predict",
        content=body(),
        timeout=30,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413


def test_100_concurrent_requests_are_batched_and_all_answered(server: tuple[str, Path]) -> None:
    url, log = server
    images = [random_png((48, 40), seed=i) for i in range(90)] + [b"not an image"] * 10

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *[client.post(f"{url}/predict", files={"file": (f"{i}.png", data)}) for i, data in enumerate(images)]
            )

    responses = asyncio.run(send_all())
    codes = [r.status_code for r in responses]
    assert codes[:90] == [200] * 90 and codes[90:] == [415] * 10
    assert max(r.json()["batch_size"] for r in responses[:90]) > 1  # micro-batching happened
    # a request answered alone gives the same probabilities as in a batch
    alone = post(url, images[0], "0.png").json()["predictions"]
    assert [p["class_id"] for p in alone] == [p["class_id"] for p in responses[0].json()["predictions"]]
    assert abs(alone[0]["probability"] - responses[0].json()["predictions"][0]["probability"]) < 1e-4
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["queued"] == 0
    text = log.read_text()
    assert "Traceback" not in text and " 500" not in text


# ---- the batcher on its own ----------------------------------------------------------------------


def slow_model(delay: float):
    def run(images: torch.Tensor) -> torch.Tensor:  # uint8 (B, 1, 1, 1) -> "logits" (B, 1)
        time.sleep(delay)
        return images.view(len(images), 1).float()

    return run


def test_batcher_groups_waiting_requests_and_keeps_their_order() -> None:
    async def scenario() -> list[tuple[torch.Tensor, int]]:
        batcher = MicroBatcher(slow_model(0.0), max_batch=4, batch_wait_ms=50, queue_size=16)
        batcher.start()
        try:
            return await asyncio.gather(
                *[batcher.submit(torch.tensor([i], dtype=torch.uint8).view(1, 1, 1)) for i in range(6)]
            )
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert [int(row.item()) for row, _ in results] == list(range(6))
    assert sorted(size for _, size in results) == [2, 2, 4, 4, 4, 4]


def test_batcher_refuses_work_when_the_queue_is_full() -> None:
    async def scenario() -> list[object]:
        batcher = MicroBatcher(slow_model(0.2), max_batch=1, batch_wait_ms=0, queue_size=2)
        batcher.start()
        try:
            x = torch.zeros(1, 1, 1, dtype=torch.uint8)
            return await asyncio.gather(*[batcher.submit(x) for _ in range(6)], return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    full = [r for r in results if isinstance(r, QueueFullError)]
    assert 1 <= len(full) <= 4 and len(results) - len(full) >= 2


def test_batcher_passes_model_errors_to_the_requests_and_keeps_going() -> None:
    calls = []

    def flaky(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("model failure")
        return images.view(len(images), 1).float()

    async def scenario() -> tuple[object, object]:
        batcher = MicroBatcher(flaky, max_batch=1, batch_wait_ms=0, queue_size=4)
        batcher.start()
        try:
            x = torch.ones(1, 1, 1, dtype=torch.uint8)
            first = await asyncio.gather(batcher.submit(x), return_exceptions=True)
            second = await batcher.submit(x)
            return first[0], second
        finally:
            await batcher.stop()

    first, second = asyncio.run(scenario())
    assert isinstance(first, RuntimeError) and second[0].item() == 1.0


def test_serve_refuses_a_busy_port(weights_file: Path, capsys: pytest.CaptureFixture) -> None:
    import socket

    from reslab.cli import main as reslab_main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert reslab_main(["serve", str(weights_file), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
