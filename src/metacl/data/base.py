"""The in-memory dataset every loader returns, and the dataset registry.

Once loaded, a dataset is four tensors. Streams are cut from it by indexing; nothing
reads files or builds a DataLoader during training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from metacl.errors import DataError
from metacl.registry import Registry

__all__ = ["Dataset", "DATASETS", "load_dataset"]

DATASETS = Registry("dataset")


@dataclass
class Dataset:
    """A labelled dataset held as tensors.

    Attributes:
        name: Registered name ("fashion_mnist").
        train_x: Inputs, float32, ``(N, *input_shape)``; images scaled to [0, 1].
        train_y: Targets: int64 class labels in ``[0, n_classes)`` for classification,
            float32 ``(N, *target_shape)`` for regression.
        test_x: Test inputs, as ``train_x``.
        test_y: Test targets, as ``train_y``.
        n_classes: Number of classes (0 for regression).
        kind: "classification" or "regression".
        train_groups: Optional int64 ``(N,)``: which group (a task, a domain, a
            function) each training sample belongs to, numbered from 0. The
            ``grouped`` scenario makes one experience of each group.
        test_groups: The same for the test samples.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    n_classes: int
    kind: Literal["classification", "regression"] = "classification"
    train_groups: Tensor | None = None
    test_groups: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.train_groups is None) != (self.test_groups is None):
            raise DataError(
                f"dataset {self.name!r}: give groups for both splits or for neither"
            )
        if self.train_groups is not None:
            for split, x, groups in (
                ("train", self.train_x, self.train_groups),
                ("test", self.test_x, self.test_groups),
            ):
                if len(groups) != len(x):
                    raise DataError(
                        f"dataset {self.name!r}: {split} split has {len(x)} inputs "
                        f"but {len(groups)} group labels"
                    )
        for split, x, y in (
            ("train", self.train_x, self.train_y),
            ("test", self.test_x, self.test_y),
        ):
            if len(x) != len(y):
                raise DataError(
                    f"dataset {self.name!r}: {split} split has {len(x)} inputs but "
                    f"{len(y)} targets; the files do not belong together"
                )
            if self.kind == "classification" and len(y):
                low, high = int(y.min()), int(y.max())
                if low < 0 or high >= self.n_classes:
                    raise DataError(
                        f"dataset {self.name!r}: {split} label {low if low < 0 else high}"
                        f" is outside [0, {self.n_classes}); the label file is corrupt "
                        "or belongs to another dataset"
                    )

    @property
    def n_groups(self) -> int:
        """Number of groups (0 when the dataset has none)."""
        if self.train_groups is None or not len(self.train_groups):
            return 0
        return int(self.train_groups.max()) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.train_x)} train / {len(self.test_x)} test, "
            f"input {tuple(self.input_shape)}, {self.n_classes} classes"
        )


def load_dataset(name: str, **settings) -> Dataset:
    """Load the registered dataset ``name`` with the given keyword settings.

    Example:
        >>> ds = load_dataset("digits")
        >>> ds.n_classes, ds.input_shape
        (10, (1, 8, 8))
    """
    # NOTE: importing the loader modules registers their datasets.
    import metacl.data.embedded  # noqa: F401
    import metacl.data.vision  # noqa: F401

    return DATASETS.build(name, **settings)
