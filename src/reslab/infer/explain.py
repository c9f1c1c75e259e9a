"""Grad-CAM (Selvaraju et al. 2017): where in an image the network found the evidence for a class.

For class c, the last stage's activations A (B, K, h, w) are weighted per channel by the spatial
mean of d logit_c / d A, summed over the channels and passed through a ReLU: a coarse (B, h, w) map,
upsampled bilinearly to the input size and scaled to [0, 1] per image. `reslab predict --explain`
writes it over each image as a PNG (the top-1 class, or --class); `reslab serve` answers
POST /explain with one.

It needs gradients, so it runs the PyTorch network (unfolded, float32) whatever backend predicts;
an ONNX file cannot be explained. Written here, in a few dozen lines, rather than taken from PyPI's
grad-cam package, which would add opencv-python, scikit-learn, ttach and tqdm to reslab's
dependencies for what torch, Pillow and matplotlib's colormaps already do.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from reslab.atomic import atomic_write_bytes
from reslab.data.decode import DEFAULT_MAX_PIXELS
from reslab.data.preprocess import Preprocess
from reslab.errors import ConfigError
from reslab.infer.backends import Predictor, is_onnx_file
from reslab.infer.predict import Prediction, predict_batches
from reslab.models.resnet import ResNet
from reslab.weights import Weights, WeightsMeta, load_weights, one_network

OVERLAY_MIN_SIDE = 224  # overlays of small inputs (28 x 28) are enlarged to at least this many pixels
HEAT_ALPHA = 0.5  # weight of the heatmap colour over the image
SUFFIX = ".gradcam.png"


def resolve_class(spec: str | int, meta: WeightsMeta) -> int:
    """A class id from an id or a class name; a ConfigError naming the valid ones otherwise."""
    names = meta.class_names
    text = str(spec).strip()
    if text in names:
        return names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < meta.num_classes:
        return int(text)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    raise ConfigError(
        f"class {text!r} is not a class of these weights: give an id 0-{meta.num_classes - 1} or a name ({shown})"
    )


class GradCam:
    """uint8 images (B, C, S, S) -> Grad-CAM maps (B, S, S) in [0, 1] and the classes explained.

    Hooks the network's last stage; calls are serialised (the hook and the captured activation are
    shared), so one instance may serve several threads."""

    def __init__(self, model: ResNet, preprocess: Preprocess, meta: WeightsMeta | None = None) -> None:
        self.model = model.float().cpu().eval()
        self.meta = meta  # class names, for callers
        self.layer = model.stages[-1]  # its output: (B, K, h, w), the last spatial features
        self.preprocess = preprocess
        self.stats = preprocess.stats.to("cpu")
        self._lock = threading.Lock()

    @classmethod
    def from_weights(cls, weights: Weights) -> GradCam:
        return cls(weights.model, weights.preprocess, weights.meta)

    def __call__(
        self, images: torch.Tensor, classes: int | Sequence[int] | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps (B, S, S) float in [0, 1], class ids (B,)); `classes` None: each image's top-1 class."""
        captured: list[torch.Tensor] = []
        with self._lock, torch.inference_mode(False), torch.enable_grad():
            x = self.stats.apply(images.clone()).requires_grad_(True)  # so the activations carry a graph
            handle = self.layer.register_forward_hook(lambda _m, _inputs, output: captured.append(output))
            try:
                logits = self.model(x)
            finally:
                handle.remove()
            if classes is None:
                target = logits.argmax(1)
            else:
                target = torch.as_tensor(classes, dtype=torch.int64).expand(len(images))
            # d logit_c / d A only: no gradient reaches the parameters
            (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), captured[0])
        activations = captured[0].detach()
        alpha = grads.mean((2, 3), keepdim=True)  # (B, K, 1, 1): each channel's importance for c
        cam = F.relu((alpha * activations).sum(1, keepdim=True))  # (B, 1, h, w)
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(1).clamp(min=1e-12)  # an all-zero map stays zero
        return (cam / peak[:, None, None]).clamp(0, 1), target

    def overlay_png(self, image: torch.Tensor, target: int | None = None) -> tuple[bytes, int]:
        """(PNG of the heatmap over one uint8 image (C, S, S), the class explained)."""
        maps, classes = self(image[None], target)
        return png_bytes(overlay(image, maps[0])), int(classes[0])


