"""reslab: deep residual networks (He et al. 2015) and their family, faithful and fast.

`create_model` and `list_models` are imported on first use (PEP 562), so that `import reslab`
and `reslab --help` do not import torch."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models"]


def __getattr__(name: str) -> Any:
    if name in ("create_model", "list_models"):
        from reslab import models

        return getattr(models, name)
    raise AttributeError(f"module 'reslab' has no attribute {name!r}")
