"""The sweep file: a run configuration plus the axes to vary, expanded to a grid.

A sweep file is a ``metacl run`` configuration (YAML or TOML) with one more section,
``sweep``::

    name: lr-sweep
    seeds: [0, 1, 2]
    dataset: {name: digits}
    scenario: {name: class_incremental, n_experiences: 5, validation_fraction: 0.1}
    strategies: [{name: naive}, {name: joint}]
    train: {epochs: 3}
    sweep:
      axes:                        # every combination; the last axis varies fastest
        scenario.n_experiences: [2, 5]
      search:                      # optional: tuned on validation accuracy
        axes: {optimizer.lr: [0.01, 0.05, 0.2]}
        seeds: [0]                 # seeds searched on (default: the first seed)
        metric: acc                # acc | la, on the validation split
      resources: {cpus: 1, gpus: 0}   # per run: torch threads, Ray resources

An axis key addresses the configuration as ``--set`` does (``optimizer.lr``,
``strategies.1.lambda_``); its values are a list. Every grid point is validated as a
whole configuration before anything runs, so an axis can only name registered
datasets, scenarios, models and strategies, like the configuration itself.

Each (grid point, strategy, seed) is one run. Its id is the hash of the configuration
that determines its result (:func:`metacl.config.config_hash`), so the same run has
the same id in every sweep, on every machine, with every runner; two points that give
the same run (an axis that does not concern a strategy) are one run.

The resources decide ``train.threads`` (= ``resources.cpus`` unless the configuration
sets it), so a run's id and result do not depend on the machine that runs it.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metacl.config import (
    RunConfig,
    apply_overrides,
    config_hash,
    load_config_file,
    resolve_config,
)
from metacl.errors import ConfigError

__all__ = [
    "Resources",
    "SearchSpec",
    "SweepSpec",
    "PlannedRun",
    "load_sweep",
    "sweep_from_dict",
    "expand",
    "point_key",
    "SEARCH_METRICS",
]

SEARCH_METRICS = ("acc", "la")
_SWEEP_KEYS = ("axes", "search", "resources")
_SEARCH_KEYS = ("axes", "seeds", "metric")
_RESOURCE_KEYS = ("cpus", "gpus")
# keys an axis may not vary: they name or place the sweep, or are the seed list
_FIXED = ("name", "output", "store", "seeds", "sweep")


@dataclass(frozen=True)
class Resources:
    """What one run needs: CPU cores (= its torch threads) and GPUs (Ray only)."""

    cpus: int = 1
    gpus: float = 0.0


@dataclass(frozen=True)
class SearchSpec:
    """Axes tuned by validation score, on a few seeds, per strategy and grid point."""

    axes: dict[str, list[Any]]
    seeds: list[int]
    metric: str = "acc"


@dataclass
class SweepSpec:
    """A validated sweep: the base configuration, its axes, search and resources.

    Attributes:
        name: The sweep's name (the configuration's ``name``).
        base: The run configuration as a dictionary, ``sweep`` section removed.
        axes: Grid axes, key -> values, in file order.
        search: The hyperparameter search, or None.
        resources: Per-run resources.
        directory: ``OUTPUT/NAME``: run folders go to ``runs/RUN_ID`` under it.
        store: The results store file.
    """

    name: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    search: SearchSpec | None
    resources: Resources
    directory: Path
    store: Path | None
    seeds: list[int] = field(default_factory=list)

    def grid(
        self, extra_axes: dict[str, list[Any]] | None = None
    ) -> list[dict[str, Any]]:
        """The grid points (axis key -> value) in order; with ``extra_axes`` the
        product of the grid with them (the search candidates of each point)."""
        axes = {**self.axes, **(extra_axes or {})}
        keys = list(axes)
        return [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*(axes[k] for k in keys))
        ]

    def config_at(
        self, point: dict[str, Any], seeds: list[int] | None = None
    ) -> RunConfig:
        """The validated run configuration at ``point`` (optionally other seeds)."""
        data = copy.deepcopy(self.base)
        for key, value in point.items():
            _assign(data, key, copy.deepcopy(value))
        if seeds is not None:
            data["seeds"] = list(seeds)
        where = ", ".join(f"{k}={_show(v)}" for k, v in point.items()) or "the base"
        try:
            return resolve_config(data)
        except ConfigError as error:
            raise ConfigError(f"sweep {self.name!r} at {where}: {error}") from None


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: a configuration, which of its strategies, which seed."""

    run_id: str
    config: RunConfig
    strategy_index: int
    seed: int
    point: dict[str, Any]
    role: str  # "grid", "search" or "final"
    directory: Path

    @property
    def label(self) -> str:
        return self.config.strategies[self.strategy_index]["label"]

    def describe(self) -> str:
        point = ", ".join(f"{k}={_show(v)}" for k, v in self.point.items())
        return f"{self.label} seed {self.seed}" + (f" [{point}]" if point else "")


