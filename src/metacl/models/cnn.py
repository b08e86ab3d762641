"""A small convolutional network."""

from __future__ import annotations

from torch import Tensor, nn

from metacl.errors import ConfigError
from metacl.models.base import MODELS

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Blocks of 3x3 convolution, optional BatchNorm, ReLU and 2x2 max-pooling.

    The convolutional blocks and the flattening are ``self.features``; the output layer
    is ``self.head``.

    Args:
        input_shape: ``(channels, height, width)``.
        out_features: Number of outputs.
        channels: Output channels of each block; each block halves height and width.
        hidden: Width of a fully connected layer before the head (0: none).
        batch_norm: Add BatchNorm after each convolution. Note that BatchNorm keeps
            running statistics in buffers: when parameters are adapted functionally
            (``metacl.functional``), those buffers are handled as that module documents.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        out_features: int,
        *,
        channels: list[int] = (32, 64),  # noqa: B006
        hidden: int = 256,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                f"the cnn model needs image inputs (channels, height, width), got shape "
                f"{tuple(input_shape)}; use the mlp model for flat inputs"
            )
        in_channels, height, width = input_shape
        if min(height, width) < 2 ** len(channels):
            raise ConfigError(
                f"input {height}x{width} is too small for {len(channels)} pooling "
                f"blocks; use fewer channels entries (cnn.channels = {list(channels)})"
            )
        layers: list[nn.Module] = []
        for c in channels:
            layers.append(nn.Conv2d(in_channels, c, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            in_channels = c
            height, width = height // 2, width // 2
        layers.append(nn.Flatten())
        flat = in_channels * height * width
        if hidden:
            layers += [nn.Linear(flat, hidden), nn.ReLU()]
            flat = hidden
        self.features = nn.Sequential(*layers)
        self.feature_dim = flat
        self.head = nn.Linear(flat, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@MODELS.register(
    "cnn", summary="small CNN: conv-ReLU-pool blocks, a hidden layer, a head"
)
def cnn(
    input_shape: tuple[int, ...],
    n_outputs: int,
    *,
    channels: list[int] = (32, 64),  # noqa: B006
    hidden: int = 256,
    batch_norm: bool = False,
) -> SmallCNN:
    return SmallCNN(
        input_shape,
        n_outputs,
        channels=list(channels),
        hidden=hidden,
        batch_norm=batch_norm,
    )
