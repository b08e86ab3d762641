"""Progressive neural networks as a strategy: a new column per task, old ones frozen."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from metacl.data.scenarios import Experience, Stream
from metacl.errors import ConfigError, ScenarioError
from metacl.models.multihead import MultiHead
from metacl.models.progressive import ProgressiveNet, progressive_from
from metacl.strategies._common import refuse_regression
from metacl.strategies.base import OptimizerSpec, Strategy, register_strategy

__all__ = ["PNN"]


@register_strategy(
    "pnn", summary="progressive neural networks (Rusu et al. 2016); needs task ids"
)
class PNN(Strategy):
    """Progressive neural networks: one column per task, lateral adapters, no forgetting.

    The strategy turns the configured ``mlp`` or ``cnn`` model into a
    :class:`~metacl.models.ProgressiveNet` with one column per task of the stream
    (column 0 keeps the model's initial weights). During experience ``t`` only column
    ``t`` (its layers and its adapters from earlier columns) is trained; every other
    column is frozen, so what earlier tasks learned is never changed. At test time the
    task id selects the column, which is why the strategy needs task ids.

    Args:
        model: An ``mlp`` or ``cnn`` model (without BatchNorm), or a
            :class:`~metacl.models.ProgressiveNet` with at least one column per task.
        stream: A task-incremental stream.
        optimizer: The optimizer settings; a fresh optimizer is built for each column.

    Raises:
        ScenarioError: The stream gives no task ids at test time (class- or
            domain-incremental), or the model is multi-head.

    References:
        Rusu et al., "Progressive Neural Networks", arXiv:1606.04671, 2016.
    """

    scenarios = ("task_incremental",)
    requires_task_ids = True

    def __init__(
        self, model: nn.Module, stream: Stream, optimizer: OptimizerSpec
    ) -> None:
        if isinstance(model, MultiHead):
            raise ScenarioError(
                "strategy 'pnn' gives every column its own output layer already; set "
                "model.multi_head = false"
            )
        self.check_stream(stream)
        net = progressive_from(model, stream.n_tasks, tuple(stream.input_shape))
        if len(net.columns) < stream.n_tasks:
            raise ConfigError(
                f"the progressive model has {len(net.columns)} columns and the stream "
                f"{stream.n_tasks} tasks; set model.columns >= {stream.n_tasks}"
            )
        super().__init__(net, stream, optimizer)
        self.net: ProgressiveNet = net
        self.active = 0
        self._activate(0)

    @classmethod
    def check_stream(cls, stream: Stream) -> None:
        refuse_regression(cls, stream)
        if stream.scenario != "task_incremental" or not stream.task_ids_at_test:
            raise ScenarioError(
                f"strategy 'pnn' picks the column of a sample by its task id, and the "
                f"{stream.scenario} stream {stream.name!r} gives no task id at test "
                "time. Use the task_incremental scenario, or, without task ids, a "
                "replay (replay, derpp, agem) or regularisation (ewc, online_ewc, si, "
                "lwf) strategy"
            )

    def _activate(self, k: int) -> None:
        """Train column ``k`` only: freeze the rest, fresh optimizer over it."""
        for j, column in enumerate(self.net.columns):
            column.requires_grad_(j == k)
        self.active = k
        self.optimizer = self.optimizer_spec.build(self.net.column_parameters(k))

    def forward(self, x: Tensor, task: Tensor | None) -> Tensor:
        if task is None:
            raise ScenarioError("strategy 'pnn' needs task ids, got None")
        out = self.net(x, task)
        return out.masked_fill(~self.class_mask[task], float("-inf"))

    def begin_experience(self, experience: Experience) -> None:
        if experience.task_id != self.active:
            self._activate(experience.task_id)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["active"] = self.active
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._activate(int(state["active"]))
        super().load_state_dict(state)