def point_key(point: dict[str, Any]) -> str:
    """A canonical text of a grid point, to group and store by."""
    return json.dumps(point, sort_keys=True, default=str)


def _show(value: Any) -> str:
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key as ``--set`` addresses it (list items by index)."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            index = _index(node, part, where)
            child = node[index]
        elif isinstance(node, dict):
            index = part
            child = node.get(part)
            if child is None:
                child = node[part] = {}
        else:
            raise ConfigError(f"axis {key!r}: {where!r} is not a section")
        if isinstance(child, str):
            # a part given by name only ("strategy: naive") becomes a mapping
            child = node[index] = {"name": child}
        node = child
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"axis {key!r}: {'.'.join(parts[:-1])!r} is not a section")


def _index(node: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"axis {where!r}: use an index below {len(node)}")
    return int(part)


def _check_axes(axes: Any, where: str) -> dict[str, list[Any]]:
    if axes is None:
        return {}
    if not isinstance(axes, dict):
        raise ConfigError(
            f"{where} must map setting keys to lists of values, e.g. "
            "{optimizer.lr: [0.01, 0.1]}; got " + repr(axes)
        )
    out = {}
    for key, values in axes.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: axis key {key!r} must be a dotted setting key")
        if key.split(".")[0] in _FIXED:
            raise ConfigError(
                f"{where}: {key!r} cannot be an axis; the seeds are the top-level "
                "`seeds` list, and name/output/store place the sweep"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{where}.{key} = {values!r} must be a non-empty list of values "
                f"(e.g. {key}: [{_show(values)}])"
            )
        seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(seen)) != len(seen):
            raise ConfigError(f"{where}.{key} = {values!r} repeats a value")
        out[key] = list(values)
    return out


def _check_mapping(value: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping with keys {', '.join(keys)}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; valid keys: "
            f"{', '.join(keys)}"
        )
    return value


def sweep_from_dict(
    data: dict[str, Any], *, store: str | Path | None = None
) -> SweepSpec:
    """Validate a sweep dictionary (a configuration with a ``sweep`` section).

    Args:
        data: The sweep file's contents, overrides applied.
        store: A store path that replaces the configuration's ``store``.

    Returns:
        The validated :class:`SweepSpec`; every grid point has been validated.

    Raises:
        ConfigError: An unknown key, a bad axis, a search without a validation split,
            or a grid point that is not a valid configuration.
    """
    if not isinstance(data, dict):
        raise ConfigError("a sweep file must hold a mapping of sections")
    data = copy.deepcopy(data)
    sweep = _check_mapping(data.pop("sweep", None), _SWEEP_KEYS, "section 'sweep'")
    axes = _check_axes(sweep.get("axes"), "sweep.axes")

    # resources decide the threads of every run, so that ids do not depend on machines
    resources_data = _check_mapping(
        sweep.get("resources"), _RESOURCE_KEYS, "sweep.resources"
    )
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"section 'train' must be a mapping, got {train!r}")
    threads = train.get("threads")
    cpus = resources_data.get("cpus", threads if threads is not None else 1)
    gpus = resources_data.get("gpus", 0)
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise ConfigError(f"sweep.resources.cpus = {cpus!r} must be an integer >= 1")
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not gpus >= 0:
        raise ConfigError(f"sweep.resources.gpus = {gpus!r} must be a number >= 0")
    if threads is not None and isinstance(threads, int) and threads > cpus:
        raise ConfigError(
            f"train.threads = {threads} exceeds sweep.resources.cpus = {cpus}; runs "
            "would oversubscribe the cores: raise resources.cpus or lower train.threads"
        )
    data["train"] = {**train, "threads": threads if threads is not None else cpus}

    # the base must be valid on its own; it fixes name, seeds, output and store
    base = resolve_config(data)
    search = None
    if sweep.get("search") is not None:
        search_data = _check_mapping(sweep["search"], _SEARCH_KEYS, "sweep.search")
        search_axes = _check_axes(search_data.get("axes"), "sweep.search.axes")
        if not search_axes:
            raise ConfigError(
                "sweep.search needs axes to tune, e.g. axes: {optimizer.lr: [0.01, 0.1]}"
            )
        both = sorted(set(search_axes) & set(axes))
        if both:
            raise ConfigError(
                f"{', '.join(both)} is both a grid axis and a search axis; keep it in "
                "one of sweep.axes and sweep.search.axes"
            )
        seeds = search_data.get("seeds", base.seeds[:1])
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = [seeds]
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            or len(set(seeds)) != len(seeds)
            or any(s < 0 for s in seeds)
        ):
            raise ConfigError(
                f"sweep.search.seeds = {seeds!r} must be distinct non-negative integers"
            )
        metric = search_data.get("metric", "acc")
        if metric not in SEARCH_METRICS:
            raise ConfigError(
                f"sweep.search.metric = {metric!r} is invalid; choose one of "
                f"{', '.join(SEARCH_METRICS)} (measured on the validation split)"
            )
        search = SearchSpec(search_axes, seeds, metric)

    output = Path(base.output)
    if store is not None:
        store_path: Path | None = Path(store)
    elif base.store is False:
        raise ConfigError(
            "a sweep records its runs in a results store and reads it to skip finished "
            "runs; remove `store: false` or give a store path"
        )
    elif base.store in (None, True):
        from metacl.sweep.store import STORE_FILE

        store_path = output / STORE_FILE
    else:
        store_path = Path(base.store)

    spec = SweepSpec(
        name=base.name,
        base=data,
        axes=axes,
        search=search,
        resources=Resources(cpus=cpus, gpus=float(gpus)),
        directory=output / base.name,
        store=store_path,
        seeds=list(base.seeds),
    )

    # validate every point now: a bad value fails before any run starts
    extra = search.axes if search is not None else None
    for point in spec.grid(extra):
        config = spec.config_at(point)
        if search is not None:
            _check_validation_split(config, spec.name)
    return spec


