"""Scenarios: how a stream of experiences is cut from a dataset.

- *class-incremental*: new classes arrive, one head, no task id at test time.
- *task-incremental*: the same split, but the task id is given at test time; a
  learner may use one head per task, and outputs of other tasks' classes are masked.
- *domain-incremental*: the same classes each time under a new input distribution,
  a fixed pixel permutation (``permuted``) or a rotation (``rotated``).

Every scenario takes the run's seed, which fixes the class order (when shuffled), the
permutations or angles, the subsampling and the validation split. Streams are built
once, as tensors: an experience's data is indexed, never reloaded.

Example:
    >>> from metacl.data import load_dataset
    >>> stream = build_stream("class_incremental", load_dataset("digits"), seed=0)
    >>> stream.describe()  # doctest: +ELLIPSIS
    'class_incremental(digits): 5 experiences, classes [[0, 1], [2, 3], ...'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from metacl.data.base import Dataset
from metacl.errors import ScenarioError
from metacl.registry import Registry

__all__ = ["Experience", "Stream", "SCENARIOS", "build_stream"]

SCENARIOS = Registry("scenario")


@dataclass
class Experience:
    """One task's data.

    Attributes:
        index: Position in the stream, from 0.
        task_id: The task label (equal to ``index`` in the scenarios here).
        classes: The classes whose samples it holds.
        train_x, train_y: Training data.
        test_x, test_y: Test data.
        valid_x, valid_y: Validation data held out of the training data (may be empty).
    """

    index: int
    task_id: int
    classes: tuple[int, ...]
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    valid_x: Tensor
    valid_y: Tensor

    def task_ids(self, n: int) -> Tensor:
        """A ``(n,)`` int64 tensor filled with this experience's task id."""
        return torch.full((n,), self.task_id, dtype=torch.int64)


@dataclass
class Stream:
    """An ordered list of experiences and what a strategy needs to know about it.

    Attributes:
        name: Scenario name.
        dataset: Name of the dataset it was cut from.
        scenario: "class_incremental", "task_incremental" or "domain_incremental".
        experiences: The experiences, in order.
        n_classes: Number of outputs the model needs.
        input_shape: Shape of one input.
        task_ids_at_test: Whether the task id is given at test time.
        online: Whether each experience is seen once, in small batches.
        kind: "classification" or "regression".
    """

    name: str
    dataset: str
    scenario: str
    experiences: list[Experience]
    n_classes: int
    input_shape: tuple[int, ...]
    task_ids_at_test: bool
    online: bool = False
    kind: str = "classification"
    _class_mask: Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.experiences)

    @property
    def n_tasks(self) -> int:
        return len(self.experiences)

    def class_mask(self) -> Tensor:
        """``(tasks, n_classes)`` bool: which outputs belong to each task."""
        if self._class_mask is None:
            mask = torch.zeros(self.n_tasks, self.n_classes, dtype=torch.bool)
            for e in self.experiences:
                mask[e.task_id, list(e.classes)] = True
            self._class_mask = mask
        return self._class_mask

    def describe(self) -> str:
        """One line: scenario, dataset, sizes and classes of each experience."""
        classes = [list(e.classes) for e in self.experiences]
        if self.kind == "regression":
            classes_text = "regression"
        elif self.scenario == "domain_incremental":
            classes_text = f"{self.n_classes} classes each"
        else:
            classes_text = f"classes {classes}"
        sizes = {len(e.train_x) for e in self.experiences}
        train = (
            sizes.pop()
            if len(sizes) == 1
            else "~"
            + str(round(sum(len(e.train_x) for e in self.experiences) / len(self)))
        )
        test = sum(len(e.test_x) for e in self.experiences)
        valid = sum(len(e.valid_x) for e in self.experiences)
        text = (
            f"{self.name}({self.dataset}): {len(self)} experiences, {classes_text}, "
            f"{train} train samples each, {test} test in all"
        )
        if valid:
            text += f", {valid} validation"
        if self.online:
            text += ", online"
        return text


