"""Inference: decode user images, predict fast, export to other runtimes, serve over HTTP.

  decode      any common image file -> upright 8-bit L/RGB image, with a pixel limit
  preprocess  image -> the uint8 (C, S, S) tensor the weights expect (resize, centre crop)
  fast        fold_batchnorm, FastPredictor (channels_last, bf16 where native, torch.compile)
  backends    the Predictor interface; OnnxPredictor runs an exported .onnx file (fp32 or int8);
              load_predictor / choose_backend: what `--backend` runs
  onnx_cache  the default for weights on CPU: their ONNX export, made once, verified, trusted by checksum
  predict     files/folders/globs -> top-k predictions, table / JSON / CSV
  explain     Grad-CAM heatmaps over images already decoded (`predict --explain`, serve's POST /explain)
  calibrate   temperature scaling: fit T on held-out images, store it with the weights
  export      ONNX / TorchScript / ExportedProgram, verified against PyTorch after writing
  quantize    int8 ONNX (onnxruntime static QDQ), calibrated, checked against the fp32 file
  serve       FastAPI app with a bounded queue and micro-batching

onnx, onnxruntime, fastapi and uvicorn are imported only by the functions that use them.
"""

from reslab.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError, NotAnImageError, decode_image
from reslab.data.preprocess import fit_image, image_to_tensor, load_image
from reslab.device import native_bf16_supported, resolve_precision
from reslab.infer.backends import OnnxPredictor, Predictor, choose_backend, load_predictor
from reslab.infer.export import ExportError, ExportResult, export_model
from reslab.infer.fast import FastPredictor, fold_batchnorm
from reslab.infer.onnx_cache import CachedOnnx, cached_onnx
from reslab.infer.predict import Prediction, collect_images, predict_files, top_k
from reslab.infer.quantize import Int8Result, export_int8

__all__ = [
    "CachedOnnx",
    "DEFAULT_MAX_PIXELS",
    "ExportError",
    "ExportResult",
    "FastPredictor",
    "ImageDecodeError",
    "ImageTooLargeError",
    "Int8Result",
    "NotAnImageError",
    "OnnxPredictor",
    "Prediction",
    "Predictor",
    "cached_onnx",
    "choose_backend",
    "collect_images",
    "decode_image",
    "export_int8",
    "export_model",
    "fit_image",
    "fold_batchnorm",
    "image_to_tensor",
    "load_image",
    "load_predictor",
    "native_bf16_supported",
    "predict_files",
    "resolve_precision",
    "top_k",
]
