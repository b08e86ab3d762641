"""Multi-head wrapper for task-incremental learning."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metacl.errors import ScenarioError

__all__ = ["MultiHead"]


class MultiHead(nn.Module):
    """One shared body and one output layer per task.

    The wrapped model must expose ``features`` (the body) and ``head`` (its output
    layer); the head is copied once per task, each copy starting from the same
    initialisation. Every head has the full number of outputs, so labels keep their
    global values; the scenario masks the classes that do not belong to a task.

    Args:
        model: A model with ``features`` and ``head`` (``MLP``, ``SmallCNN``).
        n_tasks: Number of heads.
    """

    def __init__(self, model: nn.Module, n_tasks: int) -> None:
        super().__init__()
        if not hasattr(model, "features") or not isinstance(
            getattr(model, "head", None), nn.Linear
        ):
            raise ScenarioError(
                f"{type(model).__name__} has no 'features' body and 'head' linear "
                "layer, so it cannot be given one head per task"
            )
        self.features = model.features
        head: nn.Linear = model.head
        self.heads = nn.ModuleList()
        for _ in range(n_tasks):
            copy = nn.Linear(head.in_features, head.out_features)
            copy.load_state_dict(head.state_dict())
            self.heads.append(copy)
        self.n_tasks = n_tasks

    def forward(self, x: Tensor, task: Tensor) -> Tensor:
        """Logits of each sample from the head of its task; ``task`` is ``(batch,)``."""
        z = self.features(x)
        first = int(task[0]) if len(task) else 0
        if len(task) and bool((task == first).all()):
            # the common case: one task in the batch, one matrix product
            return self.heads[first](z)
        out = z.new_empty(len(z), self.heads[0].out_features)
        for t in torch.unique(task).tolist():
            rows = task == t
            out[rows] = self.heads[t](z[rows])
        return out