def overlay(image: torch.Tensor, heat: torch.Tensor) -> Image.Image:
    """The uint8 network input (C, S, S) with a map (S, S) in [0, 1] over it in matplotlib's "jet"
    colours, enlarged to at least OVERLAY_MIN_SIDE pixels (image nearest-neighbour, map bilinear)."""
    from matplotlib import colormaps

    size = image.shape[-1]
    scale = max(1, math.ceil(OVERLAY_MIN_SIDE / size))
    if scale > 1:
        image = image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        heat = F.interpolate(heat[None, None], scale_factor=scale, mode="bilinear", align_corners=False)[0, 0]
    base = image.float().div(255).expand(3, -1, -1).permute(1, 2, 0).numpy()  # (H, W, 3); grey -> RGB
    colour = colormaps["jet"](heat.clamp(0, 1).numpy())[..., :3]
    blend = (1 - HEAT_ALPHA) * base + HEAT_ALPHA * colour
    return Image.fromarray(np.round(blend * 255).astype(np.uint8), "RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class OverlayNames:
    """A file name per image: STEM.gradcam.png, STEM-2.gradcam.png for a second image of that stem,
    and so on, over every image it has named (so one folder holds them all)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, file: str) -> str:
        stem = Path(file).stem or "image"
        name, n = f"{stem}{SUFFIX}", 2
        while name in self.seen:
            name, n = f"{stem}-{n}{SUFFIX}", n + 1
        self.seen.add(name)
        return name


def overlay_names(files: Sequence[str]) -> list[str]:
    """`OverlayNames` of `files`, in order."""
    name = OverlayNames()
    return [name(file) for file in files]


class OverlayWriter:
    """Grad-CAM overlay PNGs of images already decoded, written into one folder, named by
    `OverlayNames`: of the class `target`, or of the class each image is given (its top-1)."""

    def __init__(self, cam: GradCam, out_dir: str | Path, target: int | None = None) -> None:
        self.cam = cam
        self.out_dir = Path(out_dir)
        self.target = target
        self.names = OverlayNames()

    def write(self, files: Sequence[str], images: torch.Tensor, top1: Sequence[int]) -> list[Path]:
        """One PNG per uint8 image (n, C, S, S) decoded from `files`; the paths written, in order."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        maps, _ = self.cam(images, list(top1) if self.target is None else self.target)
        paths = [self.out_dir / self.names(file) for file in files]
        for image, heat, path in zip(images, maps, paths):
            atomic_write_bytes(path, png_bytes(overlay(image, heat)))
        return paths


def explainable_weights(source: str | Path) -> Weights:
    """The PyTorch weights of `source` for Grad-CAM, which needs gradients: an ONNX file is refused
    before anything is read. Give them to `load_predictor(weights=...)` too, which then does not
    load them again."""
    if is_onnx_file(source):
        raise ConfigError(
            f"Grad-CAM needs gradients, hence PyTorch weights, and {source} is an ONNX file; give the "
            ".safetensors file, run directory or shipped name it was exported from"
        )
    weights = load_weights(source)
    one_network(weights, "Grad-CAM")
    return weights


def predict_explained(
    predictor: Predictor,
    meta: WeightsMeta,
    files: Sequence[tuple[str, str | None]],
    writer: OverlayWriter,
    *,
    batch_size: int = 32,
    k: int = 5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[Prediction, Path | None]]:
    """`predict_files`' predictions, each with the Grad-CAM overlay `writer` wrote of it (None for a
    file that failed): each image is decoded once, for the prediction and its explanation. The
    explained network must take the images the predictor decodes (channels, size, resize rule)."""
    explained, decoded = writer.cam.preprocess, predictor.preprocess
    shape = (explained.in_chans, explained.input_size, explained.resize)
    if shape != (decoded.in_chans, decoded.input_size, decoded.resize):
        raise ConfigError(
            f"Grad-CAM's network takes {shape} (channels, size, resize) but the predictor decodes "
            f"{(decoded.in_chans, decoded.input_size, decoded.resize)}: explain the weights that predict"
        )
    writer.out_dir.mkdir(parents=True, exist_ok=True)
    for predictions, images in predict_batches(
        predictor, meta, files, batch_size=batch_size, k=k, max_pixels=max_pixels
    ):
        good = [p for p in predictions if p.error is None]  # in order, one per image decoded
        paths = iter(
            [] if images is None else writer.write([p.file for p in good], images, [p.top[0][0] for p in good])
        )
        yield from ((p, next(paths) if p.error is None else None) for p in predictions)
