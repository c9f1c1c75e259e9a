"""`reslab push`: upload a run or weights file to the Hugging Face Hub (wiring only; reslab.infer.publish)."""

from __future__ import annotations

import argparse
import tempfile


def push_command(args: argparse.Namespace) -> int:
    from reslab.infer.publish import build_hub_folder, upload_hub_folder

    options = {"repo": args.repo, "license_id": args.license, "keep_paths": args.keep_paths}
    if args.dry_run is not None:
        folder = build_hub_folder(args.weights, args.dry_run, **options)
        print(f"wrote {folder.path}: weights.safetensors, config.json, README.md (model card); nothing uploaded")
        if folder.redacted:
            print("local paths are shown as DATA_DIR, RUN_DIR, ... (your own weights file keeps them; --keep-paths)")
        return 0
    with tempfile.TemporaryDirectory(prefix="reslab-push-") as tmp:
        folder = build_hub_folder(args.weights, tmp, **options)
        url = upload_hub_folder(folder, revision=args.revision, private=args.private)
    print(f"pushed {folder.weights.meta.model} to {args.repo}: {url}")
    print(
        f"load it anywhere weights are accepted as hf-hub:{args.repo}" + (f"@{args.revision}" if args.revision else "")
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "push",
        help="upload weights to the Hugging Face Hub with a model card",
        description="Upload a run's (or a weights file's) weights.safetensors, a config.json (architecture, "
        "classes, preprocessing) and a model card README.md (metrics, training command, data kind, folder "
        "name, image count and checksum, preprocessing, license) to a Hub model repository, creating it if "
        "needed. Local absolute paths are not published: the command shows them as DATA_DIR, RUN_DIR, ... "
        "and the uploaded weights are a copy whose metadata names no path (same tensors; your file is "
        "untouched); --keep-paths publishes them. The token comes from HF_TOKEN or `hf auth login`. Load "
        "the result with hf-hub:USER/NAME wherever weights are accepted.",
    )
    p.add_argument("weights", metavar="RUN_OR_WEIGHTS", help="run directory, .safetensors file or shipped name")
    p.add_argument("--repo", required=True, metavar="USER/NAME", help="Hub model repository to upload to")
    p.add_argument("--revision", help="branch to upload to (created if new; default main)")
    p.add_argument("--private", action="store_true", help="create the repository private (when it is new)")
    p.add_argument("--license", default="mit", help="license id for the model card's YAML header (default mit)")
    p.add_argument(
        "--keep-paths",
        action="store_true",
        help="publish the local absolute paths the weights record (data folder, run directory, those in the "
        "training command) as they are, and the weights file byte for byte; by default they are replaced",
    )
    p.add_argument(
        "--dry-run",
        metavar="DIR",
        help="write the repository's files into DIR (empty or new) and upload nothing",
    )
    p.set_defaults(func=push_command)
