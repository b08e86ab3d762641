"""Multi-layer perceptron."""

from __future__ import annotations

import math

from torch import Tensor, nn

from metacl.errors import ConfigError
from metacl.models.base import MODELS

__all__ = ["MLP"]


class MLP(nn.Module):
    """A ReLU MLP that flattens its input.

    The hidden layers are ``self.features`` and the output layer ``self.head``, so that
    multi-head wrappers and methods that split a representation from a classifier
    (ANIL, OML, progressive columns) can address them.

    Args:
        in_features: Size of the flattened input.
        hidden: Widths of the hidden layers.
        out_features: Number of outputs.
    """

    def __init__(self, in_features: int, hidden: list[int], out_features: int) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1 or any(h < 1 for h in hidden):
            raise ConfigError(
                f"MLP sizes must be positive: in {in_features}, hidden {hidden}, "
                f"out {out_features}"
            )
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(nn.Flatten(), *layers)
        self.feature_dim = width
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@MODELS.register("mlp", summary="ReLU MLP on the flattened input")
def mlp(
    input_shape: tuple[int, ...],
    n_outputs: int,
    *,
    hidden: list[int] = (400, 400),  # noqa: B006
) -> MLP:
    return MLP(math.prod(input_shape), list(hidden), n_outputs)
