"""Inference: decode user images, predict fast, export to other runtimes, serve over HTTP.

  decode      any common image file -> upright 8-bit L/RGB image, with a pixel limit
  preprocess  image -> the uint8 (C, S, S) tensor the weights expect (resize, centre crop)
  fast        fold_batchnorm, FastPredictor (channels_last, bf16 where native, torch.compile)
  predict     files/folders/globs -> top-k predictions, table / JSON / CSV
  export      ONNX / TorchScript / ExportedProgram, verified against PyTorch after writing
  serve       FastAPI app with a bounded queue and micro-batching
  commands    the `reslab predict | export | serve` command lines

onnx, onnxruntime, fastapi and uvicorn are imported only by the functions that use them.
"""

from reslab.infer.decode import (DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLargeError, NotAnImageError,
                                 decode_image)
from reslab.infer.export import ExportError, ExportResult, export_model
from reslab.infer.fast import FastPredictor, fold_batchnorm, native_bf16_supported, resolve_precision
from reslab.infer.predict import Prediction, collect_images, predict_files, top_k
from reslab.infer.preprocess import fit_image, image_to_tensor, load_input

__all__ = [
    "DEFAULT_MAX_PIXELS", "ExportError", "ExportResult", "FastPredictor", "ImageDecodeError",
    "ImageTooLargeError", "NotAnImageError", "Prediction", "collect_images", "decode_image",
    "export_model", "fit_image", "fold_batchnorm", "image_to_tensor", "load_input",
    "native_bf16_supported", "predict_files", "resolve_precision", "top_k",
]
