"""The strategy interface and the two baselines built on it.

A strategy is a plain class with four methods the runner calls (DESIGN.md):
``begin_experience``, ``observe(x, y, task)`` for each training batch (with
``index=`` the batch's rows in the experience, for a strategy that asks for them),
``end_experience``, and ``predict(x, task)`` for evaluation. There is no callback
bus: a strategy overrides what it needs, and an unused hook costs nothing.

A strategy declares the scenarios it fits (:attr:`Strategy.scenarios`) and whether it
needs task ids at test time (:attr:`Strategy.requires_task_ids`); the constructor
refuses a stream it does not fit with a :class:`~metacl.errors.ScenarioError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from metacl.data.scenarios import Experience, Stream
from metacl.errors import ConfigError, ScenarioError
from metacl.models.multihead import MultiHead
from metacl.registry import Registry

__all__ = [
    "STRATEGIES",
    "OptimizerSpec",
    "Strategy",
    "Naive",
    "Joint",
    "build_strategy",
]

STRATEGIES = Registry("strategy")

ALL_SCENARIOS = ("class_incremental", "task_incremental", "domain_incremental")


@dataclass(frozen=True)
class OptimizerSpec:
    """How a strategy builds its optimizer (the ``optimizer`` configuration section).

    Args:
        name: "sgd" or "adam".
        lr: Learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty added by the optimizer.
    """

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adam"):
            raise ConfigError(
                f"optimizer.name = {self.name!r}; valid choices: sgd, adam"
            )
        if not self.lr > 0:
            raise ConfigError(f"optimizer.lr = {self.lr} must be > 0")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError(
                f"optimizer.momentum = {self.momentum} and optimizer.weight_decay = "
                f"{self.weight_decay} must be >= 0"
            )

    def build(self, params) -> torch.optim.Optimizer:
        if self.name == "sgd":
            return torch.optim.SGD(
                params,
                lr=self.lr,
                momentum=self.momentum,
                weight_decay=self.weight_decay,
            )
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)


class Strategy:
    """Base class: fine-tuning with the configured optimizer and cross-entropy.

    Subclasses override the hooks they need. ``forward`` gives the logits a strategy
    should train on: in a task-incremental stream, outputs of the classes outside a
    sample's task are masked to ``-inf``, and a :class:`MultiHead` model picks the
    head of the sample's task.

    Args:
        model: The network; a :class:`MultiHead` for one head per task.
        stream: The stream it will see (read for its scenario, classes and tasks).
        optimizer: How to build the optimizer.

    Raises:
        ScenarioError: The strategy does not fit the stream's scenario.
    """

    #: scenarios this strategy fits
    scenarios: ClassVar[tuple[str, ...]] = ALL_SCENARIOS
    #: whether it needs task ids at test time
    requires_task_ids: ClassVar[bool] = False
    #: whether the runner hands it the whole stream as one experience
    trains_jointly: ClassVar[bool] = False
    #: whether ``observe`` takes ``index=``, the rows of the batch in the training
    #: data of the experience given to ``begin_experience`` (for per-sample values
    #: computed once per experience); the runner passes it, other callers may not
    takes_index: ClassVar[bool] = False

    def __init__(
        self, model: nn.Module, stream: Stream, optimizer: OptimizerSpec
    ) -> None:
        self.check_stream(stream)
        if isinstance(model, MultiHead) and not stream.task_ids_at_test:
            raise ScenarioError(
                f"a multi-head model needs task ids at test time, and the "
                f"{stream.scenario} stream {stream.name!r} gives none; set "
                "model.multi_head = false or use a task_incremental scenario"
            )
        self.model = model
        self.stream = stream
        self.optimizer_spec = optimizer
        self.optimizer = optimizer.build(model.parameters())
        self.multi_head = isinstance(model, MultiHead)
        self.regression = stream.kind == "regression"
        # outputs are masked to the task's classes only in classification
        # NOTE: on the model's device, where the task ids that index it are
        device = next(model.parameters()).device
        self.class_mask = (
            stream.class_mask().to(device)
            if stream.task_ids_at_test and not self.regression
            else None
        )
        self.criterion = nn.MSELoss() if self.regression else nn.CrossEntropyLoss()

    @classmethod
    def check_stream(cls, stream: Stream) -> None:
        """Raise :class:`ScenarioError` unless the strategy fits ``stream``."""
        name = getattr(cls, "registered_name", cls.__name__)
        if stream.scenario not in cls.scenarios:
            raise ScenarioError(
                f"strategy {name!r} does not fit the {stream.scenario} stream "
                f"{stream.name!r}; it supports: {', '.join(cls.scenarios)}"
            )
        if cls.requires_task_ids and not stream.task_ids_at_test:
            raise ScenarioError(
                f"strategy {name!r} needs task ids at test time, and the "
                f"{stream.scenario} stream {stream.name!r} gives none; use a "
                "task_incremental scenario"
            )

    # -- the forward pass every strategy shares ------------------------------------

    def forward(self, x: Tensor, task: Tensor | None) -> Tensor:
        """Logits (or regression outputs) for ``x``; ``task`` is ``(batch,)`` or None."""
        if self.multi_head:
            if task is None:
                raise ScenarioError("a multi-head model needs task ids, got None")
            out = self.model(x, task)
        else:
            out = self.model(x)
        if self.class_mask is not None and task is not None:
            out = out.masked_fill(~self.class_mask[task], float("-inf"))
        return out

    # -- the four hooks ----------------------------------------------------------

    def begin_experience(self, experience: Experience) -> None:
        """Called before the first batch of ``experience``."""

    def observe(self, x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        """Learn from one batch; returns the (detached) training loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.forward(x, task), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def end_experience(self, experience: Experience) -> None:
        """Called after the last batch of ``experience``."""

    @torch.inference_mode()
    def predict(self, x: Tensor, task: Tensor | None) -> Tensor:
        """Outputs for evaluation; ``task`` is None when the stream gives no task id."""
        return self.forward(x, task if self.stream.task_ids_at_test else None)

    # -- checkpointing -----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the model's weights needed to resume: tensors and
        plain values only (checkpoints are loaded with ``weights_only=True``)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def build_strategy(
    name: str, model: nn.Module, stream: Stream, optimizer: OptimizerSpec, **settings
) -> Strategy:
    """Build the registered strategy ``name`` for ``stream``."""
    # NOTE: importing the strategy modules registers them.
    import metacl.strategies  # noqa: F401

    return STRATEGIES.build(name, model, stream, optimizer, **settings)


def register_strategy(name: str, summary: str):
    """Register a :class:`Strategy` subclass under ``name``."""

    def decorate(cls):
        cls.registered_name = name
        return STRATEGIES.register(name, summary=summary)(cls)

    return decorate


@register_strategy(
    "naive", summary="fine-tuning on each experience in turn (lower bound)"
)
class Naive(Strategy):
    """Plain fine-tuning: train on each experience as it comes, nothing else.

    The lower bound of continual learning: it forgets whatever the new data does not
    support.
    """

    def __init__(
        self, model: nn.Module, stream: Stream, optimizer: OptimizerSpec
    ) -> None:
        super().__init__(model, stream, optimizer)


@register_strategy(
    "joint", summary="one model trained on all experiences at once (upper bound)"
)
class Joint(Strategy):
    """Joint training: the runner concatenates every experience's training data and
    trains once, shuffled, for the configured epochs.

    Not a continual learner but its upper bound. Its accuracy matrix has one row (the
    model after seeing everything), so only ACC is defined; LA, BWT, FWT and
    forgetting are NaN.
    """

    trains_jointly = True

    def __init__(
        self, model: nn.Module, stream: Stream, optimizer: OptimizerSpec
    ) -> None:
        super().__init__(model, stream, optimizer)
