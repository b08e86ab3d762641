"""One experiment: stream x strategies x seeds -> accuracy matrices, numbers, files.

For each strategy and seed the runner builds the stream and the model from the seed,
then, for each experience in turn, calls the strategy's hooks on shuffled batches and
evaluates the learner on every test experience. After each experience it writes a
checkpoint, so a run that fails or is killed resumes from its last finished
experience and ends with the same accuracy matrix as an uninterrupted run.

Note [determinism]: the global torch generator is re-seeded from (seed, experience)
before each experience, and batches are drawn from a generator seeded the same way.
A strategy that draws random numbers either uses the global generator (and so is
reproducible per experience) or keeps its own generator in its ``state_dict``. With
this, the same seed and configuration give the same accuracy matrix bit for bit, and
a resumed run equals an uninterrupted one.

Layout of a run directory::

    DIR/config.yaml                  resolved configuration
    DIR/.lock                        held by the process running in DIR (its pid)
    DIR/run.log                      log of the run
    DIR/summary.json, summary.csv    numbers per strategy: mean and 95% CI over seeds
    DIR/LABEL/seed_S/result.json     R, b, numbers and timings of one run
    DIR/LABEL/seed_S/accuracy_matrix.csv
    DIR/LABEL/seed_S/checkpoint.pt   last finished experience (weights only)
    DIR/plots/*.png, DIR/report.md, DIR/report.html
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from torch import Tensor

from metacl.config import RunConfig, config_hash
from metacl.data.base import Dataset, load_dataset
from metacl.data.scenarios import Experience, Stream, build_stream
from metacl.errors import (
    CheckpointError,
    ConfigError,
    MetaclError,
    ScenarioError,
    TrainingError,
)
from metacl.locking import directory_lock
from metacl.metrics import METRIC_NAMES, derived_metrics, mean_ci
from metacl.models import MultiHead, build_model
from metacl.strategies.base import STRATEGIES, OptimizerSpec, Strategy, build_strategy

__all__ = [
    "Progress",
    "SeedResult",
    "ExperimentResult",
    "run_experiment",
    "run_single",
    "evaluate",
    "load_results",
]

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
# the numbers a summary gives mean and CI of: the metrics, then timings and memory
SUMMARY_NAMES = (
    *METRIC_NAMES,
    "train_s",
    "eval_s",
    "train_samples_per_s",
    "eval_samples_per_s",
    "peak_rss_mb",
)


class Progress(Protocol):
    """What the runner reports progress to (the CLI passes a progress bar)."""

    def begin(self, description: str, total: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def end(self) -> None: ...


@dataclass
class SeedResult:
    """The outcome of one strategy on one seed."""

    label: str
    strategy: str
    seed: int
    stream: str
    R: list[list[float]]
    b: list[float]
    R_valid: list[list[float]] | None
    metrics: dict[str, float]
    timings: dict[str, float]
    config_hash: str
    kind: str = "classification"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ExperimentResult:
    """All seed results of an experiment and their summary per strategy."""

    directory: Path | None
    results: list[SeedResult]
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# building the parts of one run


def _seed_for(seed: int, experience: int) -> int:
    return (seed * 1_000_003 + 7919 * (experience + 1)) % (2**63)


def build_parts(
    config: RunConfig, strategy_index: int, seed: int, dataset: Dataset
) -> tuple[Stream, Strategy]:
    """Build the stream, model and strategy of one run, seeded."""
    stream = _build_stream(config, dataset, seed)
    return stream, _build_strategy(config, strategy_index, seed, stream)


def _build_stream(config: RunConfig, dataset: Dataset, seed: int) -> Stream:
    scenario = dict(config.scenario)
    return build_stream(scenario.pop("name"), dataset, seed=seed, **scenario)


def _build_strategy(
    config: RunConfig, strategy_index: int, seed: int, stream: Stream
) -> Strategy:
    """The seeded model and strategy ``strategy_index`` of ``config`` on ``stream``."""
    entry = dict(config.strategies[strategy_index])
    name = entry.pop("name")
    entry.pop("label", None)

    # refuse a misfit before building anything heavy
    STRATEGIES.get(name).factory.check_stream(stream)

    torch.manual_seed(seed)
    model_settings = dict(config.model)
    model_name = model_settings.pop("name")
    multi_head = model_settings.pop("multi_head", False)
    n_outputs = stream.n_classes if stream.kind == "classification" else 1
    model = build_model(model_name, stream.input_shape, n_outputs, **model_settings)
    if multi_head:
        if not stream.task_ids_at_test:
            raise ScenarioError(
                f"model.multi_head = true needs task ids at test time, and the "
                f"{stream.scenario} stream gives none; use the task_incremental "
                "scenario or set model.multi_head = false"
            )
        model = MultiHead(model, stream.n_tasks)
    model = model.to(config.train["device"])
    return build_strategy(
        name, model, stream, OptimizerSpec(**config.optimizer), **entry
    )


def check_strategies(config: RunConfig, dataset: Dataset) -> None:
    """Build every strategy of ``config`` once, on the first seed's stream, so that a
    value one of them refuses (a setting out of range, a scenario it does not fit)
    stops the experiment before anything trains, with the strategy named.

    Raises:
        MetaclError: Of the type the strategy raised, its message prefixed with
            ``strategies[i] (label)``.
    """
    seed = config.seeds[0]
    stream = _build_stream(config, dataset, seed)
    for index, entry in enumerate(config.strategies):
        try:
            _build_strategy(config, index, seed, stream)
        except MetaclError as error:
            where = f"strategies[{index}] ({entry['label']})"
            raise type(error)(f"{where}: {error}") from None


# ---------------------------------------------------------------------------
# training and evaluation


def _train_on(
    strategy: Strategy,
    x: Tensor,
    y: Tensor,
    task: Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    where: str,
    progress: Progress | None,
) -> int:
    """Shuffled mini-batches through ``strategy.observe``; returns samples seen."""
    n = len(x)
    seen = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for batch, start in enumerate(range(0, n, batch_size)):
            index = order[start : start + batch_size]
            if strategy.takes_index:
                loss = strategy.observe(x[index], y[index], task[index], index=index)
            else:
                loss = strategy.observe(x[index], y[index], task[index])
            if not math.isfinite(float(loss)):
                raise TrainingError(
                    f"{where}: the training loss became {float(loss)} at epoch "
                    f"{epoch}, batch {batch}; lower optimizer.lr (it is "
                    f"{strategy.optimizer_spec.lr}) or check the inputs for NaN. "
                    "Finished experiences are kept; rerun to resume after fixing."
                )
            seen += len(index)
            if progress is not None:
                progress.advance(1)
    return seen


def evaluate(
    strategy: Strategy,
    experiences: list[Experience],
    *,
    split: str = "test",
    batch_size: int = 1000,
    device: str = "cpu",
) -> list[float]:
    """Accuracy (or MSE for regression) of ``strategy`` on each experience's split."""
    was_training = strategy.model.training
    strategy.model.eval()
    scores = []
    with torch.inference_mode():
        for e in experiences:
            x, y = getattr(e, f"{split}_x"), getattr(e, f"{split}_y")
            if len(x) == 0:
                scores.append(math.nan)
                continue
            total = 0.0
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size].to(device, non_blocking=True)
                yb = y[start : start + batch_size].to(device, non_blocking=True)
                out = strategy.predict(xb, e.task_ids(len(xb)).to(device))
                if strategy.regression:
                    total += float(((out.reshape(yb.shape) - yb) ** 2).sum())
                else:
                    total += float((out.argmax(dim=1) == yb).sum())
            scores.append(total / len(x))
    strategy.model.train(was_training)
    return scores


