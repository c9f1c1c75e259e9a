"""reslab: deep residual networks (He et al. 2015) and their family, faithful and fast."""

from reslab.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models"]
