"""The accuracy matrix and the numbers derived from it.

``R[i, j]`` is the test accuracy (or, for regression, the loss) on experience ``j``
after training on experiences ``0..i``; ``b[j]`` is that of the model before any
training. With ``T`` experiences (zero-based):

- ACC (final average accuracy, La-MAML's RA) = mean over j of R[T-1, j]
- LA (learning accuracy) = mean over j of R[j, j]
- BWT (backward transfer, La-MAML's BTI) = mean over j < T-1 of R[T-1, j] - R[j, j]
- FWT (forward transfer) = mean over j > 0 of R[j-1, j] - b[j]
- forgetting = mean over j < T-1 of (max over l < T-1 of R[l, j]) - R[T-1, j]

For regression ``R`` holds losses, where lower is better: ACC, LA, BWT and FWT keep the
formulas above (so a positive BWT means the loss grew: forgetting), and forgetting
becomes the rise from the best earlier loss, mean over j < T-1 of
R[T-1, j] - (min over l < T-1 of R[l, j]), so that it is positive when the model forgot
in both cases.

A matrix with a single row (joint training sees all experiences at once) defines ACC
only; the other numbers are NaN. With one experience, BWT, FWT and forgetting are NaN.

References:
    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", 2017.
    Chaudhry et al., "Riemannian Walk for Incremental Learning", 2018.
    Gupta et al., "La-MAML: Look-ahead Meta Learning for Continual Learning", 2020.

Example:
    >>> import torch
    >>> R = torch.tensor([[0.9, 0.1], [0.5, 0.8]])
    >>> m = derived_metrics(R, torch.tensor([0.1, 0.1]))
    >>> round(m["acc"], 2), round(m["bwt"], 2), round(m["forgetting"], 2)
    (0.65, -0.4, 0.4)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "METRIC_NAMES",
    "acc",
    "learning_accuracy",
    "bwt",
    "fwt",
    "forgetting",
    "derived_metrics",
    "mean_ci",
]

METRIC_NAMES = ("acc", "la", "bwt", "fwt", "forgetting")


def _check(R: Tensor) -> Tensor:
    R = torch.as_tensor(R, dtype=torch.float64)
    if R.dim() != 2 or R.shape[0] not in (1, R.shape[1]) or R.shape[1] == 0:
        raise ValueError(
            f"accuracy matrix must be (T, T), or (1, T) for joint training; got "
            f"{tuple(R.shape)}"
        )
    return R


def acc(R: Tensor) -> float:
    """Final average accuracy: mean of the last row."""
    R = _check(R)
    return R[-1].mean().item()


def learning_accuracy(R: Tensor) -> float:
    """Mean of the diagonal: accuracy on each experience just after learning it."""
    R = _check(R)
    if R.shape[0] == 1 and R.shape[1] > 1:
        return math.nan
    return R.diagonal().mean().item()


def bwt(R: Tensor) -> float:
    """Backward transfer: how the final model differs from just-after-learning."""
    R = _check(R)
    T = R.shape[1]
    if R.shape[0] == 1 or T < 2:
        return math.nan
    return (R[T - 1, : T - 1] - R.diagonal()[: T - 1]).mean().item()


def fwt(R: Tensor, b: Tensor) -> float:
    """Forward transfer: accuracy on the next experience before learning it, over b."""
    R = _check(R)
    b = torch.as_tensor(b, dtype=torch.float64)
    T = R.shape[1]
    if R.shape[0] == 1 or T < 2:
        return math.nan
    if b.shape != (T,):
        raise ValueError(f"b must have shape ({T},), got {tuple(b.shape)}")
    previous = R[torch.arange(T - 1), torch.arange(1, T)]  # R[j-1, j] for j > 0
    return (previous - b[1:]).mean().item()


def forgetting(R: Tensor, *, higher_is_better: bool = True) -> float:
    """Mean drop from the best earlier score to the final one (j < T-1).

    Args:
        R: The accuracy (or loss) matrix.
        higher_is_better: False when ``R`` holds losses: the best earlier score is
            then the lowest, and forgetting is the final loss minus it.
    """
    R = _check(R)
    T = R.shape[1]
    if R.shape[0] == 1 or T < 2:
        return math.nan
    earlier, final = R[: T - 1, : T - 1], R[T - 1, : T - 1]
    if higher_is_better:
        return (earlier.max(dim=0).values - final).mean().item()
    return (final - earlier.min(dim=0).values).mean().item()


def derived_metrics(
    R: Tensor, b: Tensor, *, higher_is_better: bool = True
) -> dict[str, float]:
    """ACC, LA, BWT, FWT and forgetting of one accuracy matrix.

    Args:
        R: ``(T, T)``, or ``(1, T)`` for joint training.
        b: ``(T,)`` scores of the untrained model.
        higher_is_better: False for a regression stream, whose ``R`` holds losses.
    """
    return {
        "acc": acc(R),
        "la": learning_accuracy(R),
        "bwt": bwt(R),
        "fwt": fwt(R, b),
        "forgetting": forgetting(R, higher_is_better=higher_is_better),
    }


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided confidence interval (Student's t).

    With a single value the half-width is NaN: one seed says nothing about spread.

    Example:
        >>> mean, half = mean_ci([0.80, 0.82, 0.84])
        >>> round(mean, 3), round(half, 3)
        (0.82, 0.05)
    """
    from scipy import stats

    data = [v for v in values if not math.isnan(v)]
    if not data:
        return math.nan, math.nan
    n = len(data)
    mean = sum(data) / n
    if n == 1:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in data) / (n - 1)
    t = stats.t.ppf(0.5 + confidence / 2, df=n - 1)
    return mean, float(t * math.sqrt(variance / n))
