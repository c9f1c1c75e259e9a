"""`reslab embed`: pooled features of image files as a .npy file (wiring only; reslab.infer.embed)."""

from __future__ import annotations

import argparse
import sys

from reslab.commands.args import add_device, positive_int
from reslab.vocab import DEFAULT_MAX_PIXELS


def embed_command(args: argparse.Namespace) -> int:
    from reslab.data.decode import quiet_pillow_bomb_warning
    from reslab.device import resolve_device
    from reslab.errors import ConfigError
    from reslab.infer.embed import embed_files, write_embeddings
    from reslab.infer.predict import collect_images
    from reslab.weights import load_weights, one_network

    if not str(args.output).endswith(".npy"):
        raise ConfigError(f"-o {args.output}: name a .npy file (the file list is written beside it as .json)")
    quiet_pillow_bomb_warning()  # --max-pixels is the limit; Pillow's would only add noise
    weights = load_weights(args.weights).to(resolve_device(args.device))
    one_network(weights, "an embedding")
    embeddings = embed_files(
        weights, collect_images(args.images), batch_size=args.batch_size, max_pixels=args.max_pixels
    )
    for _, error in embeddings.failed:
        print(f"reslab embed: error: {error}", file=sys.stderr)
    npy, sidecar = write_embeddings(args.output, embeddings, weights, args.weights)
    rows, dim = embeddings.features.shape
    print(f"wrote {npy} ({rows} x {dim} float32, {weights.meta.model} pooled features) and {sidecar} (its files)")
    if embeddings.failed:
        print(f"reslab embed: {len(embeddings.failed)} file(s) failed and have no row", file=sys.stderr)
    return 1 if embeddings.failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="pooled features of image files, one row per image, as a .npy file",
        description="Write one feature vector per image: the network's globally pooled last feature map "
        "(forward_head(..., pre_logits=True)), float32, as OUT.npy, and beside it OUT.json naming the file of "
        "each row. Images are read and preprocessed exactly as `reslab predict` does. A file that cannot "
        "be read gets no row, is named on stderr and in OUT.json; the exit status is then 1.",
    )
    p.add_argument(
        "weights",
        metavar="WEIGHTS",
        help="a .safetensors file, a run directory, a shipped name, or hf-hub:USER/NAME[@REVISION]",
    )
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npy", help="where to write the rows (.npy)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    add_device(p)  # "auto" like every command (until issue 22 embed alone defaulted to "cpu")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels than this, read from the header (default {DEFAULT_MAX_PIXELS:,}; "
        "0 = no limit)",
    )
    p.set_defaults(func=embed_command)
