"""`reslab predict`, `reslab export`, `reslab serve`: argument parsing and wiring only.

Heavy imports (onnx, onnxruntime, fastapi, uvicorn) happen inside the command functions, so
building the parser costs nothing.
"""

from __future__ import annotations

import argparse
import sys

from reslab.infer.decode import DEFAULT_MAX_PIXELS

WEIGHTS_HELP = "weights: a .safetensors file, a run directory, or a shipped name"


def _add_fast_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 where the CPU has native bf16 (AVX512-BF16/AMX), else fp32 (default)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (slow first call per input shape, faster after)")
    p.add_argument("--no-fold", dest="fold", action="store_false", help="keep BatchNorm layers unfolded")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images with more pixels than this, read from the header (default {DEFAULT_MAX_PIXELS:,}; 0 = no limit)")


def _predictor(args: argparse.Namespace):
    from reslab.infer.decode import quiet_pillow_bomb_warning
    from reslab.infer.fast import FastPredictor
    from reslab.weights import load_weights

    quiet_pillow_bomb_warning()  # --max-pixels is the limit; Pillow's would only add noise

    model, meta, mean, std = load_weights(args.weights)
    return FastPredictor(model, mean, std, fold=args.fold, precision=args.precision, compile=args.compile), model, meta


def predict_command(args: argparse.Namespace) -> int:
    from reslab.errors import ConfigError
    from reslab.infer.predict import collect_images, format_csv, format_json, format_table, predict_files

    if args.batch_size < 1 or args.top_k < 1:
        raise ConfigError("--batch-size and --top-k must be >= 1")
    predictor, _, meta = _predictor(args)
    files = collect_images(args.images)
    predictions, failed = [], 0
    for prediction in predict_files(predictor, meta, files, batch_size=args.batch_size, k=args.top_k,
                                    max_pixels=args.max_pixels):
        if prediction.error is not None:
            failed += 1
            print(f"reslab predict: error: {prediction.error}", file=sys.stderr, flush=True)
        predictions.append(prediction)
    formatter = format_json if args.json else format_csv if args.csv else format_table
    print(formatter(predictions))
    if failed:
        print(f"reslab predict: {failed} of {len(predictions)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def export_command(args: argparse.Namespace) -> int:
    from reslab.infer.export import export_model
    from reslab.weights import load_weights

    model, meta, mean, std = load_weights(args.weights)
    result = export_model(model, meta, mean, std, args.format, args.output, tolerance=args.tolerance)
    print(f"wrote {result.path} ({result.format}, via {result.exporter})")
    print(f"wrote {result.sidecar} (preprocessing: mean/std, input size, classes)")
    print(f"verified: max |logit diff| vs PyTorch float32 = {result.max_abs_diff:.3g} "
          f"(logit scale {result.logit_scale:.3g}, tolerance {args.tolerance:g} x max(1, scale))")
    return 0


def serve_command(args: argparse.Namespace) -> int:
    from reslab.errors import ConfigError
    from reslab.infer.serve import ServeConfig, bind_socket, create_app, run_server
    from reslab.models import count_params

    if args.max_batch < 1 or args.queue_size < 1 or args.max_upload_bytes < 1 or args.batch_wait_ms < 0:
        raise ConfigError("--max-batch, --queue-size and --max-upload-bytes must be >= 1, --batch-wait-ms >= 0")
    try:  # bind first: a busy port fails in a second, not after loading the model
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                          "choose another --port (0 picks a free one)") from None
    predictor, model, meta = _predictor(args)
    config = ServeConfig(max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                         max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, queue_size=args.queue_size)
    app = create_app(predictor, meta, config, num_params=count_params(model))
    host, port = sock.getsockname()[:2]
    print(f"reslab serve: {meta.model} listening on http://{host}:{port}", flush=True)
    run_server(app, sock, access_log=args.access_log)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="classify image files, folders or globs",
        description="Top-k classes for each image. Folders are searched recursively for image files; "
                    "explicit files are tried whatever their suffix. A file that cannot be read is "
                    "reported on one line (stderr) and the rest go on; the exit status is 1 if any failed.")
    p.add_argument("weights", metavar="WEIGHTS_OR_RUN", help=WEIGHTS_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    p.add_argument("-k", "--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON array (errors included)")
    fmt.add_argument("--csv", action="store_true", help="print CSV rows file,rank,class_id,class,probability")
    _add_fast_options(p)
    p.set_defaults(func=predict_command)

    p = subparsers.add_parser(
        "export", help="export to ONNX, TorchScript or a torch.export program, verified",
        description="Export the BatchNorm-folded float32 network (input: normalised float32 NCHW, dynamic "
                    "batch). Preprocessing goes into a sidecar <OUT>.json (and the ONNX metadata). The "
                    "file is reloaded and checked against PyTorch right after export.")
    p.add_argument("weights", metavar="WEIGHTS_OR_RUN", help=WEIGHTS_HELP)
    p.add_argument("--format", choices=("onnx", "torchscript", "exported-program"), default="onnx",
                   help="onnx (.onnx), torchscript (.pt), exported-program (.pt2); default onnx")
    p.add_argument("-o", "--output", default=None, help="output file or folder (default ./<model>.<ext>)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max |logit diff| allowed, relative to max(1, max |logit|) (default 1e-4)")
    p.set_defaults(func=export_command)

    p = subparsers.add_parser(
        "serve", help="HTTP prediction service (FastAPI + uvicorn, micro-batching)",
        description="POST /predict (multipart field 'file', query top_k), GET /health, GET /metadata. "
                    "Binds 127.0.0.1 unless --host says otherwise.")
    p.add_argument("weights", metavar="WEIGHTS_OR_RUN", help=WEIGHTS_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-bytes", type=int, default=10 * 1024 * 1024,
                   help="largest upload accepted, bytes (default 10 MiB; larger -> 413)")
    p.add_argument("--max-batch", type=int, default=16, help="images per model call (default 16)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more images after its first, ms (default 5)")
    p.add_argument("--queue-size", type=int, default=256, help="images waiting for the model (default 256; full -> 503)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    _add_fast_options(p)
    p.set_defaults(func=serve_command)
