"""The default CPU runtime for weights: their ONNX export, made once, cached, verified, trusted by checksum.

On these CPUs onnxruntime runs the folded float32 network faster than PyTorch does (ResNet-50 on
2 AVX2 cores: batch 16 in 892 ms against 1,152 ms compiled; batch 1 in 56 ms against 130 ms), so
`reslab predict` and `reslab serve` given weights (not an .onnx file) export them with
`reslab.infer.export.export_model`, the exporter of `reslab export`, and keep the file:

  where       beside the weights, as <weights file name>.onnx (run/weights.safetensors ->
              run/weights.safetensors.onnx); for the package's shipped weights, a symlink (the
              Hugging Face Hub cache's snapshots), or weights in a folder this process cannot
              write, <cache dir>/onnx/<weights sha256>.onnx, with the cache dir of the dataset
              cache ($RESLAB_CACHE_DIR, else ~/.cache/reslab).
  record      <file>.json: the export's sidecar (preprocessing, verification) plus "cache": the
              SHA-256 of the weights the file was made from and of the .onnx file itself.
  trusted     only while both checksums match: weights edited or replaced (stale), or an .onnx
              file changed in any byte (damaged, tampered), make this use rebuild it. The
              checksums catch accidents, not someone who rewrites the record to match.
  verified    when built: export_model runs the written file under onnxruntime on seeded random
              inputs at batch sizes 1 and 7 against the unfolded float32 PyTorch network and
              refuses it (ExportError) when max |logit diff| > 1e-4 x max(1, max |logit|).
  atomic      the export is written in a temporary folder, then copied into place by
              reslab.atomic (temp file, fsync, rename), the .onnx first and the record last: a
              crash leaves a record that does not match, which means a rebuild.
  concurrent  check-and-build holds an exclusive lock (fcntl.flock on <file>.lock), so servers
              starting together export once and the others reuse that file. Where flock does not
              exist (not POSIX) each process may build, and atomic writes keep the files whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from reslab.atomic import atomic_write_bytes
from reslab.data.cache import default_cache_dir
from reslab.infer.export import DEFAULT_TOLERANCE, export_model
from reslab.weights import PRETRAINED_DIR, Weights, load_weights

CACHE_FORMAT = 1  # bumped when the file or its record changes meaning, to rebuild old caches
Log = Callable[[str], object]  # receives one line (no newline) about what is being done


@dataclass
class CachedOnnx:
    path: Path  # the verified .onnx file
    weights_sha256: str
    built: bool  # True when this call exported it (first use, or the old file was not trusted)
    reason: str  # why it was built ("first use", "weights changed", ...), or "reused"
    seconds: float  # what this call took: export + verification when built, checksums when reused
    max_abs_diff: float  # of the verification when it was built, vs unfolded float32 PyTorch
    logit_scale: float  # max |logit| of that reference; the tolerance is relative to max(1, it)
    tolerance: float

    @property
    def record(self) -> Path:
        return record_path(self.path)

    def describe(self) -> dict[str, object]:
        """For GET /metadata and reports."""
        return {
            "file": str(self.path),
            "weights_sha256": self.weights_sha256,
            "built_now": self.built,
            "max_abs_logit_diff": self.max_abs_diff,
            "logit_scale": self.logit_scale,
            "tolerance": self.tolerance,
        }


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def record_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".json")


def user_cache_path(digest: str) -> Path:
    return default_cache_dir() / "onnx" / f"{digest}.onnx"


def cache_path(weights: Path, digest: str) -> Path:
    """Beside the weights, unless they are the package's own, a link into another tool's cache, or
    in a folder this process cannot write."""
    shipped = weights.resolve().is_relative_to(PRETRAINED_DIR.resolve())
    if shipped or weights.is_symlink() or not os.access(weights.parent, os.W_OK):
        return user_cache_path(digest)
    return weights.with_name(weights.name + ".onnx")


def untrusted_because(path: Path, digest: str, tolerance: float) -> str | None:
    """Why the cached file at `path` may not be used for weights of SHA-256 `digest`; None if it may."""
    if not path.is_file():
        return "first use"
    try:
        record = json.loads(record_path(path).read_text())
        cache, check = record["cache"], record["verification"]
        if cache["format"] != CACHE_FORMAT:
            return "cache written by another reslab version"
        if cache["weights_sha256"] != digest:
            return "weights changed since the export"
        float(check["max_abs_logit_diff"]), float(check["logit_scale"])  # what a reuse reports
        if float(check["tolerance"]) > tolerance:
            return f"verified at a looser tolerance than {tolerance:g}"
        if cache["onnx_sha256"] != file_sha256(path):
            return "the .onnx file does not match its checksum (damaged or changed)"
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged record
        return "its record (checksums, verification) is missing or damaged"
    return None


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (created if absent) across processes."""
    if os.name != "posix":  # no flock: concurrent builds may duplicate work, never leave half files
        yield
        return
    import fcntl

    with open(lock, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _reuse(path: Path, digest: str, started: float) -> CachedOnnx:
    check = json.loads(record_path(path).read_text())["verification"]
    return CachedOnnx(
        path,
        digest,
        False,
        "reused",
        time.perf_counter() - started,
        float(check["max_abs_logit_diff"]),
        float(check["logit_scale"]),
        float(check["tolerance"]),
    )


@dataclass(frozen=True)
class _Source:
    """The weights a cached export is made from: their file, its SHA-256, and the `Weights` when the
    caller has loaded them already (else they are loaded only if an export must be built)."""

    path: Path
    digest: str
    loaded: Weights | None = None

    def weights(self) -> Weights:
        # checked first: a damaged file fails in one line, before any output
        return self.loaded if self.loaded is not None else load_weights(self.path)


def _build(source: _Source, path: Path, reason: str, tolerance: float, log: Log | None, started: float) -> CachedOnnx:
    """Export and verify in a temporary folder, then move the file and its record into place."""
    weights_path, digest = source.path, source.digest
    weights = source.weights()
    if log is not None:
        log(f"exporting the weights to ONNX once ({reason}), verifying against PyTorch: {path}")
    with tempfile.TemporaryDirectory(prefix="reslab-onnx-") as tmp:
        result = export_model(weights, "onnx", Path(tmp) / "model.onnx", tolerance=tolerance)  # ExportError if off
        data = result.path.read_bytes()
        record = json.loads(result.sidecar.read_text())
    record["cache"] = {
        "format": CACHE_FORMAT,
        "weights": str(weights_path.resolve()),
        "weights_sha256": digest,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "export_seconds": round(time.perf_counter() - started, 3),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_bytes(record_path(path), (json.dumps(record, indent=2) + "\n").encode())
    return CachedOnnx(
        path,
        digest,
        True,
        reason,
        time.perf_counter() - started,
        result.max_abs_diff,
        result.logit_scale,
        tolerance,
    )


def _cached_at(source: _Source, path: Path, tolerance: float, log: Log | None, started: float) -> CachedOnnx:
    digest = source.digest
    if untrusted_because(path, digest, tolerance) is None:  # the common case: no lock needed to read
        return _reuse(path, digest, started)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path.with_name(path.name + ".lock")):
        reason = untrusted_because(path, digest, tolerance)  # another process may have built it meanwhile
        if reason is None:
            return _reuse(path, digest, started)
        return _build(source, path, reason, tolerance, log, started)


def cached_onnx(
    weights_path: str | Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    log: Log | None = None,
    weights: Weights | None = None,
) -> CachedOnnx:
    """The verified ONNX export of the weights file `weights_path`, built on first use (see the
    module docstring). `weights`: that file's `Weights` when the caller has loaded them already, so
    that a first export does not load the file again. Raises ExportError when a fresh export does
    not match PyTorch, OSError when neither beside the weights nor the user cache dir can be written."""
    started = time.perf_counter()
    weights_path = Path(weights_path)
    digest = file_sha256(weights_path)
    source = _Source(weights_path, digest, weights)
    path = cache_path(weights_path, digest)
    try:
        return _cached_at(source, path, tolerance, log, started)
    except OSError:
        fallback = user_cache_path(digest)
        if path == fallback:
            raise
        return _cached_at(source, fallback, tolerance, log, started)  # e.g. a read-only mount
