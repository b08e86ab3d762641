"""Run configuration: read a YAML or TOML file, apply overrides, validate everything.

A configuration names only registered parts (datasets, scenarios, models,
strategies); it cannot import or call anything else. Validation happens before any
data is loaded or any model trained: an unknown key or a bad value is a
:class:`~metacl.errors.ConfigError` that lists the valid keys or choices.

The sections::

    name: split-digits          # run directory name under `output`
    seeds: [0, 1, 2]            # one seed fixes stream, initialisation and training
    dataset: {name: digits}     # plus the loader's settings, and optionally
                                # normalize: train | {mean: [...], std: [...]}
    scenario: {name: class_incremental, n_experiences: 5}
    model: {name: mlp, hidden: [100, 100], multi_head: false}
    strategies:                 # or a single `strategy:` mapping
      - {name: naive}
      - {name: joint, label: joint-upper-bound}
    optimizer: {name: sgd, lr: 0.05, momentum: 0.0, weight_decay: 0.0}
    train: {epochs: 5, batch_size: 32, eval_batch_size: 1000, threads: null}
    output: runs
    store: null                 # results store: null = results.sqlite beside the run
                                # directory (OUTPUT/), a file path, or false

Example:
    >>> cfg = resolve_config({"strategy": {"name": "naive"}})
    >>> cfg.strategies[0]["name"], cfg.train["batch_size"]
    ('naive', 128)
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from metacl.errors import ConfigError, DataError
from metacl.registry import _params_of, check_value

__all__ = [
    "RunConfig",
    "load_config_file",
    "apply_overrides",
    "resolve_config",
    "default_config",
    "config_hash",
]

TOP_LEVEL = (
    "name",
    "seeds",
    "dataset",
    "scenario",
    "model",
    "strategy",
    "strategies",
    "optimizer",
    "train",
    "output",
    "store",
)


def _train_section(
    *,
    epochs: int = 1,
    batch_size: int = 128,
    online_batch_size: int = 10,
    eval_batch_size: int = 1000,
    threads: int | None = None,
    device: str = "cpu",
) -> None:
    """The ``train`` section: the loop the runner drives.

    Args:
        epochs: Passes over each experience (ignored by online streams: one pass).
        batch_size: Training batch size.
        online_batch_size: Training batch size of an online stream (``scenario.online``:
            one pass in small batches; the MER and La-MAML protocols use 10).
        eval_batch_size: Evaluation batch size (memory only; results do not change).
        threads: torch intra-op threads; None leaves torch's default.
        device: "cpu", "cuda", "cuda:1", ...
    """


def _optimizer_section(
    *,
    name: Literal["sgd", "adam"] = "sgd",
    lr: float = 0.01,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> None:
    """The ``optimizer`` section (see :class:`metacl.strategies.OptimizerSpec`)."""


@dataclass
class RunConfig:
    """A validated configuration with every default filled in."""

    name: str
    seeds: list[int]
    dataset: dict[str, Any]
    scenario: dict[str, Any]
    model: dict[str, Any]
    strategies: list[dict[str, Any]]
    optimizer: dict[str, Any]
    train: dict[str, Any]
    output: str = "runs"
    labels: list[str] = field(default_factory=list)
    # the results store (metacl.sweep.store): None = results.sqlite beside the run
    # directory, a path, or False to record nothing
    store: str | bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seeds": list(self.seeds),
            "dataset": dict(self.dataset),
            "scenario": dict(self.scenario),
            "model": dict(self.model),
            "strategies": [dict(s) for s in self.strategies],
            "optimizer": dict(self.optimizer),
            "train": dict(self.train),
            "output": self.output,
            **({"store": self.store} if self.store is not None else {}),
        }

    def single_run(self, strategy_index: int, seed: int) -> dict[str, Any]:
        """The part of the configuration that determines one (strategy, seed) run."""
        train = {k: v for k, v in self.train.items() if k not in ("eval_batch_size",)}
        return {
            "seed": seed,
            "dataset": self.dataset,
            "scenario": self.scenario,
            "model": self.model,
            "strategy": self.strategies[strategy_index],
            "optimizer": self.optimizer,
            "train": train,
        }


def config_hash(single_run: dict[str, Any]) -> str:
    """A stable digest of a run's configuration, stored in its checkpoints."""
    text = json.dumps(single_run, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml`` or ``.toml`` configuration into a dictionary."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            raise ConfigError(
                f"configuration file {str(path)!r} must end in .yaml, .yml or .toml"
            )
    except (yaml.YAMLError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"cannot parse {str(path)!r}: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{str(path)!r} must hold a mapping of sections at top level")
    return data


