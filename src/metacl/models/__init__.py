"""Networks: MLP, a small CNN, and a multi-head wrapper for task-incremental learning."""

from metacl.models.base import MODELS, build_model
from metacl.models.cnn import SmallCNN
from metacl.models.mlp import MLP
from metacl.models.multihead import MultiHead
from metacl.models.progressive import ProgressiveNet, progressive_from

__all__ = [
    "MODELS",
    "build_model",
    "MLP",
    "SmallCNN",
    "MultiHead",
    "ProgressiveNet",
    "progressive_from",
]
