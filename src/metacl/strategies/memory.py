"""Replay memories held in preallocated tensors.

A memory stores up to ``capacity`` examples (inputs, targets, task ids, optionally the
model's outputs at the time they were stored) in tensors allocated once, at full size,
when the memory is built. Adding writes into slots; sampling indexes them. Neither
allocates per example nor concatenates, so the time per replay batch does not grow as
experiences accumulate.

Two policies decide which examples stay:

- :class:`ReservoirMemory`: reservoir sampling (Vitter 1985, algorithm R). After ``n``
  examples have been offered, every one of them is in the memory with probability
  ``capacity / n``: the memory is a uniform sample of the stream so far, online.
- :class:`ClassBalancedMemory`: the same number of slots for every class seen so far;
  within a class, reservoir sampling. A new class takes its share from the others.

Both keep their own random generator, whose state is part of :meth:`state_dict`, so a
checkpointed run resumes bit for bit.

Example:
    >>> import torch
    >>> memory = ReservoirMemory(100, (1, 8, 8), n_outputs=10, seed=0)
    >>> memory.add(torch.randn(30, 1, 8, 8), torch.randint(0, 10, (30,)),
    ...            torch.zeros(30, dtype=torch.long))
    >>> len(memory), memory.sample(16).x.shape
    (30, torch.Size([16, 1, 8, 8]))

References:
    Vitter, "Random Sampling with a Reservoir", ACM TOMS 1985.
    Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metacl.errors import ConfigError

__all__ = [
    "MemoryBatch",
    "Memory",
    "ReservoirMemory",
    "ClassBalancedMemory",
    "build_memory",
]


@dataclass
class MemoryBatch:
    """Examples drawn from a memory; ``logits`` is None unless the memory stores them."""

    x: Tensor
    y: Tensor
    task: Tensor
    logits: Tensor | None = None


class Memory:
    """Preallocated storage shared by the memory policies.

    Args:
        capacity: Number of examples it holds at most.
        input_shape: Shape of one input.
        n_outputs: Width of the stored logits (used when ``store_logits``).
        store_logits: Also keep the model's outputs for each example (DER).
        target_dtype: dtype of the targets (int64 class labels by default).
        device: Where the tensors live.
        seed: Seed of the memory's own random generator; default: drawn from torch's
            global generator, so that a seeded run is reproducible.

    Raises:
        ConfigError: ``capacity`` is not positive.
    """

    def __init__(
        self,
        capacity: int,
        input_shape: tuple[int, ...],
        *,
        n_outputs: int = 0,
        store_logits: bool = False,
        target_dtype: torch.dtype = torch.int64,
        device: str | torch.device = "cpu",
        seed: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"memory_size = {capacity} must be >= 1")
        if store_logits and n_outputs < 1:
            raise ConfigError("a memory that stores logits needs n_outputs >= 1")
        self.capacity = capacity
        self.x = torch.zeros((capacity, *input_shape), device=device)
        self.y = torch.zeros(capacity, dtype=target_dtype, device=device)
        self.task = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.logits = (
            torch.zeros(capacity, n_outputs, device=device) if store_logits else None
        )
        self.size = 0  # slots in use: always the first `size` slots
        self.seen = 0  # examples offered so far
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def _write(self, slots: Tensor, x: Tensor, y: Tensor, task: Tensor, logits) -> None:
        self.x[slots] = x
        self.y[slots] = y
        self.task[slots] = task
        if self.logits is not None:
            if logits is None:
                raise ConfigError("this memory stores logits: pass logits= to add()")
            self.logits[slots] = logits

    def add(
        self, x: Tensor, y: Tensor, task: Tensor, logits: Tensor | None = None
    ) -> None:
        """Offer a batch of examples; the policy decides which are kept."""
        raise NotImplementedError

    def sample(self, n: int, *, below_task: int | None = None) -> MemoryBatch:
        """Draw ``n`` stored examples uniformly, with replacement.

        Args:
            n: Number of examples (any number; drawn with replacement, as a replay
                batch needs no more than independence).
            below_task: Only examples whose task id is smaller than this.

        Raises:
            ConfigError: The memory (or its part below ``below_task``) is empty.
        """
        if below_task is None:
            if self.size == 0:
                raise ConfigError("cannot sample from an empty memory; add() first")
            index = torch.randint(0, self.size, (n,), generator=self.generator)
        else:
            candidates = (self.task[: self.size] < below_task).nonzero().squeeze(1)
            if len(candidates) == 0:
                raise ConfigError(
                    f"the memory holds no example of a task below {below_task}"
                )
            pick = torch.randint(0, len(candidates), (n,), generator=self.generator)
            index = candidates[pick.to(candidates.device)]
        index = index.to(self.x.device)
        return MemoryBatch(
            self.x[index],
            self.y[index],
            self.task[index],
            self.logits[index] if self.logits is not None else None,
        )

    def state_dict(self) -> dict[str, Any]:
        """Contents, counters and generator state (tensors and plain values only)."""
        state = {
            "x": self.x,
            "y": self.y,
            "task": self.task,
            "size": self.size,
            "seen": self.seen,
            "generator": self.generator.get_state(),
        }
        if self.logits is not None:
            state["logits"] = self.logits
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["x"].shape) != tuple(self.x.shape):
            raise ConfigError(
                f"memory checkpoint holds shape {tuple(state['x'].shape)}, this memory "
                f"{tuple(self.x.shape)}; memory_size or the inputs changed"
            )
        self.x.copy_(state["x"])
        self.y.copy_(state["y"])
        self.task.copy_(state["task"])
        if self.logits is not None:
            self.logits.copy_(state["logits"])
        self.size = int(state["size"])
        self.seen = int(state["seen"])
        self.generator.set_state(state["generator"])


class ReservoirMemory(Memory):
    """A uniform sample of every example offered so far (reservoir sampling).

    The ``i``-th example offered (from 0) fills a free slot while there is one;
    afterwards it replaces a random slot with probability ``capacity / (i + 1)``. A
    batch is processed as if its examples came one after another. Settings as
    :class:`Memory`.

    References:
        Vitter, "Random Sampling with a Reservoir", ACM TOMS 1985.
    """

    def add(
        self, x: Tensor, y: Tensor, task: Tensor, logits: Tensor | None = None
    ) -> None:
        n = len(x)
        if n == 0:
            return

        # fill free slots first
        free = min(self.capacity - self.size, n)
        if free > 0:
            slots = torch.arange(self.size, self.size + free, device=self.x.device)
            self._write(
                slots,
                x[:free],
                y[:free],
                task[:free],
                None if logits is None else logits[:free],
            )
            self.size += free
        rest = n - free
        if rest > 0:
            # example number i (0-based over the stream) draws j uniform in [0, i]
            # and replaces slot j when j < capacity
            counts = torch.arange(
                self.seen + free + 1, self.seen + n + 1, dtype=torch.float64
            )
            draws = (
                torch.rand(rest, generator=self.generator, dtype=torch.float64) * counts
            ).long()
            keep = (draws < self.capacity).nonzero().squeeze(1)
            if len(keep):
                slots = draws[keep]
                # two kept examples may draw the same slot: the later one wins, as
                # it would one example at a time
                reversed_slots = slots.flip(0)
                unique, first = _first_occurrence(reversed_slots)
                last = keep.flip(0)[first] + free
                self._write(
                    unique.to(self.x.device),
                    x[last],
                    y[last],
                    task[last],
                    None if logits is None else logits[last],
                )
        self.seen += n


def _first_occurrence(values: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct values of a 1-d tensor and the position of each one's first occurrence."""
    unique, inverse = torch.unique(values, return_inverse=True)
    positions = torch.arange(len(values))
    first = torch.full((len(unique),), len(values), dtype=torch.long)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first