def _reset_peak_memory(device: str) -> bool:
    """Start counting this run's peak memory afresh, where the OS allows it.

    The peak resident memory of a process is a high-water mark: without a reset, a run
    would report the peak of every earlier run in its process (several strategies and
    seeds in one ``metacl run``, or a sweep worker). Linux resets it through
    ``/proc/self/clear_refs``, to the memory resident now (data loaded before the run
    still counts). Returns whether it could.
    """
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_memory_mb(device: str) -> dict[str, float]:
    """Peak resident memory since :func:`_reset_peak_memory` (Linux ``VmHWM``), or
    of the whole process where it cannot be reset."""
    rss_mb = math.nan
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss_mb = int(line.split()[1]) / 1024
    except OSError:
        pass
    if math.isnan(rss_mb):
        # ru_maxrss is in KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_mb = rss / 1024 if sys.platform != "darwin" else rss / 2**20
    out = {"peak_rss_mb": rss_mb}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _update_peak_memory(timings: dict[str, float], device: str) -> None:
    """Raise the peaks in ``timings`` to what this process has reached since the run
    (or its resumption) began."""
    for key, value in _peak_memory_mb(device).items():
        timings[key] = max(float(timings.get(key, 0.0)), value)


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: Path, expected_hash: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: it is truncated, corrupt, or holds "
            f"objects other than tensors and plain values, which are never unpickled "
            f"({type(error).__name__}); delete it to restart this run from its beginning"
        ) from None
    if not isinstance(state, dict) or state.get("config_hash") != expected_hash:
        raise CheckpointError(
            f"checkpoint {str(path)!r} belongs to another configuration (hash "
            f"{state.get('config_hash') if isinstance(state, dict) else '?'}, this run "
            f"is {expected_hash}); use another output directory (--out) or delete it"
        )
    return state