def _check_validation_split(config: RunConfig, name: str) -> None:
    fraction = config.scenario.get("validation_fraction", 0.0) or 0.0
    if not fraction > 0:
        raise ConfigError(
            f"sweep {name!r} searches hyperparameters, which are chosen on validation "
            f"accuracy and never on test accuracy, but scenario.validation_fraction = "
            f"{fraction}; set it, e.g. scenario: {{validation_fraction: 0.1}}"
        )


def load_sweep(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    store: str | Path | None = None,
) -> SweepSpec:
    """Read, override (``sweep.axes.optimizer.lr=[0.1]``) and validate a sweep file.

    The file is read with ``yaml.safe_load`` (or ``tomllib``): a YAML tag that asks
    for a Python object is refused, and nothing in the file is imported or called.
    """
    data = load_config_file(path)
    if "sweep" not in data:
        raise ConfigError(
            f"{str(path)!r} has no `sweep` section; add one with the axes to vary "
            "(sweep: {axes: {optimizer.lr: [0.01, 0.1]}}), or use `metacl run` for a "
            "single configuration"
        )
    plain, axes = [], []
    for item in overrides:
        (axes if item.startswith(_AXIS_PREFIXES) else plain).append(item)
    data = apply_overrides(data, plain)
    for item in axes:
        _override_axis(data, item)
    return sweep_from_dict(data, store=store)


_AXIS_PREFIXES = ("sweep.axes.", "sweep.search.axes.")


def _override_axis(data: dict[str, Any], item: str) -> None:
    """``sweep.axes.optimizer.lr=[0.01, 0.1]``: the axis key keeps its dots."""
    key, sep, raw = item.partition("=")
    prefix = next(p for p in _AXIS_PREFIXES if key.startswith(p))
    axis = key[len(prefix) :]
    if not sep or not axis:
        raise ConfigError(f"override {item!r} must look like {prefix}KEY=[VALUE, ...]")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"override {item!r}: cannot read the values ({error})"
        ) from None
    node = data.setdefault("sweep", {}) or {}
    data["sweep"] = node
    if prefix == "sweep.search.axes.":
        node = node.setdefault("search", {}) or {}
        data["sweep"]["search"] = node
    axes = node.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"override {item!r}: {prefix[:-1]} is not a mapping")
    axes[axis] = value
    node["axes"] = axes


def expand(
    spec: SweepSpec,
    points: list[dict[str, Any]],
    *,
    seeds: list[int] | None = None,
    role: str = "grid",
    strategies: list[int | str] | None = None,
) -> list[PlannedRun]:
    """The runs of ``points``: every strategy on every seed, in a fixed order.

    Args:
        spec: The sweep.
        points: Grid points (axis key -> value).
        seeds: Seeds to run (default: the configuration's).
        role: What these runs are for: "grid", "search" or "final".
        strategies: Only these strategies (by index or label) at each point.

    Returns:
        The runs, duplicates (same run id) kept once, first occurrence first.
    """
    runs: dict[str, PlannedRun] = {}
    for point in points:
        config = spec.config_at(point, seeds)
        for index, strategy in enumerate(config.strategies):
            if strategies is not None and not (
                index in strategies or strategy["label"] in strategies
            ):
                continue
            for seed in config.seeds:
                run_id = config_hash(config.single_run(index, seed))
                if run_id not in runs:
                    runs[run_id] = PlannedRun(
                        run_id=run_id,
                        config=config,
                        strategy_index=index,
                        seed=seed,
                        point=dict(point),
                        role=role,
                        directory=(spec.directory / "runs" / run_id).resolve(),
                    )
    return list(runs.values())
