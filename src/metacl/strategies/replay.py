"""Replay strategies: experience replay, A-GEM and DER++.

Every strategy here keeps a :mod:`metacl.strategies.memory` memory of preallocated
tensors; drawing a replay batch indexes it, so the time per batch stays flat however
many experiences have passed. All of them work in the online (single-pass) setting:
the reservoir and class-balanced memories are filled batch by batch.

Note [when the memory is filled]
    ER (Chaudhry et al. 2019) and DER++ (Buzzega et al. 2020) offer every training
    batch to the memory right after its step (``update="batch"``, the default), so
    that during an experience the replayed examples include some of that experience.
    ``update="experience"`` offers the experience's training data at its end instead
    (A-GEM always does, as its paper does): while an experience trains, the memory
    holds past experiences only, and DER++ stores the logits of the model as it is
    at the end of the experience. This is how Avalanche's replay plugin and its DER
    fill their buffers; in class-incremental streams it protects old classes more,
    since every replayed example is an old one. It needs to know where an experience
    ends, which a task-free online stream does not tell.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacl.data.scenarios import Experience, Stream
from metacl.errors import ConfigError
from metacl.strategies._common import apply_mask, raw_outputs, refuse_regression
from metacl.strategies.base import OptimizerSpec, Strategy, register_strategy
from metacl.strategies.memory import Memory, build_memory
from metacl.strategies.penalties import agem_project

__all__ = ["Replay", "AGEM", "DERpp"]

MemoryPolicy = Literal["reservoir", "class_balanced"]
MemoryUpdate = Literal["batch", "experience"]


class _MemoryStrategy(Strategy):
    """A strategy with one replay memory in its state, filled per batch (by the
    subclass's ``observe``, when ``update == "batch"``) or per experience (here, at
    its end); see Note [when the memory is filled]."""

    store_logits = False

    def __init__(
        self,
        model: nn.Module,
        stream: Stream,
        optimizer: OptimizerSpec,
        *,
        memory_size: int,
        replay_batch_size: int,
        memory: str,
        update: str,
    ) -> None:
        if update not in ("batch", "experience"):
            raise ConfigError(
                f"update = {update!r} is invalid; expected 'batch' (each batch after its "
                "step) or 'experience' (each experience at its end)"
            )
        if memory_size < 1:
            raise ConfigError(f"memory_size = {memory_size} must be >= 1")
        if replay_batch_size < 1:
            raise ConfigError(f"replay_batch_size = {replay_batch_size} must be >= 1")
        super().__init__(model, stream, optimizer)
        device = next(model.parameters()).device
        self.memory: Memory = build_memory(
            memory,
            memory_size,
            stream.input_shape,
            n_classes=stream.n_classes,
            store_logits=self.store_logits,
            device=device,
        )
        self.replay_batch_size = replay_batch_size
        self.update = update

    def end_experience(self, experience: Experience) -> None:
        if self.update == "experience":
            _add_experience(self, experience)

    @classmethod
    def check_stream(cls, stream: Stream) -> None:
        super().check_stream(stream)
        refuse_regression(cls, stream)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["memory"] = self.memory.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])


@register_strategy(
    "replay", summary="experience replay from a reservoir or class-balanced memory"
)
class Replay(_MemoryStrategy):
    """Experience replay: each batch is trained together with a batch from memory.

    The current batch and ``replay_batch_size`` examples drawn from the memory are
    concatenated and trained on with one cross-entropy; afterwards the current batch
    is offered to the memory. With the reservoir policy this is the ER baseline of
    Chaudhry et al. (2019); it works online.

    Args:
        model: The network.
        stream: The stream (any classification scenario).
        optimizer: The optimizer settings.
        memory_size: Examples the memory holds.
        replay_batch_size: Examples replayed with each batch.
        memory: ``"reservoir"`` (a uniform sample of everything seen) or
            ``"class_balanced"`` (equal slots per class seen).
        update: ``"batch"`` (each batch after its step, as in the paper) or
            ``"experience"`` (each experience at its end); see Note [when the memory
            is filled].

    References:
        Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019.
        Rolnick et al., "Experience Replay for Continual Learning", NeurIPS 2019.
    """

    def __init__(
        self,
        model: nn.Module,
        stream: Stream,
        optimizer: OptimizerSpec,
        *,
        memory_size: int = 500,
        replay_batch_size: int = 64,
        memory: MemoryPolicy = "reservoir",
        update: MemoryUpdate = "batch",
    ) -> None:
        super().__init__(
            model,
            stream,
            optimizer,
            memory_size=memory_size,
            replay_batch_size=replay_batch_size,
            memory=memory,
            update=update,
        )

    def observe(self, x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        xs, ys, ts = x, y, task
        if len(self.memory):
            replay = self.memory.sample(self.replay_batch_size)
            xs = torch.cat([x, replay.x])
            ys = torch.cat([y, replay.y])
            ts = torch.cat([task, replay.task])
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.forward(xs, ts), ys)
        loss.backward()
        self.optimizer.step()
        if self.update == "batch":
            self.memory.add(x, y, task)
        return loss.detach()


def _add_experience(strategy: _MemoryStrategy, experience: Experience) -> None:
    """Offer an experience's training data to the memory, with the model's raw
    outputs on it when the memory keeps logits."""
    device = strategy.memory.x.device
    x = experience.train_x.to(device)
    y = experience.train_y.to(device)
    task = experience.task_ids(len(x)).to(device)
    logits = None
    if strategy.store_logits:
        was_training = strategy.model.training
        strategy.model.eval()
        with torch.inference_mode():
            logits = torch.cat(
                [
                    raw_outputs(strategy, x[i : i + 1000], task[i : i + 1000])
                    for i in range(0, len(x), 1000)
                ]
            )
        strategy.model.train(was_training)
    strategy.memory.add(x, y, task, logits=logits)


def _flat_grad(params: list[nn.Parameter]) -> Tensor:
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in params
        ]
    )


@register_strategy(
    "agem", summary="averaged gradient episodic memory (Chaudhry et al. 2019)"
)
class AGEM(_MemoryStrategy):
    """A-GEM: never let a step raise the loss on a batch drawn from memory.

    Each step draws ``replay_batch_size`` examples of *past* experiences from the
    memory and computes their gradient ``g_ref``; when the current gradient ``g``
    points against it (``g . g_ref < 0``), ``g`` is projected to be orthogonal to it
    (:func:`~metacl.strategies.penalties.agem_project`). The memory is filled at the
    end of each experience with a sample of its training data; with the reservoir
    policy it stays a uniform sample of every past experience.

    Args:
        model, stream, optimizer: As :class:`Replay`.
        memory_size: Examples the memory holds (all past experiences together).
        replay_batch_size: Examples per reference gradient (the paper's ``S``).
        memory: As :class:`Replay`.

    References:
        Chaudhry, Ranzato, Rohrbach & Elhoseiny, "Efficient Lifelong Learning with
        A-GEM", ICLR 2019.
    """

    def __init__(
        self,
        model: nn.Module,
        stream: Stream,
        optimizer: OptimizerSpec,
        *,
        memory_size: int = 500,
        replay_batch_size: int = 256,
        memory: MemoryPolicy = "reservoir",
    ) -> None:
        super().__init__(
            model,
            stream,
            optimizer,
            memory_size=memory_size,
            replay_batch_size=replay_batch_size,
            memory=memory,
            update="experience",  # as in the paper
        )
        self.params = [p for p in model.parameters() if p.requires_grad]

    def observe(self, x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        # the reference gradient on past experiences
        g_ref = None
        if len(self.memory):
            ref = self.memory.sample(self.replay_batch_size)
            self.optimizer.zero_grad(set_to_none=True)
            self.criterion(self.forward(ref.x, ref.task), ref.y).backward()
            g_ref = _flat_grad(self.params)

        # the current gradient, projected if it conflicts
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.forward(x, task), y)
        loss.backward()
        if g_ref is not None:
            g = _flat_grad(self.params)
            projected = agem_project(g, g_ref)
            if projected is not g:
                offset = 0
                for p in self.params:
                    n = p.numel()
                    p.grad = projected[offset : offset + n].view_as(p).clone()
                    offset += n
        self.optimizer.step()
        return loss.detach()


@register_strategy("derpp", summary="dark experience replay++ (Buzzega et al. 2020)")
class DERpp(_MemoryStrategy):
    """DER++: replay stored logits (and labels) from a reservoir memory.

    The memory keeps, with each example, the model's outputs when it was seen. The
    loss adds ``alpha * MSE(outputs(x'), stored logits)`` on one memory batch and
    ``beta * CE(outputs(x''), y'')`` on another. ``beta = 0`` is DER. The logits are
    the model's raw outputs (before any task mask), so they stay finite.

    Args:
        model, stream, optimizer: As :class:`Replay`.
        memory_size: Examples the memory holds.
        replay_batch_size: Size of each of the two memory batches.
        alpha: Weight of the logit-matching term.
        beta: Weight of the label term (DER++; 0 gives DER).
        memory: As :class:`Replay` (the paper uses the reservoir).
        update: As :class:`Replay`; with ``"experience"`` the stored logits are the
            end-of-experience model's.

    References:
        Buzzega, Boschini, Porrello, Abati & Calderara, "Dark Experience for General
        Continual Learning: a Strong, Simple Baseline", NeurIPS 2020.
    """

    store_logits = True

    def __init__(
        self,
        model: nn.Module,
        stream: Stream,
        optimizer: OptimizerSpec,
        *,
        memory_size: int = 500,
        replay_batch_size: int = 64,
        alpha: float = 0.1,
        beta: float = 0.5,
        memory: MemoryPolicy = "reservoir",
        update: MemoryUpdate = "batch",
    ) -> None:
        if alpha < 0 or beta < 0:
            raise ConfigError(f"alpha = {alpha} and beta = {beta} must be >= 0")
        super().__init__(
            model,
            stream,
            optimizer,
            memory_size=memory_size,
            replay_batch_size=replay_batch_size,
            memory=memory,
            update=update,
        )
        self.alpha = alpha
        self.beta = beta
        # the three passes of a step can share one forward unless a layer's output
        # depends on the other samples of its batch (batch normalisation in training)
        self.fused = not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
        )

    def observe(self, x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        first = second = None
        if len(self.memory):
            if self.alpha > 0:
                first = self.memory.sample(self.replay_batch_size)
            if self.beta > 0:
                second = self.memory.sample(self.replay_batch_size)
        inputs = [(x, task)] + [(b.x, b.task) for b in (first, second) if b is not None]
        if len(inputs) > 1 and self.fused:
            # NOTE: one forward pass over the batch and both memory batches; each
            # sample's outputs are those of its own pass, since no layer mixes samples
            raws = raw_outputs(
                self,
                torch.cat([i[0] for i in inputs]),
                torch.cat([i[1] for i in inputs]),
            ).split([len(i[0]) for i in inputs])
        else:
            raws = [raw_outputs(self, xi, ti) for xi, ti in inputs]
        raw = raws[0]
        loss = self.criterion(apply_mask(self, raw, task), y)
        if first is not None:
            loss = loss + self.alpha * F.mse_loss(raws[1], first.logits)
        if second is not None:
            out = apply_mask(self, raws[-1], second.task)
            loss = loss + self.beta * self.criterion(out, second.y)
        loss.backward()
        self.optimizer.step()
        if self.update == "batch":
            self.memory.add(x, y, task, logits=raw.detach())
        return loss.detach()