def default_config() -> dict[str, Any]:
    """The configuration ``metacl run`` uses without arguments."""
    text = resources.files("metacl").joinpath("configs/default.yaml").read_text()
    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML scalars/lists.

    List elements are addressed by index: ``strategies.1.lr=0.1``.

    Example:
        >>> apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3"])
        {'train': {'epochs': 3}}
    """
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = _list_item(node, part, ".".join(parts[: i + 1]))
            else:
                if part not in node or node[part] is None:
                    node[part] = {}
                node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            index = _list_index(node, last, key)
            node[index] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(
                f"override {item!r}: {'.'.join(parts[:-1])} is not a section"
            )
    return data


def _list_index(node: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {where!r}: use an index below {len(node)}")
    return int(part)


def _list_item(node: list, part: str, where: str) -> Any:
    return node[_list_index(node, part, where)]


def _validate_section(
    spec: Callable[..., Any], settings: Any, where: str
) -> dict[str, Any]:
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ConfigError(f"section {where!r} must be a mapping, got {settings!r}")
    params = _params_of(spec)
    unknown = sorted(set(settings) - set(params))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in section {where!r}; "
            f"valid keys: {', '.join(params)}"
        )
    out = {}
    for name, param in params.items():
        value = settings.get(name, param.default)
        out[name] = (
            check_value(value, param.annotation, f"{where}.{name}")
            if name in settings
            else value
        )
    return out


def _validate_named(registry, settings: Any, where: str, extra: tuple[str, ...] = ()):
    if isinstance(settings, str):
        settings = {"name": settings}
    if not isinstance(settings, dict) or "name" not in settings:
        raise ConfigError(
            f"section {where!r} needs a 'name'; valid choices: {', '.join(registry.names())}"
        )
    settings = dict(settings)
    name = settings.pop("name")
    kept = {k: settings.pop(k) for k in extra if k in settings}
    resolved = registry.validate(name, settings, where=where)
    return {"name": name, **kept, **resolved}


def _reconcile_experiences(scenario: dict[str, Any], given: Any) -> None:
    """Make ``n_experiences`` agree with an explicit ``classes_per_experience``.

    The class split follows ``classes_per_experience`` when it is given; a different
    ``n_experiences`` beside it would be recorded in the resolved configuration (and
    give a sweep axis over it distinct runs of one stream), so it is refused, and a
    missing one is filled in from the list.
    """
    counts = scenario.get("classes_per_experience")
    if counts is None or "n_experiences" not in scenario:
        return
    stated = given.get("n_experiences") if isinstance(given, dict) else None
    if stated is not None and stated != len(counts):
        raise ConfigError(
            f"scenario.n_experiences = {stated} but scenario.classes_per_experience = "
            f"{counts} makes {len(counts)} experiences; set n_experiences to "
            f"{len(counts)} or leave it out"
        )
    scenario["n_experiences"] = len(counts)


def resolve_config(data: dict[str, Any]) -> RunConfig:
    """Validate a configuration dictionary and fill in every default.

    Raises:
        ConfigError: An unknown section or key, or a bad value; the message names it
            and lists what is valid.
    """
    # NOTE: importing these registers every dataset, scenario, model and strategy.
    import metacl.data  # noqa: F401
    import metacl.models  # noqa: F401
    import metacl.strategies  # noqa: F401
    from metacl.data.base import DATASETS, check_normalize
    from metacl.data.scenarios import SCENARIOS
    from metacl.models.base import MODELS
    from metacl.strategies.base import STRATEGIES

    if not isinstance(data, dict):
        raise ConfigError("a configuration must be a mapping of sections")
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(map(repr, unknown))}; valid sections: "
            f"{', '.join(TOP_LEVEL)}"
        )
    base = default_config()
    if "strategy" in data and "strategies" in data:
        raise ConfigError("give either 'strategy' or 'strategies', not both")
    strategies = data.get("strategies", base.get("strategies"))
    if "strategy" in data:
        strategies = [data["strategy"]]
    if isinstance(strategies, (dict, str)):
        strategies = [strategies]
    if not isinstance(strategies, list) or not strategies:
        raise ConfigError(
            f"'strategies' must be a non-empty list; valid names: "
            f"{', '.join(STRATEGIES.names())}"
        )

    name = data.get("name", base["name"])
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"name = {name!r} must be a plain directory name")
    seeds = data.get("seeds", base["seeds"])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    seeds = check_value(seeds, list[int], "seeds")
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(f"seeds = {seeds} must be distinct non-negative integers")

    dataset = _validate_named(
        DATASETS, data.get("dataset", base["dataset"]), "dataset", extra=("normalize",)
    )
    if "normalize" in dataset:
        try:
            dataset["normalize"] = check_normalize(dataset["normalize"])
        except DataError as error:
            raise ConfigError(str(error)) from None
    scenario_settings = data.get("scenario", base["scenario"])
    scenario = _validate_named(SCENARIOS, scenario_settings, "scenario")
    _reconcile_experiences(scenario, scenario_settings)
    model_settings = data.get("model", base["model"])
    model = _validate_named(MODELS, model_settings, "model", extra=("multi_head",))
    model["multi_head"] = check_value(
        model.get("multi_head", False), bool, "model.multi_head"
    )

    resolved_strategies, labels = [], []
    for i, entry in enumerate(strategies):
        where = f"strategies[{i}]"
        resolved = _validate_named(STRATEGIES, entry, where, extra=("label",))
        label = resolved.pop("label", None) or resolved["name"]
        if not isinstance(label, str) or "/" in label:
            raise ConfigError(f"{where}.label = {label!r} must be a plain name")
        if label in labels:
            raise ConfigError(
                f"two strategies are labelled {label!r}; give each a distinct 'label'"
            )
        labels.append(label)
        resolved_strategies.append(resolved)

    optimizer = _validate_section(
        _optimizer_section, data.get("optimizer", base.get("optimizer")), "optimizer"
    )
    if not optimizer["lr"] > 0:
        raise ConfigError(f"optimizer.lr = {optimizer['lr']} must be > 0")
    train = _validate_section(
        _train_section, data.get("train", base.get("train")), "train"
    )
    for key in ("epochs", "batch_size", "online_batch_size", "eval_batch_size"):
        if train[key] < 1:
            raise ConfigError(f"train.{key} = {train[key]} must be >= 1")
    if train["threads"] is not None and train["threads"] < 1:
        raise ConfigError(f"train.threads = {train['threads']} must be >= 1 or null")
    output = data.get("output", base.get("output", "runs"))
    if not isinstance(output, str) or not output:
        raise ConfigError(f"output = {output!r} must be a directory path")
    store = data.get("store", base.get("store"))
    if not (
        store is None or isinstance(store, bool) or (isinstance(store, str) and store)
    ):
        raise ConfigError(
            f"store = {store!r} must be a file path, null (results.sqlite beside the "
            "run directory) or false (record nothing)"
        )

    for strategy, label in zip(resolved_strategies, labels, strict=True):
        strategy["label"] = label
    return RunConfig(
        name=name,
        seeds=seeds,
        dataset=dataset,
        scenario=scenario,
        model=model,
        strategies=resolved_strategies,
        optimizer=optimizer,
        train=train,
        output=output,
        labels=labels,
        store=store,
    )
