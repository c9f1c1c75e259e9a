"""`reslab predict`, `reslab export`, `reslab serve`: argument parsing and wiring only.

Heavy imports (onnx, onnxruntime, fastapi, uvicorn) happen inside the command functions, so
building the parser costs nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from reslab.commands.args import add_precision, add_tta, fraction, non_negative_float, positive_int
from reslab.vocab import DEFAULT_MAX_PIXELS, INFER_BACKENDS

if TYPE_CHECKING:  # names for annotations only: building the parser imports no torch
    from reslab.infer.backends import Loaded
    from reslab.infer.explain import OverlayWriter
    from reslab.infer.predict import Prediction
    from reslab.weights import Weights

WEIGHTS_HELP = "weights: a .safetensors file, a run directory, a shipped name, or hf-hub:USER/NAME[@REVISION]"
MODEL_HELP = WEIGHTS_HELP + "; or a .onnx file written by `reslab export` (fp32 or int8), run by onnxruntime"


def _add_fast_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=INFER_BACKENDS,
        default="auto",
        help="what runs PyTorch weights. auto (default): onnxruntime on their ONNX export, made on first "
        "use, verified against PyTorch and cached beside the weights (or in ~/.cache/reslab/onnx), "
        "rebuilt when its checksums no longer match; PyTorch when onnxruntime is missing or a "
        "PyTorch-only option (--compile, --no-fold, --precision bf16) is given. One line on stderr "
        "says which runs",
    )
    add_precision(p)
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (slow first call per input shape, faster after; PyTorch weights only)",
    )
    p.add_argument(
        "--no-fold", dest="fold", action="store_false", help="keep BatchNorm layers unfolded (PyTorch weights only)"
    )
    add_tta(p, "default: as the weights' metrics were measured")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels than this, read from the header "
        f"(default {DEFAULT_MAX_PIXELS:,}; 0 = no limit)",
    )


def _predictor(args: argparse.Namespace, weights: Weights | None) -> Loaded:
    """(predictor, meta, parameter count) for --backend (see load_predictor), of `weights` when they
    are loaded already; which one runs and why goes to stderr in one line."""
    from reslab.data.decode import quiet_pillow_bomb_warning
    from reslab.infer.backends import load_predictor

    quiet_pillow_bomb_warning()  # --max-pixels is the limit; Pillow's would only add noise
    return load_predictor(
        args.weights,
        backend=args.backend,
        fold=args.fold,
        precision=args.precision,
        compile=args.compile,
        tta_flip=args.tta_flip,
        log=lambda line: print(f"reslab {args.command}: {line}", file=sys.stderr, flush=True),
        weights=weights,
    )


def _overlay_writer(args: argparse.Namespace, weights: Weights) -> OverlayWriter:
    """--explain OUTDIR [--class K]: Grad-CAM of `weights`, the class resolved before any work."""
    from reslab.infer.explain import GradCam, OverlayWriter, resolve_class

    target = None if args.explain_class is None else resolve_class(args.explain_class, weights.meta)
    return OverlayWriter(GradCam.from_weights(weights), args.explain, target)


def _predictions(
    args: argparse.Namespace, weights: Weights | None, writer: OverlayWriter | None
) -> Iterator[tuple[Prediction, Path | None]]:
    """Each image's prediction and, with a `writer`, the Grad-CAM overlay written of it (decoded once)."""
    from reslab.infer.explain import predict_explained
    from reslab.infer.predict import collect_images, predict_files

    predictor, meta, _ = _predictor(args, weights)
    files = collect_images(args.images)
    options = {"batch_size": args.batch_size, "k": args.top_k, "max_pixels": args.max_pixels}
    if writer is None:
        return ((p, None) for p in predict_files(predictor, meta, files, **options))
    return predict_explained(predictor, meta, files, writer, **options)