def run_single(
    config: RunConfig,
    strategy_index: int,
    seed: int,
    *,
    dataset: Dataset | None = None,
    directory: Path | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> SeedResult | None:
    """Run one strategy on one seed.

    Args:
        config: The validated configuration.
        strategy_index: Which entry of ``config.strategies``.
        seed: The seed.
        dataset: The loaded dataset (loaded from the configuration if None).
        directory: Where checkpoints and the result go; None keeps everything in memory.
        resume: Continue from a checkpoint in ``directory`` if one exists.
        progress: Receives one ``advance`` per training batch.
        stop_after: Stop after this many experiences (for tests of resumption);
            returns None then.

    Returns:
        The :class:`SeedResult`, or None when stopped early.

    Raises:
        CheckpointError: ``directory`` holds a checkpoint of another configuration.
        TrainingError: The loss became NaN or infinite.
    """
    single = config.single_run(strategy_index, seed)
    digest = config_hash(single)
    label = config.strategies[strategy_index]["label"]
    device = config.train["device"]
    if config.train["threads"] is not None:
        torch.set_num_threads(config.train["threads"])

    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        result_path = directory / RESULT
        if resume and result_path.exists():
            done = json.loads(result_path.read_text())
            if done.get("config_hash") == digest:
                logger.info("%s seed %d: already finished, skipped", label, seed)
                return SeedResult(**done)
            raise CheckpointError(
                f"{str(result_path)!r} holds a result of another configuration; use "
                "another output directory (--out) or delete it"
            )

    _reset_peak_memory(device)
    if dataset is None:
        settings = dict(config.dataset)
        dataset = load_dataset(settings.pop("name"), **settings)
    stream, strategy = build_parts(config, strategy_index, seed, dataset)
    joint = strategy.trains_jointly
    T = len(stream)
    # an online stream is seen once, in small batches
    epochs = 1 if stream.online else config.train["epochs"]
    batch_size = config.train["online_batch_size" if stream.online else "batch_size"]
    has_valid = any(len(e.valid_x) for e in stream.experiences)
    eval_batch = config.train["eval_batch_size"]

    # start fresh, or from the last finished experience
    R: list[list[float]] = []
    R_valid: list[list[float]] = []
    timings = {"train_s": 0.0, "eval_s": 0.0, "train_samples": 0, "eval_samples": 0}
    start = 0
    checkpoint = directory / CHECKPOINT if directory is not None else None
    if checkpoint is not None and checkpoint.exists():
        if not resume:
            checkpoint.unlink()
        else:
            state = _load_checkpoint(checkpoint, digest)
            strategy.model.load_state_dict(state["model"])
            strategy.load_state_dict(state["strategy"])
            R, R_valid, b = state["R"], state["R_valid"], state["b"]
            timings.update(state["timings"])
            start = state["next_experience"]
            logger.info("%s seed %d: resumed at experience %d", label, seed, start)
    if start == 0:
        began = time.perf_counter()
        b = evaluate(strategy, stream.experiences, batch_size=eval_batch, device=device)
        timings["eval_s"] += time.perf_counter() - began
        timings["eval_samples"] += sum(len(e.test_x) for e in stream.experiences)

    logger.info("%s seed %d: %s", label, seed, stream.describe())
    steps = range(start, 1) if joint else range(start, T)
    for i in steps:
        # seed this experience's randomness (Note [determinism])
        torch.manual_seed(_seed_for(seed, i))
        generator = torch.Generator().manual_seed(_seed_for(seed, i))
        if joint:
            experience = _merged(stream)
        else:
            experience = stream.experiences[i]
        x = experience.train_x.to(device)
        y = experience.train_y.to(device)
        task = _train_tasks(stream, experience, joint).to(device)
        n_batches = epochs * math.ceil(len(x) / batch_size)
        if progress is not None:
            what = "all experiences" if joint else f"experience {i + 1}/{T}"
            progress.begin(f"{label} seed {seed} {what}", n_batches)

        # train
        began = time.perf_counter()
        strategy.model.train()
        strategy.begin_experience(experience)
        timings["train_samples"] += _train_on(
            strategy,
            x,
            y,
            task,
            epochs=epochs,
            batch_size=batch_size,
            generator=generator,
            where=f"{label} seed {seed}, experience {i}",
            progress=progress,
        )
        strategy.end_experience(experience)
        timings["train_s"] += time.perf_counter() - began
        if progress is not None:
            progress.end()

        # evaluate on every test experience
        began = time.perf_counter()
        R.append(
            evaluate(strategy, stream.experiences, batch_size=eval_batch, device=device)
        )
        timings["eval_s"] += time.perf_counter() - began
        timings["eval_samples"] += sum(len(e.test_x) for e in stream.experiences)
        if has_valid:
            R_valid.append(
                evaluate(
                    strategy,
                    stream.experiences,
                    split="valid",
                    batch_size=eval_batch,
                    device=device,
                )
            )
        logger.info(
            "%s seed %d: after experience %d, test scores %s",
            label,
            seed,
            i,
            " ".join(f"{a:.4f}" for a in R[-1]),
        )

        # checkpoint the finished experience (with the peak memory so far, which a
        # resumed run keeps as its own)
        _update_peak_memory(timings, device)
        if checkpoint is not None:
            _save_atomic(
                {
                    "config_hash": digest,
                    "next_experience": i + 1,
                    "model": strategy.model.state_dict(),
                    "strategy": strategy.state_dict(),
                    "R": R,
                    "R_valid": R_valid,
                    "b": b,
                    "timings": timings,
                },
                checkpoint,
            )
        if stop_after is not None and stop_after <= i + 1 < T:
            return None

    _update_peak_memory(timings, device)
    timings["train_samples_per_s"] = timings["train_samples"] / max(
        timings["train_s"], 1e-9
    )
    timings["eval_samples_per_s"] = timings["eval_samples"] / max(
        timings["eval_s"], 1e-9
    )
    result = SeedResult(
        label=label,
        strategy=config.strategies[strategy_index]["name"],
        seed=seed,
        stream=stream.describe(),
        R=R,
        b=b,
        R_valid=R_valid or None,
        metrics=derived_metrics(
            torch.tensor(R),
            torch.tensor(b),
            higher_is_better=stream.kind != "regression",
        ),
        timings=timings,
        config_hash=digest,
        kind=stream.kind,
    )
    if directory is not None:
        # the matrix first: result.json is what marks the run finished
        lines = [",".join(["after_experience"] + [f"exp_{j}" for j in range(T)])]
        for row_index, row in enumerate(R):
            name = "all" if joint else str(row_index)
            lines.append(",".join([name] + [f"{v:.6f}" for v in row]))
        _write_text_atomic(directory / "accuracy_matrix.csv", "\n".join(lines) + "\n")
        _write_text_atomic(directory / RESULT, json.dumps(result.to_dict(), indent=1))
    return result


def _merged(stream: Stream) -> Experience:
    """All experiences' training data as one experience (joint training)."""
    es = stream.experiences
    return Experience(
        index=0,
        task_id=-1,
        classes=tuple(sorted({c for e in es for c in e.classes})),
        train_x=torch.cat([e.train_x for e in es]),
        train_y=torch.cat([e.train_y for e in es]),
        test_x=torch.cat([e.test_x for e in es]),
        test_y=torch.cat([e.test_y for e in es]),
        valid_x=torch.cat([e.valid_x for e in es]),
        valid_y=torch.cat([e.valid_y for e in es]),
    )


def _train_tasks(stream: Stream, experience: Experience, joint: bool) -> Tensor:
    if not joint:
        return experience.task_ids(len(experience.train_x))
    return torch.cat([e.task_ids(len(e.train_x)) for e in stream.experiences])


# ---------------------------------------------------------------------------
# a whole experiment


def summarize(results: list[SeedResult]) -> dict[str, dict[str, Any]]:
    """Mean and 95% CI over seeds of every number, per strategy label."""
    summary: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(r.label for r in results):
        group = [r for r in results if r.label == label]
        entry: dict[str, Any] = {
            "strategy": group[0].strategy,
            "seeds": [r.seed for r in group],
            "stream": group[0].stream,
        }
        names = SUMMARY_NAMES
        for name in names:
            values = [
                r.metrics[name] if name in r.metrics else r.timings.get(name, math.nan)
                for r in group
            ]
            mean, half = mean_ci(values)
            entry[name] = {"mean": mean, "ci95": half}
        summary[label] = entry
    return summary


def _environment() -> dict[str, str]:
    import metacl

    return {
        "metacl": metacl.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": str(torch.get_num_threads()),
    }


def run_experiment(
    config: RunConfig,
    *,
    directory: str | Path | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    on_result: Callable[[SeedResult], None] | None = None,
) -> ExperimentResult:
    """Run every strategy of ``config`` on every seed and write the run directory.

    Args:
        config: A validated configuration (:func:`metacl.config.resolve_config`).
        directory: The run directory; default ``config.output / config.name``.
        resume: Reuse finished runs and checkpoints found in ``directory``.
        progress: Progress receiver (the CLI passes a progress bar).
        on_result: Called with each finished :class:`SeedResult`.

    Returns:
        The results of every (strategy, seed) and their summary.

    Example:
        >>> from metacl.config import resolve_config
        >>> cfg = resolve_config({"strategy": "naive", "seeds": [0],
        ...     "train": {"epochs": 1}, "model": {"name": "mlp", "hidden": [16]}})
        >>> result = run_experiment(cfg, directory=None)
        >>> len(result.results[0].R)
        5
    """
    path = Path(directory) if directory is not None else None
    with directory_lock(path):
        if path is not None:
            _write_config(path, config)
        return _run_experiment(config, path, resume, progress, on_result)


def _run_experiment(
    config: RunConfig,
    path: Path | None,
    resume: bool,
    progress: Progress | None,
    on_result: Callable[[SeedResult], None] | None,
) -> ExperimentResult:
    """:func:`run_experiment` once its directory (if any) is locked."""
    handler = None
    if path is not None:
        handler = logging.FileHandler(path / "run.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("metacl").addHandler(handler)
        if logging.getLogger("metacl").level in (logging.NOTSET, logging.WARNING):
            logging.getLogger("metacl").setLevel(logging.INFO)
    store = None
    try:
        settings = dict(config.dataset)
        dataset = load_dataset(settings.pop("name"), **settings)
        logger.info("dataset %s", dataset.summary())
        check_strategies(config, dataset)
        results = []
        store = _open_store(config, path)
        for index, strategy in enumerate(config.strategies):
            for seed in config.seeds:
                seed_dir = (
                    path / strategy["label"] / f"seed_{seed}"
                    if path is not None
                    else None
                )
                began = time.perf_counter()
                result = run_single(
                    config,
                    index,
                    seed,
                    dataset=dataset,
                    directory=seed_dir,
                    resume=resume,
                    progress=progress,
                )
                if store is not None:
                    _record(store, config, index, seed, result, seed_dir, began, resume)
                results.append(result)
                if on_result is not None:
                    on_result(result)
        summary = summarize(results)
        if path is not None:
            _write_summary(path, summary)
        return ExperimentResult(path, results, summary)
    finally:
        if store is not None:
            store.close()
        if handler is not None:
            logging.getLogger("metacl").removeHandler(handler)
            handler.close()


def _open_store(config: RunConfig, path: Path | None):
    """The results store runs are recorded in (``config.store``; default
    ``results.sqlite`` beside the run directory), or None without one."""
    if path is None or config.store is False:
        return None
    from metacl.sweep.store import STORE_FILE, ResultStore

    if config.store is None or config.store is True:
        return ResultStore(path.parent / STORE_FILE)
    return ResultStore(config.store)


def _record(store, config, index, seed, result, directory, began, resume) -> None:
    """Record a finished run; one skipped as already finished keeps its record."""
    from metacl.sweep.store import record_from_result

    if resume and store.finished([result.config_hash]):
        return
    single = config.single_run(index, seed)
    wall_s = time.perf_counter() - began
    store.record(
        record_from_result(
            result, single, name=config.name, directory=directory, wall_s=wall_s
        )
    )


def _write_config(path: Path, config: RunConfig) -> None:
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    target = path / "config.yaml"
    if target.exists() and target.read_text() != text:
        old = yaml.safe_load(target.read_text()) or {}
        # only the seed list or the strategies may grow in an existing directory
        same = all(
            old.get(k) == config.to_dict().get(k)
            for k in ("dataset", "scenario", "model", "optimizer", "train")
        )
        if not same:
            raise CheckpointError(
                f"{str(path)!r} holds a run of another configuration; use another "
                "output directory (--out) or delete it"
            )
    _write_text_atomic(target, text)
    env = path / "environment.json"
    _write_text_atomic(env, json.dumps(_environment(), indent=1))


def _write_summary(path: Path, summary: dict[str, dict[str, Any]]) -> None:
    _write_text_atomic(path / "summary.json", json.dumps(summary, indent=1))
    names = SUMMARY_NAMES
    with open(path / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["label", "strategy", "n_seeds"]
            + [f"{n}_{s}" for n in names for s in ("mean", "ci95")]
        )
        for label, entry in summary.items():
            row = [label, entry["strategy"], len(entry["seeds"])]
            for n in names:
                row += [entry[n]["mean"], entry[n]["ci95"]]
            writer.writerow(row)


def load_results(directory: str | Path) -> ExperimentResult:
    """Read a run directory's results back (for reports and comparisons)."""
    path = Path(directory)
    if not (path / "config.yaml").exists():
        raise ConfigError(
            f"{str(path)!r} is not a metacl run directory (no config.yaml); give the "
            "directory that `metacl run` printed"
        )
    results = []
    for file in sorted(path.glob(f"*/seed_*/{RESULT}")):
        results.append(SeedResult(**json.loads(file.read_text())))
    if not results:
        raise ConfigError(f"{str(path)!r} holds no finished run yet; resume it first")
    order = yaml.safe_load((path / "config.yaml").read_text()).get("strategies", [])
    rank = {s.get("label", s.get("name")): i for i, s in enumerate(order)}
    results.sort(key=lambda r: (rank.get(r.label, len(rank)), r.seed))
    return ExperimentResult(path, results, summarize(results))
