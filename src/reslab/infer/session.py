"""The one onnxruntime session factory: what `predict` / `serve` run an ONNX file in (reslab.infer.backends),
and what `reslab export` verifies its file with (reslab.infer.export), so an export is checked in the
very session that will run it. onnxruntime is imported when a session is made."""

from __future__ import annotations

from pathlib import Path

import torch


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session; intra-op threads = torch.get_num_threads() unless given."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # fusions, layout changes
    options.log_severity_level = 3  # errors only: no warnings about unused initializers and such
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