def predict_command(args: argparse.Namespace) -> int:
    from reslab.errors import ConfigError
    from reslab.infer.explain import SUFFIX, explainable_weights
    from reslab.infer.predict import format_csv, format_json, format_table

    if args.explain_class is not None and args.explain is None:
        raise ConfigError("--class chooses the class Grad-CAM explains; add --explain OUTDIR")
    weights = explainable_weights(args.weights) if args.explain is not None else None  # ONNX fails before any work
    writer = None if weights is None else _overlay_writer(args, weights)
    predictions, overlays = [], 0
    for prediction, overlay in _predictions(args, weights, writer):
        if prediction.error is not None:
            print(f"reslab predict: error: {prediction.error}", file=sys.stderr, flush=True)
        predictions.append(prediction)
        overlays += overlay is not None
    formatter = format_json if args.json else format_csv if args.csv else format_table
    print(formatter(predictions))
    if weights is not None and writer is not None:
        target = writer.target
        what = "the top-1 class" if target is None else f"class {weights.meta.class_names[target]}"
        print(
            f"reslab predict: Grad-CAM of {what}: {overlays} overlay(s) in {args.explain} (IMAGE{SUFFIX})",
            file=sys.stderr,
        )
    failed = sum(p.error is not None for p in predictions)
    if failed:
        print(f"reslab predict: {failed} of {len(predictions)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def export_command(args: argparse.Namespace) -> int:
    from reslab.errors import ConfigError
    from reslab.infer.export import export_model
    from reslab.weights import load_weights

    if args.int8 and args.format != "onnx":
        raise ConfigError("--int8 needs --format onnx (the int8 model is an onnxruntime QDQ graph)")
    if not args.int8 and (args.calibration is not None or args.data_dir is not None):
        raise ConfigError("--calibration and --data-dir choose int8 calibration images; add --int8")
    weights = load_weights(args.weights)
    if args.int8:  # load the calibration images first: missing data fails before a long export
        from reslab.infer.quantize import calibration_set, export_int8

        data = calibration_set(
            args.calibration,
            weights.meta,
            weights.preprocess,
            data_dir=args.data_dir,
            images=args.calibration_images,
            verify=args.verify_images,
        )
    result = export_model(weights, args.format, args.output, tolerance=args.tolerance)
    print(f"wrote {result.path} ({result.format}, via {result.exporter})")
    print(f"wrote {result.sidecar} (preprocessing: mean/std, input size, classes)")
    print(
        f"verified: max |logit diff| vs PyTorch float32 = {result.max_abs_diff:.3g} "
        f"(logit scale {result.logit_scale:.3g}, tolerance {args.tolerance:g} x max(1, scale))",
        flush=True,
    )
    if args.int8:
        q = export_int8(result.path, data, weights.stats, min_agreement=args.min_agreement)
        print(f"wrote {q.path} (int8 QDQ for onnxruntime, calibrated on {q.calibration}; {q.seconds:.1f} s)")
        accuracy = (
            f"; accuracy fp32 {100 * q.accuracy_fp32:.2f}%, int8 {100 * q.accuracy_int8:.2f}%"
            if q.accuracy_fp32 is not None
            else ""
        )
        print(
            f"verified int8 vs the fp32 file on {q.holdout}: top-1 agreement {100 * q.agreement:.2f}% "
            f"(--min-agreement {100 * args.min_agreement:g}%), max |logit diff| {q.max_abs_diff:.3g} "
            f"= {100 * q.max_abs_diff / max(q.logit_scale, 1e-12):.1f}% of the logit scale {q.logit_scale:.3g}"
            f"{accuracy}"
        )
    return 0


def serve_command(args: argparse.Namespace) -> int:
    from reslab.errors import ConfigError
    from reslab.infer.backends import is_onnx_file
    from reslab.infer.explain import GradCam, explainable_weights
    from reslab.infer.serve import ServeConfig, bind_socket, create_app, run_server

    try:  # bind first: a busy port fails in a second, not after loading the model
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
            "choose another --port (0 picks a free one)"
        ) from None
    try:
        weights = None if is_onnx_file(args.weights) else explainable_weights(args.weights)  # for POST /explain
        predictor, meta, num_params = _predictor(args, weights)
    except BaseException:  # re-raised: a bad model file (or Ctrl-C) frees the port now, not when the process ends
        sock.close()
        raise
    config = ServeConfig(
        max_upload_bytes=args.max_upload_bytes,
        max_pixels=args.max_pixels,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        queue_size=args.queue_size,
        decode_workers=args.decode_workers,
    )
    explainer = None if weights is None else GradCam.from_weights(weights)
    app = create_app(predictor, meta, config, num_params=num_params, explainer=explainer)
    host, port = sock.getsockname()[:2]
    print(f"reslab serve: {meta.model} listening on http://{host}:{port}", flush=True)
    run_server(app, sock, access_log=args.access_log)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    register_predict(subparsers)
    register_export(subparsers)
    register_serve(subparsers)