def build_stream(name: str, dataset: Dataset, *, seed: int, **settings) -> Stream:
    """Cut the stream ``name`` from ``dataset`` with the given settings and seed."""
    return SCENARIOS.build(name, dataset, seed, **settings)


# ---------------------------------------------------------------------------
# helpers shared by the scenarios


def _generator(seed: int, salt: int) -> torch.Generator:
    # NOTE: each random choice of a stream draws from its own generator so that
    # changing one setting (say the validation fraction) leaves the others unchanged.
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + salt)
    return g


def _split_train(
    x: Tensor,
    y: Tensor,
    *,
    samples: int | None,
    validation_fraction: float,
    generator: torch.Generator,
    where: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shuffle, hold out a validation part, and keep at most ``samples`` for training."""
    order = torch.randperm(len(x), generator=generator)
    n_valid = int(round(validation_fraction * len(x)))
    valid_idx, train_idx = order[:n_valid], order[n_valid:]
    if samples is not None:
        if samples > len(train_idx):
            raise ScenarioError(
                f"{where}: samples_per_experience = {samples} but only "
                f"{len(train_idx)} training samples are available; lower it"
            )
        train_idx = train_idx[:samples]
    # keep the original order of the dataset within the kept subset
    train_idx, _ = train_idx.sort()
    valid_idx, _ = valid_idx.sort()
    return x[train_idx], y[train_idx], x[valid_idx], y[valid_idx]


def _check_common(
    dataset: Dataset, samples: int | None, validation_fraction: float, where: str
) -> None:
    if dataset.kind != "classification":
        raise ScenarioError(
            f"{where} needs a classification dataset; {dataset.name!r} is "
            f"{dataset.kind}"
        )
    if samples is not None and samples < 1:
        raise ScenarioError(f"{where}: samples_per_experience = {samples} must be >= 1")
    if not 0.0 <= validation_fraction < 1.0:
        raise ScenarioError(
            f"{where}: validation_fraction = {validation_fraction} must be in [0, 1)"
        )


def _class_groups(
    n_classes: int,
    n_experiences: int,
    classes_per_experience: list[int] | None,
    class_order: list[int] | None,
    shuffle_classes: bool,
    seed: int,
    where: str,
) -> list[list[int]]:
    if class_order is not None:
        if sorted(class_order) != sorted(set(class_order)) or not all(
            0 <= c < n_classes for c in class_order
        ):
            raise ScenarioError(
                f"{where}: class_order {class_order} must list distinct classes in "
                f"[0, {n_classes})"
            )
        order = list(class_order)
    elif shuffle_classes:
        order = torch.randperm(n_classes, generator=_generator(seed, 1)).tolist()
    else:
        order = list(range(n_classes))
    if classes_per_experience is None:
        if n_experiences < 1 or len(order) % n_experiences:
            raise ScenarioError(
                f"{where}: {len(order)} classes cannot be split evenly into "
                f"n_experiences = {n_experiences}; choose a divisor of {len(order)} or "
                "give classes_per_experience explicitly"
            )
        classes_per_experience = [len(order) // n_experiences] * n_experiences
    if any(c < 1 for c in classes_per_experience) or sum(classes_per_experience) > len(
        order
    ):
        raise ScenarioError(
            f"{where}: classes_per_experience {classes_per_experience} needs "
            f"{sum(classes_per_experience)} classes, positive counts, and the order "
            f"holds {len(order)}"
        )
    groups, start = [], 0
    for count in classes_per_experience:
        groups.append(order[start : start + count])
        start += count
    return groups


def _split_by_class(
    dataset: Dataset,
    seed: int,
    *,
    scenario: str,
    name: str,
    n_experiences: int,
    classes_per_experience: list[int] | None,
    class_order: list[int] | None,
    shuffle_classes: bool,
    samples_per_experience: int | None,
    validation_fraction: float,
    online: bool,
) -> Stream:
    where = f"scenario {name!r}"
    _check_common(dataset, samples_per_experience, validation_fraction, where)
    groups = _class_groups(
        dataset.n_classes,
        n_experiences,
        classes_per_experience,
        class_order,
        shuffle_classes,
        seed,
        where,
    )
    experiences = []
    for i, group in enumerate(groups):
        classes = torch.tensor(group)
        in_train = torch.isin(dataset.train_y, classes)
        in_test = torch.isin(dataset.test_y, classes)
        train_x, train_y, valid_x, valid_y = _split_train(
            dataset.train_x[in_train],
            dataset.train_y[in_train],
            samples=samples_per_experience,
            validation_fraction=validation_fraction,
            generator=_generator(seed, 100 + i),
            where=f"{where}, experience {i}",
        )
        if len(train_x) == 0:
            raise ScenarioError(f"{where}: experience {i} (classes {group}) is empty")
        experiences.append(
            Experience(
                i,
                i,
                tuple(group),
                train_x,
                train_y,
                dataset.test_x[in_test],
                dataset.test_y[in_test],
                valid_x,
                valid_y,
            )
        )
    return Stream(
        name,
        dataset.name,
        scenario,
        experiences,
        dataset.n_classes,
        dataset.input_shape,
        task_ids_at_test=scenario == "task_incremental",
        online=online,
    )


@SCENARIOS.register(
    "class_incremental", summary="new classes each experience; no task id at test"
)
def class_incremental(
    dataset: Dataset,
    seed: int,
    *,
    n_experiences: int = 5,
    classes_per_experience: list[int] | None = None,
    class_order: list[int] | None = None,
    shuffle_classes: bool = False,
    samples_per_experience: int | None = None,
    validation_fraction: float = 0.0,
    online: bool = False,
) -> Stream:
    """Split the classes into groups, one group per experience.

    Args:
        dataset: A classification dataset.
        seed: Fixes the class order (if shuffled), subsampling and validation split.
        n_experiences: Number of experiences, when the classes split evenly.
        classes_per_experience: Number of classes of each experience (overrides
            ``n_experiences``), e.g. ``[5, 1, 1, 1, 1, 1]``.
        class_order: An explicit class order; default 0..C-1 (or shuffled).
        shuffle_classes: Shuffle the class order with the seed.
        samples_per_experience: Keep at most this many training samples of each
            experience (the online protocols of MER and La-MAML use 1,000).
        validation_fraction: Fraction of each experience's training data held out
            for validation (model selection never looks at the test data).
        online: A single pass over each experience; the runner ignores ``epochs``.
    """
    return _split_by_class(
        dataset,
        seed,
        scenario="class_incremental",
        name="class_incremental",
        n_experiences=n_experiences,
        classes_per_experience=classes_per_experience,
        class_order=class_order,
        shuffle_classes=shuffle_classes,
        samples_per_experience=samples_per_experience,
        validation_fraction=validation_fraction,
        online=online,
    )


@SCENARIOS.register(
    "task_incremental", summary="new classes each experience; task id given at test"
)
def task_incremental(
    dataset: Dataset,
    seed: int,
    *,
    n_experiences: int = 5,
    classes_per_experience: list[int] | None = None,
    class_order: list[int] | None = None,
    shuffle_classes: bool = False,
    samples_per_experience: int | None = None,
    validation_fraction: float = 0.0,
    online: bool = False,
) -> Stream:
    """The class split of :func:`class_incremental`, with task ids at test time.

    Outputs of classes outside an experience's task are masked in training and
    evaluation; with ``model.multi_head`` each task also gets its own output layer.
    Settings as :func:`class_incremental`.
    """
    return _split_by_class(
        dataset,
        seed,
        scenario="task_incremental",
        name="task_incremental",
        n_experiences=n_experiences,
        classes_per_experience=classes_per_experience,
        class_order=class_order,
        shuffle_classes=shuffle_classes,
        samples_per_experience=samples_per_experience,
        validation_fraction=validation_fraction,
        online=online,
    )


def _domain_stream(
    dataset: Dataset,
    seed: int,
    *,
    name: str,
    n_experiences: int,
    samples_per_experience: int | None,
    validation_fraction: float,
    online: bool,
    transform,
) -> Stream:
    where = f"scenario {name!r}"
    _check_common(dataset, samples_per_experience, validation_fraction, where)
    if n_experiences < 1:
        raise ScenarioError(f"{where}: n_experiences = {n_experiences} must be >= 1")
    experiences = []
    classes = tuple(range(dataset.n_classes))
    for i in range(n_experiences):
        train_x, train_y, valid_x, valid_y = _split_train(
            dataset.train_x,
            dataset.train_y,
            samples=samples_per_experience,
            validation_fraction=validation_fraction,
            generator=_generator(seed, 100 + i),
            where=f"{where}, experience {i}",
        )
        experiences.append(
            Experience(
                i,
                i,
                classes,
                transform(i, train_x),
                train_y,
                transform(i, dataset.test_x),
                dataset.test_y,
                transform(i, valid_x),
                valid_y,
            )
        )
    return Stream(
        name,
        dataset.name,
        "domain_incremental",
        experiences,
        dataset.n_classes,
        dataset.input_shape,
        task_ids_at_test=False,
        online=online,
    )


@SCENARIOS.register(
    "permuted", summary="domain-incremental: a fixed pixel permutation per experience"
)
def permuted(
    dataset: Dataset,
    seed: int,
    *,
    n_experiences: int = 10,
    first_unpermuted: bool = False,
    samples_per_experience: int | None = None,
    validation_fraction: float = 0.0,
    online: bool = False,
) -> Stream:
    """Permuted inputs: each experience applies its own fixed permutation of the
    input features to every sample (Goodfellow et al. 2013; Kirkpatrick et al. 2017).

    Args:
        n_experiences: Number of permutations (any number).
        first_unpermuted: Leave the first experience's inputs as they are.
        samples_per_experience, validation_fraction, online: As in
            :func:`class_incremental`.
    """
    n_features = math.prod(dataset.input_shape)
    perms = []
    for i in range(n_experiences):
        if i == 0 and first_unpermuted:
            perms.append(None)
        else:
            perms.append(
                torch.randperm(n_features, generator=_generator(seed, 200 + i))
            )

    def transform(i: int, x: Tensor) -> Tensor:
        if perms[i] is None:
            return x.clone()
        return x.flatten(1)[:, perms[i]].reshape(x.shape)

    return _domain_stream(
        dataset,
        seed,
        name="permuted",
        n_experiences=n_experiences,
        samples_per_experience=samples_per_experience,
        validation_fraction=validation_fraction,
        online=online,
        transform=transform,
    )


def rotate_images(x: Tensor, degrees: float) -> Tensor:
    """Rotate a batch of images ``(N, C, H, W)`` counter-clockwise about the centre,
    bilinear interpolation, zeros outside."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype)
    grid = torch.nn.functional.affine_grid(
        matrix.expand(len(x), 2, 3), list(x.shape), align_corners=False
    )
    out = []
    for start in range(0, len(x), 8192):  # chunks bound the grid's memory
        out.append(
            torch.nn.functional.grid_sample(
                x[start : start + 8192],
                grid[start : start + 8192],
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
        )
    return torch.cat(out) if out else x.clone()


@SCENARIOS.register(
    "rotated",
    summary="domain-incremental: images rotated by a fixed angle per experience",
)
def rotated(
    dataset: Dataset,
    seed: int,
    *,
    n_experiences: int = 10,
    angles: list[float] | None = None,
    max_angle: float = 180.0,
    samples_per_experience: int | None = None,
    validation_fraction: float = 0.0,
    online: bool = False,
) -> Stream:
    """Rotated images: each experience rotates every image by its own angle
    (Lopez-Paz & Ranzato 2017, Rotated MNIST).

    Args:
        n_experiences: Number of angles.
        angles: Explicit angles in degrees, one per experience; default evenly spaced
            in ``[0, max_angle)``.
        max_angle: Upper end of the default angles.
        samples_per_experience, validation_fraction, online: As in
            :func:`class_incremental`.
    """
    if len(dataset.input_shape) != 3:
        raise ScenarioError(
            f"scenario 'rotated' needs image inputs (channels, height, width); "
            f"{dataset.name!r} has shape {dataset.input_shape}. Use 'permuted' instead"
        )
    if angles is None:
        angles = [max_angle * i / n_experiences for i in range(n_experiences)]
    elif len(angles) != n_experiences:
        raise ScenarioError(
            f"scenario 'rotated': {len(angles)} angles given for n_experiences = "
            f"{n_experiences}; give one angle per experience"
        )

    def transform(i: int, x: Tensor) -> Tensor:
        return rotate_images(x, angles[i]) if len(x) else x.clone()

    return _domain_stream(
        dataset,
        seed,
        name="rotated",
        n_experiences=n_experiences,
        samples_per_experience=samples_per_experience,
        validation_fraction=validation_fraction,
        online=online,
        transform=transform,
    )


@SCENARIOS.register(
    "grouped",
    summary="one experience per group of a grouped dataset (e.g. sine functions)",
)
def grouped(
    dataset: Dataset,
    seed: int,
    *,
    n_experiences: int | None = None,
    task_ids_at_test: bool = False,
    samples_per_experience: int | None = None,
    validation_fraction: float = 0.0,
    online: bool = False,
) -> Stream:
    """One experience per group of a dataset that labels its samples with groups
    (``Dataset.train_groups``: the functions of ``sine``, say), in group order.

    Without task ids it is a domain-incremental stream (one model output, the mapping
    changes from experience to experience); with ``task_ids_at_test`` it is
    task-incremental, and ``model.multi_head`` gives each group its own head.
    Regression datasets are allowed here.

    Args:
        n_experiences: Use only the first this many groups; default all of them.
        task_ids_at_test: Give the group as the task id at test time.
        samples_per_experience, validation_fraction, online: As in
            :func:`class_incremental`.
    """
    where = "scenario 'grouped'"
    if dataset.train_groups is None or dataset.test_groups is None:
        raise ScenarioError(
            f"{where} needs a dataset with groups, and {dataset.name!r} has none; use a "
            "grouped dataset (sine) or another scenario (class_incremental, permuted, "
            "...)"
        )
    if samples_per_experience is not None and samples_per_experience < 1:
        raise ScenarioError(
            f"{where}: samples_per_experience = {samples_per_experience} must be >= 1"
        )
    if not 0.0 <= validation_fraction < 1.0:
        raise ScenarioError(
            f"{where}: validation_fraction = {validation_fraction} must be in [0, 1)"
        )
    n_groups = dataset.n_groups
    if n_experiences is None:
        n_experiences = n_groups
    if not 1 <= n_experiences <= n_groups:
        raise ScenarioError(
            f"{where}: n_experiences = {n_experiences}, but {dataset.name!r} has "
            f"{n_groups} groups; choose 1..{n_groups}"
        )
    classes = tuple(range(dataset.n_classes))
    experiences = []
    for i in range(n_experiences):
        in_train = dataset.train_groups == i
        in_test = dataset.test_groups == i
        train_x, train_y, valid_x, valid_y = _split_train(
            dataset.train_x[in_train],
            dataset.train_y[in_train],
            samples=samples_per_experience,
            validation_fraction=validation_fraction,
            generator=_generator(seed, 100 + i),
            where=f"{where}, experience {i}",
        )
        if len(train_x) == 0 or not bool(in_test.any()):
            raise ScenarioError(
                f"{where}: group {i} of {dataset.name!r} has no training or no test "
                "samples"
            )
        experiences.append(
            Experience(
                i,
                i,
                classes,
                train_x,
                train_y,
                dataset.test_x[in_test],
                dataset.test_y[in_test],
                valid_x,
                valid_y,
            )
        )
    return Stream(
        "grouped",
        dataset.name,
        "task_incremental" if task_ids_at_test else "domain_incremental",
        experiences,
        dataset.n_classes,
        dataset.input_shape,
        task_ids_at_test=task_ids_at_test,
        online=online,
        kind=dataset.kind,
    )
