"""The in-memory dataset every loader returns, and the dataset registry.

Once loaded, a dataset is four tensors. Streams are cut from it by indexing; nothing
reads files or builds a DataLoader during training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from metacl.errors import DataError
from metacl.registry import Registry

__all__ = [
    "Dataset",
    "DATASETS",
    "load_dataset",
    "check_normalize",
    "normalize_inputs",
]

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

    Every dataset also takes ``normalize`` (see :func:`normalize_inputs`).

    Example:
        >>> ds = load_dataset("digits")
        >>> ds.n_classes, ds.input_shape
        (10, (1, 8, 8))
    """
    # NOTE: importing the loader modules registers their datasets.
    import metacl.data.embedded  # noqa: F401
    import metacl.data.vision  # noqa: F401

    normalize = check_normalize(settings.pop("normalize", None))
    dataset = DATASETS.build(name, **settings)
    if normalize is None:
        return dataset
    # the loader's tensors are this call's own: normalising them in place keeps the
    # peak memory at one copy of the inputs
    return normalize_inputs(dataset, normalize, in_place=True)


def check_normalize(spec: Any) -> str | dict[str, list[float]] | None:
    """Validate a ``normalize`` setting; return it with scalars made lists.

    Raises:
        DataError: Anything but None, ``"train"`` or ``{mean: ..., std: ...}`` with
            positive standard deviations of matching length.
    """
    if spec is None or spec == "train":
        return spec
    usage = (
        'give "train" (the training inputs\' statistics) or {mean: [...], std: [...]} '
        "with one value per channel, or one for all"
    )
    if not isinstance(spec, dict) or set(spec) != {"mean", "std"}:
        raise DataError(f"dataset.normalize = {spec!r} is not understood; {usage}")
    out = {}
    for key in ("mean", "std"):
        values = spec[key]
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise DataError(f"dataset.normalize.{key} = {spec[key]!r}; {usage}")
        out[key] = [float(v) for v in values]
    if len(out["mean"]) != len(out["std"]):
        raise DataError(
            f"dataset.normalize: mean {out['mean']} and std {out['std']} differ in "
            "length; give one value per channel for both"
        )
    if not all(v > 0 for v in out["std"]):
        raise DataError(
            f"dataset.normalize.std = {out['std']} must be positive (a zero "
            "standard deviation would divide by zero)"
        )
    return out


def normalize_inputs(
    dataset: Dataset, spec: str | dict[str, Any], *, in_place: bool = False
) -> Dataset:
    """The dataset with its inputs standardised per channel, ``(x - mean) / std``.

    The channel is the first input dimension (``C`` of ``(C, H, W)``, or each of the
    features of a flat input). ``spec`` is ``"train"``, which takes each channel's
    mean and standard deviation over the training inputs (so the test inputs use
    the training statistics), or ``{"mean": [...], "std": [...]}`` with one value
    per channel or one for all: the constants vision pipelines publish, for
    example ``{mean: [0.2860], std: [0.3530]}`` for Fashion-MNIST, which is what
    Avalanche's ``SplitFMNIST`` applies by default.

    Args:
        dataset: The dataset.
        spec: As above.
        in_place: Overwrite ``dataset``'s input tensors instead of making new ones
            (for a dataset nothing else holds).

    Raises:
        DataError: A bad ``spec``, a channel count that does not match the inputs, or
            a channel that is constant in the training inputs (``"train"``).
    """
    spec = check_normalize(spec)
    channels = dataset.input_shape[0] if dataset.input_shape else 1
    view = (1, channels) + (1,) * (len(dataset.input_shape) - 1)
    if spec == "train":
        per_channel = dataset.train_x.transpose(0, 1).reshape(channels, -1)
        mean = per_channel.mean(dim=1)
        std = per_channel.std(dim=1)
        if not bool((std > 0).all()):
            constant = int((std == 0).nonzero()[0])
            raise DataError(
                f"dataset {dataset.name!r}: channel {constant} of the training inputs "
                "is constant, so normalize = 'train' would divide by zero; give "
                "{mean: [...], std: [...]} instead"
            )
    else:
        mean = torch.tensor(spec["mean"], dtype=dataset.train_x.dtype)
        std = torch.tensor(spec["std"], dtype=dataset.train_x.dtype)
        if len(mean) not in (1, channels):
            raise DataError(
                f"dataset {dataset.name!r} has {channels} input channels but "
                f"normalize gives {len(mean)} means and standard deviations; give "
                f"1 or {channels}"
            )
        mean, std = mean.expand(channels), std.expand(channels)
    mean, std = mean.reshape(view), std.reshape(view)
    if in_place:
        dataset.train_x.sub_(mean).div_(std)
        dataset.test_x.sub_(mean).div_(std)
        return dataset
    return dataclasses.replace(
        dataset,
        train_x=(dataset.train_x - mean) / std,
        test_x=(dataset.test_x - mean) / std,
    )