def register_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify image files, folders or globs",
        description="Top-k classes for each image. Folders are searched recursively for image files; "
        "explicit files are tried whatever their suffix. A file that cannot be read is "
        "reported on one line (stderr) and the rest go on; the exit status is 1 if any failed.",
    )
    p.add_argument("weights", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    p.add_argument("-k", "--top-k", type=positive_int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON array (errors included)")
    fmt.add_argument("--csv", action="store_true", help="print CSV rows file,rank,class_id,class,probability")
    p.add_argument(
        "--explain",
        metavar="OUTDIR",
        help="also write a Grad-CAM heatmap over each image into OUTDIR (IMAGE.gradcam.png): where the "
        "network saw its evidence. Runs the PyTorch network (gradients), whatever --backend",
    )
    p.add_argument(
        "--class",
        dest="explain_class",
        metavar="K",
        help="with --explain: the class to explain, an id or a name (default: each image's top-1 class)",
    )
    _add_fast_options(p)
    p.set_defaults(func=predict_command)


def register_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export to ONNX, TorchScript or a torch.export program, verified",
        description="Export the BatchNorm-folded float32 network (input: normalised float32 NCHW, dynamic "
        "batch). Preprocessing goes into a sidecar <OUT>.json (and the ONNX metadata). The "
        "file is reloaded and checked against PyTorch right after export. With --int8 (ONNX "
        "only), also write <OUT stem>.int8.onnx: static int8 quantisation calibrated on "
        "training images, checked against the fp32 file on held-out images.",
    )
    p.add_argument("weights", metavar="WEIGHTS_OR_RUN", help=WEIGHTS_HELP)
    p.add_argument(
        "--format",
        choices=("onnx", "torchscript", "exported-program"),
        default="onnx",
        help="onnx (.onnx), torchscript (.pt), exported-program (.pt2); default onnx",
    )
    p.add_argument("-o", "--output", default=None, help="output file or folder (default ./<model>.<ext>)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="max |logit diff| allowed, relative to max(1, max |logit|) (default 1e-4)",
    )
    q = p.add_argument_group("int8 (with --format onnx)")
    q.add_argument(
        "--int8",
        action="store_true",
        help="also write an int8 ONNX file (onnxruntime QDQ: per-channel int8 weights, uint8 activations)",
    )
    q.add_argument(
        "--calibration",
        metavar="SPEC",
        default=None,
        help="calibration images: a dataset name (cifar10, cifar100, fashion-mnist, mnist, imagefolder; "
        "training split) or a folder or glob of image files (default: the dataset the weights "
        "were trained on, if it loads here)",
    )
    q.add_argument(
        "--data-dir",
        default=None,
        help="where a --calibration dataset's files are (default $RESLAB_DATA_DIR or ./data)",
    )
    q.add_argument("--calibration-images", type=positive_int, default=512, help="images to calibrate on (default 512)")
    q.add_argument(
        "--verify-images",
        type=positive_int,
        default=1000,
        help="held-out images on which int8 is compared with fp32: from the test split, or a "
        "disjoint fifth of a folder, at most this many (default 1000)",
    )
    q.add_argument(
        "--min-agreement",
        type=fraction,
        default=0.97,
        help="fail (and remove the int8 file) if int8 and fp32 agree on the top-1 class of fewer "
        "held-out images than this fraction (default 0.97)",
    )
    p.set_defaults(func=export_command)


def register_serve(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="HTTP prediction service (FastAPI + uvicorn, micro-batching)",
        description="POST /predict (multipart field 'file', query top_k), GET /health, GET /metadata, "
        "POST /explain (field 'file', query class: a Grad-CAM heatmap PNG; PyTorch weights only). "
        "Binds 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("weights", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--max-upload-bytes",
        type=positive_int,
        default=10 * 1024 * 1024,
        help="largest upload accepted, bytes (default 10 MiB; larger -> 413)",
    )
    p.add_argument("--max-batch", type=positive_int, default=16, help="images per model call (default 16)")
    p.add_argument(
        "--batch-wait-ms",
        type=non_negative_float,
        default=5.0,
        help="how long a batch waits for more images after its first, ms (default 5)",
    )
    p.add_argument(
        "--queue-size", type=positive_int, default=256, help="images waiting for the model (default 256; full -> 503)"
    )
    p.add_argument(
        "--decode-workers",
        type=positive_int,
        default=4,
        help="uploads decoded at once (default 4): bounds the memory that large images can take",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    _add_fast_options(p)
    p.set_defaults(func=serve_command)