class ClassBalancedMemory(Memory):
    """Equal slots for every class seen so far; reservoir sampling within a class.

    With ``k`` classes seen, each class may hold ``capacity // k`` examples (the first
    ``capacity % k`` classes in label order one more). When a new class appears,
    classes above their new share drop random examples to make room. Within its share,
    a class keeps a uniform sample of its own examples. Settings as :class:`Memory`,
    plus:

    Args:
        n_classes: Number of classes the targets range over.

    References:
        Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019.
    """

    def __init__(
        self, capacity: int, input_shape: tuple[int, ...], *, n_classes: int, **kw: Any
    ) -> None:
        super().__init__(capacity, input_shape, **kw)
        if n_classes < 1:
            raise ConfigError(
                f"a class-balanced memory needs n_classes >= 1, got {n_classes}"
            )
        self.n_classes = n_classes
        # owner class of each slot, -1 when free (free slots may sit anywhere)
        self.owner = torch.full((capacity,), -1, dtype=torch.int64)
        # examples of each class offered so far
        self.class_seen = torch.zeros(n_classes, dtype=torch.int64)

    def _quota(self, present: Tensor) -> Tensor:
        classes = present.nonzero().squeeze(1)
        quota = torch.zeros(self.n_classes, dtype=torch.int64)
        if len(classes):
            quota[classes] = self.capacity // len(classes)
            quota[classes[: self.capacity % len(classes)]] += 1
        return quota

    def add(
        self, x: Tensor, y: Tensor, task: Tensor, logits: Tensor | None = None
    ) -> None:
        labels = y.detach().cpu().long()
        if len(labels) == 0:
            return
        if labels.min() < 0 or labels.max() >= self.n_classes:
            raise ConfigError(
                f"class-balanced memory: labels must lie in [0, {self.n_classes}), got "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        classes = labels.unique()
        present = self.class_seen > 0
        quota = self._quota(present)
        if not bool(present[classes].all()):
            # a new class: everyone's share shrinks, and those above it drop examples
            present[classes] = True
            quota = self._quota(present)
            self._shrink_to(quota)

        for c in classes.tolist():
            rows = (labels == c).nonzero().squeeze(1)
            held = (self.owner == c).nonzero().squeeze(1)
            seen = int(self.class_seen[c])

            # fill free slots up to the class's share
            fill = min(int(quota[c]) - len(held), len(rows))
            if fill > 0:
                slots = (self.owner == -1).nonzero().squeeze(1)[:fill]
                self.owner[slots] = c
                self._write_rows(slots, rows[:fill], x, y, task, logits)
                held = torch.cat([held, slots])

            # the rest: reservoir sampling within the class
            rest = rows[max(fill, 0) :]
            if len(rest):
                first = seen + max(fill, 0) + 1
                counts = torch.arange(first, first + len(rest), dtype=torch.float64)
                draws = (
                    torch.rand(len(rest), generator=self.generator, dtype=torch.float64)
                    * counts
                ).long()
                keep = (draws < len(held)).nonzero().squeeze(1)
                if len(keep):
                    unique, position = _first_occurrence(draws[keep].flip(0))
                    self._write_rows(
                        held[unique], rest[keep.flip(0)[position]], x, y, task, logits
                    )
            self.class_seen[c] = seen + len(rows)
        self.seen += len(labels)
        self.size = int((self.owner >= 0).sum())

    def _write_rows(self, slots, rows, x, y, task, logits) -> None:
        rows = rows.to(x.device)
        self._write(
            slots.to(self.x.device),
            x[rows],
            y[rows],
            task[rows],
            None if logits is None else logits[rows],
        )

    def _shrink_to(self, quota: Tensor) -> None:
        for c in range(self.n_classes):
            held = (self.owner == c).nonzero().squeeze(1)
            excess = len(held) - int(quota[c])
            if excess > 0:
                drop = torch.randperm(len(held), generator=self.generator)[:excess]
                self.owner[held[drop]] = -1

    def counts(self) -> Tensor:
        """Examples held per class, ``(n_classes,)``."""
        return torch.bincount(self.owner[self.owner >= 0], minlength=self.n_classes)

    def sample(self, n: int, *, below_task: int | None = None) -> MemoryBatch:
        occupied = self.owner >= 0
        if below_task is not None:
            occupied &= self.task.cpu() < below_task
        candidates = occupied.nonzero().squeeze(1)
        if len(candidates) == 0:
            raise ConfigError("cannot sample from an empty memory; add() first")
        pick = torch.randint(0, len(candidates), (n,), generator=self.generator)
        index = candidates[pick].to(self.x.device)
        return MemoryBatch(
            self.x[index],
            self.y[index],
            self.task[index],
            self.logits[index] if self.logits is not None else None,
        )

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["owner"] = self.owner
        state["class_seen"] = self.class_seen
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.owner.copy_(state["owner"])
        self.class_seen.copy_(state["class_seen"])


def build_memory(
    policy: str,
    capacity: int,
    input_shape: tuple[int, ...],
    *,
    n_classes: int,
    store_logits: bool = False,
    device: str | torch.device = "cpu",
) -> Memory:
    """Build the memory ``policy`` ("reservoir" or "class_balanced")."""
    common = dict(n_outputs=n_classes, store_logits=store_logits, device=device)
    if policy == "reservoir":
        return ReservoirMemory(capacity, input_shape, **common)
    if policy == "class_balanced":
        return ClassBalancedMemory(capacity, input_shape, n_classes=n_classes, **common)
    raise ConfigError(f"memory = {policy!r}; valid choices: reservoir, class_balanced")
