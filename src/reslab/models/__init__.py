"""The model zoo: residual networks, their plain twins, and the family (pre-act, WRN, ResNeXt)."""

from reslab.models.complexity import count_macs, count_params, describe, model_table
from reslab.models.interop import from_torchvision, load_torchvision_into, to_torchvision
from reslab.models.registry import ModelInfo, create_model, list_models, model_info
from reslab.models.resnet import ResNet

__all__ = [
    "ModelInfo",
    "ResNet",
    "count_macs",
    "count_params",
    "create_model",
    "describe",
    "from_torchvision",
    "list_models",
    "load_torchvision_into",
    "model_info",
    "model_table",
    "to_torchvision",
]
