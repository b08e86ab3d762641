"""Hyperparameter search over a sweep's axes, decided on validation data only.

For each grid point and each strategy, every combination of the search axes (a
candidate) runs on the search seeds. A candidate's score is the mean over those seeds
of a number computed on the **validation** split the scenario holds out of each
experience's training data (``scenario.validation_fraction``): ``acc``, the final
average validation accuracy (mean of the last row of the validation matrix), or ``la``,
the validation learning accuracy (mean of its diagonal). The test split is never read
to choose. The best candidate (the first one on ties, in grid order) is then run on
every seed of the configuration, and those runs make the final table.

Choosing per strategy is what a fair comparison needs: each strategy gets the
hyperparameters that suit it, chosen the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from metacl.config import config_hash
from metacl.sweep.spec import SweepSpec, point_key
from metacl.sweep.store import RunRecord

__all__ = ["SearchChoice", "validation_score", "choose_configurations"]


@dataclass
class SearchChoice:
    """The outcome of the search for one strategy at one grid point.

    Attributes:
        label: The strategy's label.
        grid_point: The grid axes' values (empty without grid axes).
        chosen: The winning values of the search axes; None when no candidate
            finished (every candidate failed).
        score: The winner's validation score.
        candidates: Every candidate with its score and the seeds it was scored on.
    """

    label: str
    grid_point: dict[str, Any]
    chosen: dict[str, Any] | None
    score: float
    candidates: list[dict[str, Any]] = field(default_factory=list)


def validation_score(record: RunRecord, metric: str = "acc") -> float:
    """The validation number the search maximises (NaN without a validation split).

    For a regression stream the matrix holds losses, so the score is the negated
    loss: the search still maximises. Joint training has a single row, whose learning
    accuracy is undefined; there ``"la"`` falls back to the final average.

    Example:
        >>> r = RunRecord(run_id="x", config={}, label="naive", strategy="naive",
        ...     seed=0, stream="s", R=[[0.9, 0.0], [0.1, 0.9]], b=[0.1, 0.1],
        ...     R_valid=[[0.8, 0.0], [0.4, 0.6]])
        >>> validation_score(r, "acc"), validation_score(r, "la")
        (0.5, 0.7)
    """
    if metric not in ("acc", "la"):
        raise ValueError(f"metric = {metric!r} is invalid; choose acc or la")
    joint = bool(record.R_valid) and len(record.R_valid) == 1
    value = record.valid_la if metric == "la" and not joint else record.valid_acc
    return -value if record.kind == "regression" else value


def choose_configurations(
    spec: SweepSpec, records: dict[str, RunRecord]
) -> list[SearchChoice]:
    """Pick, per grid point and strategy, the search candidate with the best mean
    validation score over the search seeds.

    Args:
        spec: A sweep with a search.
        records: Finished runs by run id (the search runs among them are read).

    Returns:
        One :class:`SearchChoice` per (grid point, strategy), in grid order.
    """
    search = spec.search
    if search is None:
        raise ValueError(f"sweep {spec.name!r} has no search section")
    choices = []
    for grid_point in spec.grid():
        scores: dict[str, dict[str, list[float]]] = {}  # label -> candidate -> scores
        points: dict[str, dict[str, Any]] = {}
        for candidate in spec.grid(search.axes):
            if any(candidate[k] != v for k, v in grid_point.items()):
                continue
            chosen = {k: candidate[k] for k in search.axes}
            key = point_key(chosen)
            points[key] = chosen
            config = spec.config_at(candidate, search.seeds)
            for index, strategy in enumerate(config.strategies):
                per_seed = scores.setdefault(strategy["label"], {}).setdefault(key, [])
                for seed in config.seeds:
                    record = records.get(config_hash(config.single_run(index, seed)))
                    per_seed.append(
                        validation_score(record, search.metric) if record else math.nan
                    )
        for label, by_candidate in scores.items():
            candidates = []
            best_key, best = None, -math.inf
            for key, values in by_candidate.items():
                complete = values and not any(math.isnan(v) for v in values)
                score = sum(values) / len(values) if complete else math.nan
                candidates.append(
                    {"point": points[key], "score": score, "seeds": list(search.seeds)}
                )
                if complete and score > best:  # strict: the first wins ties
                    best_key, best = key, score
            choices.append(
                SearchChoice(
                    label=label,
                    grid_point=dict(grid_point),
                    chosen=points[best_key] if best_key is not None else None,
                    score=best if best_key is not None else math.nan,
                    candidates=candidates,
                )
            )
    return choices
