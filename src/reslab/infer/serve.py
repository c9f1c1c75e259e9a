"""An HTTP prediction service: FastAPI on uvicorn, with a bounded queue and micro-batching.

This module imports fastapi at the top: only `reslab serve` imports it, never `reslab predict`.

Endpoints:
  POST /predict   multipart upload, field "file"; query top_k (default 5) -> top-k JSON
  GET  /health    {"status": "ok", ...} once the model is loaded and warmed up
  GET  /metadata  model name, classes, input size, parameter count, serving settings
  POST /explain   multipart upload, field "file"; query class (id or name, default the top-1) ->
                  a PNG of the Grad-CAM heatmap over the network's input (reslab.infer.explain),
                  header X-Class-Id. Same upload and pixel limits and decode slots as /predict;
                  one explanation runs at a time (a forward and a backward pass of the PyTorch
                  network), at most --queue-size wait (503 beyond); 501 when serving an ONNX file.

Flow of one request: the body is capped (413 beyond --max-upload-bytes, checked from the
Content-Length header before reading and again while reading); the image is decoded in a worker
thread (415 not an image, 422 empty/damaged, 413 too many pixels: never a 500 for a bad image);
the uint8 tensor goes into a bounded asyncio queue (503 when full). One batching task takes the
first waiting image, gathers more until --max-batch or --batch-wait-ms, runs the model in its
own thread (the event loop keeps serving) and resolves each request's future with its logits.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from reslab.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError, NotAnImageError
from reslab.data.preprocess import Preprocess
from reslab.errors import ConfigError
from reslab.infer.backends import Predictor
from reslab.infer.explain import GradCam, resolve_class
from reslab.infer.predict import top_k
from reslab.weights import WeightsMeta

MULTIPART_SLACK = 16 * 1024  # bytes of multipart framing allowed on top of the file itself


@dataclass
class ServeConfig:
    max_upload_bytes: int = 10 * 1024 * 1024  # largest accepted file, bytes (413 beyond)
    max_pixels: int = DEFAULT_MAX_PIXELS  # largest accepted image, width x height (413 beyond)
    max_batch: int = 16  # images per model call
    batch_wait_ms: float = 5.0  # how long a batch waits for more images after its first, ms
    queue_size: int = 256  # decoded images waiting for the model (503 beyond)
    decode_workers: int = 4  # uploads decoded at once (each may hold up to max_pixels while resizing)
    default_top_k: int = 5


class QueueFullError(Exception):
    """The request queue is at capacity; the client should retry later."""


class MicroBatcher:
    """Collects single images from many requests into batches for one model call at a time."""

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch: int,
        batch_wait_ms: float,
        queue_size: int,
    ) -> None:
        self.run_batch = run_batch  # uint8 (B, C, H, W) -> logits (B, classes); called in a thread
        self.max_batch = max_batch
        self.wait_s = batch_wait_ms / 1000.0
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue(maxsize=queue_size)
        self._arrived = asyncio.Event()  # set on every submit; lets the batcher wait without polling
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reslab-model")
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.images = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, image: torch.Tensor) -> tuple[torch.Tensor, int]:
        """uint8 (C, H, W) -> (logits (classes,), size of the batch it ran in). Raises QueueFullError."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((image, future))
        except asyncio.QueueFull:
            raise QueueFullError from None
        self._arrived.set()
        return await future

    async def _gather(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch:
            self._arrived.clear()  # no await between clear and get_nowait: no lost wake-up
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [(x, f) for x, f in await self._gather() if not f.done()]  # done = client gone
            if not batch:
                continue
            images = torch.stack([x for x, _ in batch])
            try:
                logits = await loop.run_in_executor(self._executor, self.run_batch, images)
            except Exception as exc:  # noqa: BLE001  (not swallowed: forwarded to each request of the batch,
                # which fails with it; a model failure must not stop the server's only batching task)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(batch)
            for row, (_, future) in zip(logits, batch):
                if not future.done():
                    future.set_result((row, len(batch)))


class _BodyTooLarge(Exception):
    """Raised from `receive` once a request body passes the limit."""


class BodySizeLimit:
    """ASGI middleware: 413 for request bodies over `max_body` bytes, read or announced."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def _reply_413(self, send: Callable) -> None:
        body = json.dumps(
            {
                "detail": f"upload too large: the limit is {self.max_body - MULTIPART_SLACK} "
                "bytes per file (server option --max-upload-bytes)"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await self._reply_413(send)
        guard = _BodyGuard(self, receive, send)
        try:
            await self.app(scope, guard.receive, guard.send)
        except _BodyTooLarge:
            await guard.reply_once()


class _BodyGuard:
    """One request under `BodySizeLimit`: `receive` counts the body and raises _BodyTooLarge past the
    limit; from then on `send` answers 413, once, whatever the app answers (a 400 from the form parser)."""

    def __init__(self, limit: BodySizeLimit, receive: Callable, send: Callable) -> None:
        self.limit = limit
        self._receive, self._send = receive, send
        self.received = 0  # body bytes so far
        self.exceeded = self.replied = False

    async def receive(self) -> dict:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit.max_body:
                self.exceeded = True
                raise _BodyTooLarge
        return message

    async def send(self, message: dict) -> None:
        if self.exceeded:
            await self.reply_once()
            return
        await self._send(message)

    async def reply_once(self) -> None:
        if not self.replied:
            self.replied = True
            await self.limit._reply_413(self._send)


async def decode_upload(file: UploadFile, preprocess: Preprocess, config: ServeConfig, slots: asyncio.Semaphore):
    """An upload -> uint8 (C, S, S), or an HTTPException with the status that fits the problem.

    At most `config.decode_workers` uploads are decoded at once (`slots`): each may hold an image
    of up to --max-pixels while it is resized, so memory stays bounded however many arrive."""
    label = file.filename or "upload"
    data = await file.read(config.max_upload_bytes + 1)
    if len(data) > config.max_upload_bytes:
        raise HTTPException(
            413,
            f"{label}: upload too large: the limit is {config.max_upload_bytes} "
            "bytes per file (server option --max-upload-bytes)",
        )
    try:
        async with slots:
            return await run_in_threadpool(preprocess.load, data, max_pixels=config.max_pixels, name=label)
    except ImageTooLargeError as exc:
        raise HTTPException(413, str(exc)) from None
    except NotAnImageError as exc:
        raise HTTPException(415, str(exc)) from None
    except ImageDecodeError as exc:
        raise HTTPException(422, str(exc)) from None
    except MemoryError:
        raise HTTPException(413, f"{label}: not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001  (a decoder bug on hostile input is still the input's fault:
        # Pillow's plugins raise many types, SyntaxError and struct.error among them; a 422, never a 500)
        raise HTTPException(422, f"{label}: cannot decode ({type(exc).__name__})") from None


def metadata_of(predictor: Predictor, meta: WeightsMeta, config: ServeConfig, num_params: int) -> dict[str, Any]:
    """What GET /metadata answers: the model, its preprocessing, the serving limits."""
    return {
        "model": meta.model,
        "classes": meta.class_names,
        "num_classes": meta.num_classes,
        "in_chans": meta.in_chans,
        "input_size": meta.input_size,
        "resize": meta.resize,
        "params": num_params,
        "dataset": meta.dataset,
        "metrics": meta.metrics,
        "predictor": predictor.describe(),
        "limits": {
            "max_upload_bytes": config.max_upload_bytes,
            "max_pixels": config.max_pixels,
            "max_batch": config.max_batch,
            "batch_wait_ms": config.batch_wait_ms,
            "queue_size": config.queue_size,
            "decode_workers": config.decode_workers,
        },
    }


def lifespan_of(predictor: Predictor, config: ServeConfig) -> Callable[[FastAPI], Any]:
    """The app's lifespan: warm the predictor up, then run the batcher while the app serves."""
    preprocess = predictor.preprocess
    shape = (preprocess.in_chans, preprocess.input_size, preprocess.input_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Warm-up before the first request. A compiled predictor sees batch sizes 1, 2 and
        # max_batch now, so torch.compile builds its batch-1 graph and its dynamic-batch graph
        # here rather than while requests wait.
        for batch in sorted({1, 2, config.max_batch} if predictor.compiled else {1}):
            await run_in_threadpool(predictor, torch.zeros((batch, *shape), dtype=torch.uint8))
        batcher = MicroBatcher(
            predictor, max_batch=config.max_batch, batch_wait_ms=config.batch_wait_ms, queue_size=config.queue_size
        )
        batcher.start()
        app.state.batcher = batcher
        app.state.decode_slots = asyncio.Semaphore(config.decode_workers)
        app.state.explaining = 0  # /explain requests decoded and running or waiting for the network
        app.state.started = time.time()
        try:
            yield
        finally:
            await batcher.stop()

    return lifespan


def create_app(
    predictor: Predictor,
    meta: WeightsMeta,
    config: ServeConfig | None = None,
    *,
    num_params: int = 0,
    explainer: GradCam | None = None,
) -> Any:
    """The FastAPI application serving `predictor` (see the module docstring); `explainer` answers
    POST /explain (None: 501, e.g. for an ONNX file)."""
    config = config or ServeConfig()
    app = FastAPI(title="reslab", description=f"{meta.model} image classifier", lifespan=lifespan_of(predictor, config))
    app.add_middleware(BodySizeLimit, max_body=config.max_upload_bytes + MULTIPART_SLACK)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        batcher: MicroBatcher = app.state.batcher
        return {
            "status": "ok",
            "model": meta.model,
            "queued": batcher.queue.qsize(),
            "batches": batcher.batches,
            "images": batcher.images,
            "uptime_s": round(time.time() - app.state.started, 3),
        }

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return metadata_of(predictor, meta, config, num_params)

    add_predict_route(app, meta, predictor.preprocess, config)
    add_explain_route(app, explainer, meta, predictor.preprocess, config)
    return app


def add_predict_route(app: Any, meta: WeightsMeta, preprocess: Preprocess, config: ServeConfig) -> None:
    """POST /predict on `app`: the top-k classes of one upload, run by the app's micro-batcher."""

    @app.post("/predict")
    async def predict(
        file: UploadFile = File(..., description="an image file"),
        top_k_: int = Query(config.default_top_k, alias="top_k", ge=1),
    ) -> JSONResponse:
        image = await decode_upload(file, preprocess, config, app.state.decode_slots)
        try:
            logits, batch_size = await app.state.batcher.submit(image)
        except QueueFullError:
            return busy("request queue full")
        top = top_k(logits.unsqueeze(0), meta.class_names, min(top_k_, meta.num_classes))[0]
        predictions = [{"class_id": i, "class": n, "probability": round(p, 6)} for i, n, p in top]
        return JSONResponse(
            {
                "file": file.filename or "upload",
                "model": meta.model,
                "batch_size": batch_size,
                "predictions": predictions,
            }
        )


def busy(detail: str) -> JSONResponse:
    """503 with Retry-After: the request queue, or the explanations waiting, are full."""
    return JSONResponse(
        {"detail": f"server busy: {detail}, retry shortly"}, status_code=503, headers={"Retry-After": "1"}
    )


def add_explain_route(
    app: Any, explainer: GradCam | None, meta: WeightsMeta, preprocess: Preprocess, config: ServeConfig
) -> None:
    """POST /explain on `app`: a Grad-CAM overlay PNG of one upload (501 without PyTorch weights)."""

    @app.post("/explain")
    async def explain(
        file: UploadFile = File(..., description="an image file"),
        class_: str | None = Query(None, alias="class", description="class id or name (default: the top-1)"),
    ) -> Response:
        if explainer is None:
            raise HTTPException(501, "Grad-CAM needs gradients, hence PyTorch weights: this server runs an ONNX file")
        try:
            target = None if class_ is None else resolve_class(class_, meta)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None
        image = await decode_upload(file, preprocess, config, app.state.decode_slots)
        if app.state.explaining >= config.queue_size:
            return busy("too many explanations waiting")
        app.state.explaining += 1
        try:  # GradCam serialises its calls: one forward + backward pass at a time
            png, explained = await run_in_threadpool(explainer.overlay_png, image, target)
        finally:
            app.state.explaining -= 1
        return Response(png, media_type="image/png", headers={"X-Class-Id": str(explained)})


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket; port 0 picks a free port (read it from getsockname())."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run_server(app: Any, sock: socket.socket, *, access_log: bool = False, log_level: str = "info") -> None:
    import uvicorn

    config = uvicorn.Config(app, access_log=access_log, log_level=log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
