"""Task distributions for meta-learning: sine-wave regression and few-shot episodes.

A task family draws batches of tasks as tensors with a leading task dimension, ready
for ``torch.func.vmap``: ``support_x`` is ``(tasks, support_size, *input_shape)`` and
so on. Every draw takes an explicit ``torch.Generator``; nothing reads the global
random state.

Families are registered in :data:`TASK_FAMILIES`. A factory takes the run's seed as its
one positional argument (it fixes the meta-train / meta-validation / meta-test class
split of an episode family) and its settings as keyword-only arguments.

Example:
    >>> import torch
    >>> family = SineTasks(shots=5)
    >>> batch = family.sample(3, generator=torch.Generator().manual_seed(0))
    >>> tuple(batch.support_x.shape), tuple(batch.query_x.shape)
    ((3, 5, 1), (3, 10, 1))
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from metacl.data.base import Dataset, load_dataset
from metacl.errors import ConfigError, ScenarioError
from metacl.registry import Registry

__all__ = [
    "SPLITS",
    "Split",
    "TaskBatch",
    "TaskFamily",
    "SineTasks",
    "EpisodeTasks",
    "split_classes",
    "TASK_FAMILIES",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")

TASK_FAMILIES = Registry("task family")


@dataclass
class TaskBatch:
    """A batch of tasks, each with a support set and a query set.

    Attributes:
        support_x: ``(tasks, support_size, *input_shape)``.
        support_y: ``(tasks, support_size, *target_shape)``; int64 class labels in
            ``[0, ways)`` for episodes.
        query_x: ``(tasks, query_size, *input_shape)``.
        query_y: ``(tasks, query_size, *target_shape)``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def task(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The four tensors of one task, without the task dimension."""
        return (
            self.support_x[index],
            self.support_y[index],
            self.query_x[index],
            self.query_y[index],
        )

    def slice(self, start: int, stop: int) -> TaskBatch:
        """Tasks ``start`` to ``stop`` (exclusive) as a new batch sharing storage."""
        return TaskBatch(
            self.support_x[start:stop],
            self.support_y[start:stop],
            self.query_x[start:stop],
            self.query_y[start:stop],
        )

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
        )


class TaskFamily(Protocol):
    """What the meta-training loop needs from a task distribution."""

    kind: Literal["classification", "regression"]
    input_shape: tuple[int, ...]
    n_outputs: int

    def sample(
        self, tasks: int, *, generator: torch.Generator, split: Split = "train"
    ) -> TaskBatch: ...


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"{name} = {value!r} is invalid; expected an integer >= 1"
            )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split = {split!r} is invalid; expected one of {SPLITS}")


class SineTasks:
    """Sine-wave regression, the protocol of Finn et al. (2017).

    A task is ``y = amplitude * sin(x - phase)`` with amplitude drawn from
    ``U[0.1, 5]``, phase from ``U[0, pi]`` and inputs from ``U[-5, 5]``. The support
    set holds ``shots`` points (K); the query set ``query_shots`` fresh points of the
    same wave during meta-training, and ``eval_query_shots`` points when a task is
    drawn for validation or testing. The three splits draw from the same
    distribution; held-out tasks differ from training ones by the generator used.

    Args:
        shots: Support points per task (K).
        query_shots: Query points per task during meta-training.
        eval_query_shots: Query points per validation / test task.
        amplitude: ``(low, high)`` of the uniform amplitude.
        phase: ``(low, high)`` of the uniform phase.
        x_range: ``(low, high)`` of the uniform inputs.

    References:
        Chelsea Finn, Pieter Abbeel, Sergey Levine. "Model-Agnostic Meta-Learning for
        Fast Adaptation of Deep Networks", ICML 2017.
    """

    kind: Literal["regression"] = "regression"
    input_shape = (1,)
    n_outputs = 1

    def __init__(
        self,
        *,
        shots: int = 10,
        query_shots: int = 10,
        eval_query_shots: int = 100,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        _check_positive(
            shots=shots, query_shots=query_shots, eval_query_shots=eval_query_shots
        )
        for name, (low, high) in (
            ("amplitude", amplitude),
            ("phase", phase),
            ("x_range", x_range),
        ):
            if not low <= high:
                raise ConfigError(f"{name} = {(low, high)!r}: low must not exceed high")
        self.shots = shots
        self.query_shots = query_shots
        self.eval_query_shots = eval_query_shots
        self.amplitude = tuple(amplitude)
        self.phase = tuple(phase)
        self.x_range = tuple(x_range)

    def sample(
        self, tasks: int, *, generator: torch.Generator, split: Split = "train"
    ) -> TaskBatch:
        """Draw ``tasks`` sine waves and their support and query points."""
        _check_positive(tasks=tasks)
        _check_split(split)
        query = self.query_shots if split == "train" else self.eval_query_shots

        def uniform(shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
            low, high = bounds
            return torch.rand(shape, generator=generator) * (high - low) + low

        amplitude = uniform((tasks, 1, 1), self.amplitude)
        phase = uniform((tasks, 1, 1), self.phase)
        x = uniform((tasks, self.shots + query, 1), self.x_range)  # (tasks, points, 1)
        y = amplitude * torch.sin(x - phase)
        return TaskBatch(
            x[:, : self.shots],
            y[:, : self.shots],
            x[:, self.shots :],
            y[:, self.shots :],
        )


def split_classes(
    classes: Tensor, fractions: tuple[float, float, float] | list[float], seed: int
) -> dict[Split, Tensor]:
    """Cut a set of classes into disjoint meta-train / meta-validation / meta-test sets.

    The classes are shuffled by a generator seeded with ``seed`` alone, so the same seed
    gives the same split whatever else the run does.

    Args:
        classes: 1-D tensor of distinct class labels.
        fractions: Three shares that sum to 1, or three class counts that sum to the
            number of classes.
        seed: Fixes the split.

    Returns:
        A sorted tensor of class labels for each of ``"train"``, ``"val"``, ``"test"``.

    Raises:
        ConfigError: ``fractions`` is not three non-negative numbers summing to 1 or to
            the number of classes.
    """
    n = len(classes)
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise ConfigError(
            f"splits = {list(fractions)!r} is invalid; expected three non-negative "
            "numbers (meta-train, meta-validation, meta-test)"
        )
    total = float(sum(fractions))
    if math.isclose(total, 1.0, abs_tol=1e-6):
        n_train = int(round(fractions[0] * n))
        n_val = min(int(round(fractions[1] * n)), n - n_train)
    elif math.isclose(total, n) and all(float(f).is_integer() for f in fractions):
        n_train, n_val = int(fractions[0]), int(fractions[1])
    else:
        raise ConfigError(
            f"splits = {list(fractions)!r} sum to {total:g}; expected shares summing to "
            f"1 or class counts summing to the {n} classes"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = classes[order]
    parts = (
        shuffled[:n_train],
        shuffled[n_train : n_train + n_val],
        shuffled[n_train + n_val :],
    )
    return {
        split: part.sort().values for split, part in zip(SPLITS, parts, strict=True)
    }


class EpisodeTasks:
    """N-way K-shot classification episodes drawn from a labelled dataset.

    The dataset's train and test examples are pooled, and its classes are cut into
    meta-train, meta-validation and meta-test classes by :func:`split_classes` with
    ``seed``: the three sets never share a class, and the same seed gives the same
    sets. An episode picks ``ways`` classes of one split and, for each, ``shots``
    support and ``query_shots`` query examples, all distinct. Labels are renumbered
    ``0..ways-1`` in the order the classes were drawn; the support and query sets are
    ordered class by class.

    Args:
        dataset: A classification :class:`~metacl.data.base.Dataset`.
        seed: Fixes the class split.
        ways: Classes per episode (N).
        shots: Support examples per class (K).
        query_shots: Query examples per class.
        splits: Shares (or counts) of classes for meta-train, -validation and -test.

    Raises:
        ScenarioError: A regression dataset, a split with fewer than ``ways`` classes,
            or a class with fewer than ``shots + query_shots`` examples.

    References:
        Oriol Vinyals, Charles Blundell, Timothy Lillicrap, Koray Kavukcuoglu, Daan
        Wierstra. "Matching Networks for One Shot Learning", NeurIPS 2016 (the N-way
        K-shot episode protocol).
    """

    kind: Literal["classification"] = "classification"

    def __init__(
        self,
        dataset: Dataset,
        *,
        seed: int = 0,
        ways: int = 5,
        shots: int = 1,
        query_shots: int = 15,
        splits: tuple[float, float, float] | list[float] = (0.6, 0.2, 0.2),
    ) -> None:
        _check_positive(ways=ways, shots=shots, query_shots=query_shots)
        if dataset.kind != "classification":
            raise ScenarioError(
                f"dataset {dataset.name!r} is a {dataset.kind} dataset; few-shot "
                "episodes need class labels (use the sine family for regression)"
            )
        self.dataset_name = dataset.name
        self.ways, self.shots, self.query_shots = ways, shots, query_shots
        self.input_shape = tuple(dataset.input_shape)
        self.n_outputs = ways

        # pool every example, then index them class by class
        self.x = torch.cat([dataset.train_x, dataset.test_x])
        labels = torch.cat([dataset.train_y, dataset.test_y])
        classes, counts = torch.unique(labels, return_counts=True)
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts.max())
        offsets = torch.arange(width).expand(len(classes), width)  # (classes, width)
        valid = offsets < counts[:, None]
        positions = (starts[:, None] + offsets).clamp(max=len(labels) - 1)
        # row c of the table holds the indices of class classes[c], padded
        self._table = torch.where(valid, order[positions], -1)
        self._all_classes = classes  # sorted, so a label's row is found by bisection

        # check that each split can form an episode (the validation split may be empty)
        per_episode = shots + query_shots
        self.classes = split_classes(classes, splits, seed)
        for split, members in self.classes.items():
            if len(members) < ways and not (split == "val" and len(members) == 0):
                raise ScenarioError(
                    f"dataset {dataset.name!r} has {len(classes)} classes; the "
                    f"meta-{split} split ({list(splits)}) holds {len(members)}, fewer "
                    f"than ways = {ways}. Lower ways or change splits (the "
                    "meta-validation share may be 0)"
                )
        small = counts < per_episode
        if bool(small.any()):
            worst = int(counts.min())
            raise ScenarioError(
                f"dataset {dataset.name!r}: {int(small.sum())} class(es) have fewer than "
                f"shots + query_shots = {per_episode} examples (the smallest has "
                f"{worst}); lower shots or query_shots"
            )
        logger.info(
            "episodes from %s: %d-way %d-shot, classes %d / %d / %d (train/val/test)",
            dataset.name,
            ways,
            shots,
            *(len(self.classes[s]) for s in SPLITS),
        )

    def sample(
        self, tasks: int, *, generator: torch.Generator, split: Split = "train"
    ) -> TaskBatch:
        """Draw ``tasks`` episodes from the classes of ``split``."""
        _check_positive(tasks=tasks)
        _check_split(split)
        members = self.classes[split]
        per_class = self.shots + self.query_shots
        if len(members) < self.ways:
            raise ScenarioError(
                f"the meta-{split} split of {self.dataset_name!r} holds "
                f"{len(members)} classes, fewer than ways = {self.ways}; give it a "
                "share of the classes (splits) or do not draw from it"
            )

        # pick the classes of each episode, distinct within an episode
        scores = torch.rand(tasks, len(members), generator=generator)
        picked = members[scores.argsort(dim=1)[:, : self.ways]]  # (tasks, ways)
        rows = torch.searchsorted(self._all_classes, picked.flatten())

        # pick distinct examples of each class: the smallest random keys win
        keys = torch.rand(len(rows), self._table.shape[1], generator=generator)
        keys[self._table[rows] < 0] = 2.0  # padding never wins
        chosen = keys.topk(per_class, dim=1, largest=False).indices
        index = self._table[rows].gather(1, chosen)  # (tasks * ways, per_class)
        x = self.x[index].reshape(tasks, self.ways, per_class, *self.input_shape)
        labels = torch.arange(self.ways).view(1, self.ways, 1)
        y = labels.expand(tasks, self.ways, per_class)

        k = self.shots
        return TaskBatch(
            x[:, :, :k].reshape(tasks, self.ways * k, *self.input_shape),
            y[:, :, :k].reshape(tasks, self.ways * k),
            x[:, :, k:].reshape(tasks, -1, *self.input_shape),
            y[:, :, k:].reshape(tasks, -1),
        )


@TASK_FAMILIES.register("sine", summary="sine-wave regression (MAML protocol)")
def sine(
    seed: int,
    *,
    shots: int = 10,
    query_shots: int = 10,
    eval_query_shots: int = 100,
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
) -> SineTasks:
    del seed  # every sine task is drawn with the generator given to sample()
    return SineTasks(
        shots=shots,
        query_shots=query_shots,
        eval_query_shots=eval_query_shots,
        amplitude=amplitude,
        phase=phase,
        x_range=x_range,
    )


@TASK_FAMILIES.register("episodes", summary="N-way K-shot episodes of a dataset")
def episodes(
    seed: int,
    *,
    dataset: str,
    ways: int = 5,
    shots: int = 1,
    query_shots: int = 15,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    dataset_settings: dict | None = None,
) -> EpisodeTasks:
    data = load_dataset(dataset, **(dataset_settings or {}))
    return EpisodeTasks(
        data, seed=seed, ways=ways, shots=shots, query_shots=query_shots, splits=splits
    )
