"""The model registry.

A model factory takes the input shape and the number of outputs as context, and its
own settings as keyword-only arguments, so that a configuration can build it by name.
"""

from __future__ import annotations

from torch import nn

from metacl.registry import Registry

__all__ = ["MODELS", "build_model"]

MODELS = Registry("model")


def build_model(
    name: str, input_shape: tuple[int, ...], n_outputs: int, **settings
) -> nn.Module:
    """Build the registered model ``name`` for inputs of ``input_shape``.

    Example:
        >>> model = build_model("mlp", (1, 8, 8), 10, hidden=[32])
        >>> sum(p.numel() for p in model.parameters())
        2410
    """
    # NOTE: importing the model modules registers them.
    import metacl.models.cnn  # noqa: F401
    import metacl.models.mlp  # noqa: F401

    return MODELS.build(name, tuple(input_shape), n_outputs, **settings)
