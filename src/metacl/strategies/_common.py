"""Helpers the classic strategies share (not public API)."""

from __future__ import annotations

from torch import Tensor
from torch.func import functional_call

from metacl.data.scenarios import Stream
from metacl.errors import ScenarioError
from metacl.strategies.base import Strategy
from metacl.strategies.penalties import LogitsFn, Params


def refuse_regression(cls: type, stream: Stream) -> None:
    """Raise :class:`ScenarioError` for a regression stream: these strategies are
    defined through class probabilities (Fisher, distillation, class memories)."""
    if stream.kind != "classification":
        name = getattr(cls, "registered_name", cls.__name__)
        raise ScenarioError(
            f"strategy {name!r} needs a classification stream; {stream.name!r} is "
            f"{stream.kind}. use 'naive' for regression streams"
        )


def raw_outputs(strategy: Strategy, x: Tensor, task: Tensor) -> Tensor:
    """The model's outputs before the task mask (every class's logit is finite)."""
    if strategy.multi_head:
        return strategy.model(x, task)
    return strategy.model(x)


def apply_mask(strategy: Strategy, out: Tensor, task: Tensor | None) -> Tensor:
    """Mask the outputs of classes outside each sample's task, as ``forward`` does."""
    if strategy.class_mask is not None and task is not None:
        return out.masked_fill(~strategy.class_mask[task], float("-inf"))
    return out


def functional_logits(strategy: Strategy) -> LogitsFn:
    """``logits_fn(params, x, task)``: the strategy's masked forward with the model's
    trainable parameters given as a dictionary (for ``torch.func``)."""
    model = strategy.model

    def logits_fn(params: Params, x: Tensor, task: Tensor) -> Tensor:
        args = (x, task) if strategy.multi_head else (x,)
        out = functional_call(model, params, args)
        return apply_mask(strategy, out, task)

    return logits_fn


def on_model_device(
    strategy: Strategy, tensors: dict[str, Tensor]
) -> dict[str, Tensor]:
    """``tensors`` moved to the device of the strategy's model (a checkpoint is read
    onto the CPU; the state it restores must live beside the parameters)."""
    device = next(strategy.model.parameters()).device
    return {name: t.to(device) for name, t in tensors.items()}


def trainable(strategy: Strategy) -> dict[str, Tensor]:
    """The model's parameters that require gradients, by name."""
    return {n: p for n, p in strategy.model.named_parameters() if p.requires_grad}
