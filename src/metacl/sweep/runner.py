"""Running a sweep's runs: local processes by default, a Ray cluster when asked.

Every runner calls the same :func:`execute_run` on each run, and the sweep driver
(:func:`run_sweep`, in the calling process) records each finished run in the results
store. A run writes its checkpoint after every experience
(:func:`metacl.experiment.run_single`), so a sweep killed at any moment (kill -9
included) and started again skips the runs the store holds, resumes the others from
their last finished experience, and ends with the results an uninterrupted sweep gives:
at most the experiences in progress at the kill are trained again.

Runners:

- :class:`LocalRunner` runs ``workers`` runs at a time in spawned processes (one run
  in-process when ``workers`` is 1). Workers die with the driver (``PR_SET_PDEATHSIG``
  on Linux, a parent watch elsewhere), so a killed sweep leaves no orphan training
  behind it.
- :class:`RayRunner` sends each run to Ray as a task with the run's declared CPUs and
  GPUs: a local Ray started for the sweep, or a running cluster (``auto`` or an
  address). Ray is an optional extra (``pip install "metacl[ray]"``), imported only
  here. On a cluster of several machines, the output folder must be on a file system
  every node sees (checkpoints are what makes resumption possible); the store is
  written by the driver only.

A run holds an exclusive lock on its folder while it trains, so two sweeps that share
runs (and a store) never train the same run at the same time: the second waits and
then finds the run finished.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from metacl.config import RunConfig
from metacl.errors import ConfigError, MetaclError
from metacl.experiment import Progress
from metacl.locking import directory_lock
from metacl.sweep.search import SearchChoice, choose_configurations
from metacl.sweep.spec import PlannedRun, SweepSpec, expand
from metacl.sweep.store import ResultStore, RunRecord, code_version, record_from_result

__all__ = [
    "RunTask",
    "RunOutcome",
    "Runner",
    "LocalRunner",
    "RayRunner",
    "SweepReport",
    "execute_run",
    "usable_cores",
    "default_workers",
    "make_runner",
    "run_sweep",
    "run_planned",
]

logger = logging.getLogger(__name__)

RAY_HINT = 'Ray is an optional extra: install it with pip install "metacl[ray]"'


@dataclass(frozen=True)
class RunTask:
    """What a worker needs to run one run (picklable)."""

    run_id: str
    config: RunConfig
    strategy_index: int
    seed: int
    directory: str

    @classmethod
    def of(cls, run: PlannedRun) -> RunTask:
        return cls(
            run.run_id, run.config, run.strategy_index, run.seed, str(run.directory)
        )


@dataclass
class RunOutcome:
    """What came back from one run: its result, or the error that stopped it."""

    run_id: str
    result: dict[str, Any] | None = None
    error: str | None = None
    wall_s: float = math.nan
    worker: str = ""
    # where the run ran (metacl.sweep.store.environment, taken in the worker)
    environment: dict[str, str] = field(default_factory=dict)


class Runner(Protocol):
    """Runs tasks, calling ``on_done`` in the driver as each one ends."""

    slots: int

    def run(
        self, tasks: list[RunTask], on_done: Callable[[RunOutcome], None]
    ) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------
# one run, in whichever process runs it

_DATASETS: OrderedDict[str, Any] = OrderedDict()


def _dataset(settings: dict[str, Any]) -> Any:
    """Load a dataset once per process (a worker runs many runs on few datasets)."""
    from metacl.data.base import load_dataset

    key = json.dumps(settings, sort_keys=True, default=str)
    if key not in _DATASETS:
        kwargs = dict(settings)
        _DATASETS[key] = load_dataset(kwargs.pop("name"), **kwargs)
        while len(_DATASETS) > 2:
            _DATASETS.popitem(last=False)
    _DATASETS.move_to_end(key)
    return _DATASETS[key]


def execute_run(task: RunTask) -> RunOutcome:
    """Run (or resume, or skip as finished) one run in this process.

    The run's log goes to ``DIRECTORY/run.log`` (appended: the log of a resumed run
    shows every attempt). Errors come back in the outcome, never raised, so that one
    failed run does not stop the others.
    """
    import torch

    from metacl.experiment import run_single
    from metacl.sweep.store import environment

    began = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    # run_single sets the run's torch threads; a run in the driver's own process
    # (one worker) gives the driver its threads back afterwards
    threads = torch.get_num_threads()
    directory = Path(task.directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(directory / "run.log")
    except OSError as error:  # a folder that cannot be written: this run fails alone
        return RunOutcome(
            task.run_id,
            None,
            f"cannot write the run's folder {str(directory)!r}: {error}",
            time.perf_counter() - began,
            worker,
        )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("metacl")
    package_logger.addHandler(handler)
    level = package_logger.level
    if level in (logging.NOTSET, logging.WARNING):
        package_logger.setLevel(logging.INFO)
    try:
        with directory_lock(directory, wait=True):
            logger.info("run %s starts in %s", task.run_id, worker)
            result = run_single(
                task.config,
                task.strategy_index,
                task.seed,
                dataset=_dataset(task.config.dataset),
                directory=directory,
            )
            where = dict(environment(), worker=worker)
        return RunOutcome(
            task.run_id,
            result.to_dict(),
            None,
            time.perf_counter() - began,
            worker,
            where,
        )
    except MetaclError as error:
        logger.error("run %s failed: %s", task.run_id, error)
        return RunOutcome(
            task.run_id, None, str(error), time.perf_counter() - began, worker
        )
    except Exception as error:  # a bug or a resource error: keep the traceback
        logger.exception("run %s failed", task.run_id)
        text = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
        return RunOutcome(task.run_id, None, text, time.perf_counter() - began, worker)
    finally:
        torch.set_num_threads(threads)
        package_logger.removeHandler(handler)
        package_logger.setLevel(level)
        handler.close()


# ---------------------------------------------------------------------------
# local processes


def usable_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(cpus_per_run: int) -> int:
    """As many runs at a time as the cores allow: workers x threads <= cores."""
    return max(1, usable_cores() // max(1, cpus_per_run))


def _die_with_parent(parent: int) -> None:
    """Make this worker end when the sweep driver ends, even by kill -9."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the driver died before the line above
        os._exit(1)

    def watch() -> None:  # portable fallback, and for platforms without prctl
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="metacl-parent-watch", daemon=True).start()


def _exit_now() -> None:
    """End a worker the pool has released without tearing down its interpreter.

    A process that has imported torch takes about a second to finalise its modules;
    a worker has nothing left to write by then (every run's files are closed, and its
    results were sent to the driver before the pool let it go), so it flushes the
    logs and standard streams and leaves. Registered last, this runs first at exit.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _worker_init(parent: int) -> None:
    _die_with_parent(parent)
    atexit.register(_exit_now)


class LocalRunner:
    """Runs on this machine, ``workers`` at a time, in spawned processes.

    Args:
        workers: Runs at a time; default :func:`default_workers` of ``cpus_per_run``.
            With 1 the runs go one after another in this process (no start-up cost).
        cpus_per_run: Threads of each run, to size the default.
    """

    def __init__(self, workers: int | None = None, *, cpus_per_run: int = 1) -> None:
        if workers is not None and (isinstance(workers, bool) or workers < 1):
            raise ConfigError(f"workers = {workers!r} must be an integer >= 1")
        self.slots = workers if workers is not None else default_workers(cpus_per_run)
        if self.slots * cpus_per_run > usable_cores():
            logger.warning(
                "%d workers x %d threads exceed the %d usable cores; runs will slow "
                "each other down",
                self.slots,
                cpus_per_run,
                usable_cores(),
            )
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.slots,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(os.getpid(),),
            )
        return self._pool

    def run(self, tasks: list[RunTask], on_done: Callable[[RunOutcome], None]) -> None:
        if not tasks:
            return
        if self.slots == 1:
            for task in tasks:
                on_done(execute_run(task))
            return
        pool = self._executor()
        futures = {pool.submit(execute_run, task): task for task in tasks}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = futures[future]
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        outcome = RunOutcome(
                            task.run_id,
                            error="its worker process died (out of memory, or killed); "
                            "run the sweep again to resume it",
                        )
                        self._pool = None
                    except Exception as error:  # e.g. a result that cannot be sent
                        outcome = RunOutcome(
                            task.run_id,
                            error=f"{type(error).__name__}: {error}; run the sweep "
                            "again to resume it",
                        )
                    on_done(outcome)
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ---------------------------------------------------------------------------
# Ray


def import_ray() -> Any:
    """Import Ray, or say how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--ray needs the ray package, which is not installed. {RAY_HINT}"
        ) from None
    return ray


class RayRunner:
    """Runs each run as a Ray task with its declared resources.

    Args:
        address: "local" starts a Ray for the sweep on this machine; "auto" joins the
            cluster this machine belongs to; anything else is a cluster address
            (``HOST:6379`` or ``ray://HOST:10001``). When Ray is already initialised
            in this process, that Ray is used as it is.
        cpus: CPUs per run (its torch threads).
        gpus: GPUs per run (fractions share a GPU).
        num_cpus: CPUs of a local Ray (default: all usable cores).

    Raises:
        ConfigError: Ray is not installed (with the command that installs it).
    """

    def __init__(
        self,
        address: str = "local",
        *,
        cpus: int = 1,
        gpus: float = 0.0,
        num_cpus: int | None = None,
    ) -> None:
        if not isinstance(address, str) or not address:
            raise ConfigError(
                f"--ray {address!r}: give local, auto, or a cluster address HOST:PORT"
            )
        self.ray = import_ray()
        self.address = address
        self.cpus = cpus
        self.gpus = gpus
        self._started = False
        if not self.ray.is_initialized():
            options: dict[str, Any] = {"log_to_driver": False}
            if address == "local":
                options.update(
                    num_cpus=num_cpus or usable_cores(), include_dashboard=False
                )
            else:
                options["address"] = address
            logger.info("starting Ray (%s)", address)
            self.ray.init(**options)
            self._started = True
        total = self.ray.cluster_resources().get("CPU", 1)
        self.slots = max(1, int(total // max(cpus, 1)))
        self._remote = self.ray.remote(num_cpus=cpus, num_gpus=gpus)(execute_run)

    def run(self, tasks: list[RunTask], on_done: Callable[[RunOutcome], None]) -> None:
        ray = self.ray
        pending = {self._remote.remote(task): task for task in tasks}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as error:  # the task's worker died
                        outcome = RunOutcome(
                            task.run_id,
                            error=f"Ray task failed ({type(error).__name__}: {error}); "
                            "run the sweep again to resume it",
                        )
                    on_done(outcome)
        except BaseException:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_runner(
    spec: SweepSpec, *, workers: int | None = None, ray: str | None = None
) -> Runner:
    """The runner a sweep asks for: local processes, or Ray when ``ray`` is given."""
    if ray is not None:
        if workers is not None:
            raise ConfigError(
                "--workers applies to the local runner; with --ray, Ray places runs by "
                "their sweep.resources (cpus, gpus)"
            )
        return RayRunner(ray, cpus=spec.resources.cpus, gpus=spec.resources.gpus)
    return LocalRunner(workers, cpus_per_run=spec.resources.cpus)


# ---------------------------------------------------------------------------
# the sweep driver


@dataclass
class SweepReport:
    """What a sweep did."""

    name: str
    store: Path
    planned: int = 0
    skipped: int = 0
    finished: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    records: dict[str, RunRecord] = field(default_factory=dict)
    outcomes: list[RunOutcome] = field(default_factory=list)
    choices: list[SearchChoice] = field(default_factory=list)
    table_ids: list[str] = field(default_factory=list)  # the grid or the final runs
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def _warn_of_other_code(sweep: str, records: list[RunRecord | None]) -> None:
    """Say when finished runs that a sweep reuses were recorded by other code: a run
    id covers the configuration, not the code, so they are not rerun by themselves."""
    current = code_version()
    versions = sorted(
        {r.code_version for r in records if r and r.code_version not in ("", current)}
    )
    if versions:
        stale = sum(1 for r in records if r and r.code_version in versions)
        logger.warning(
            "sweep %s: %d finished runs were recorded by code version(s) %s, not the "
            "current %s; they are reused as they are. To rerun them, use another "
            "store (--store) and output folder",
            sweep,
            stale,
            ", ".join(versions),
            current,
        )


def run_planned(
    runs: list[PlannedRun],
    runner: Runner,
    store: ResultStore,
    *,
    sweep: str,
    report: SweepReport,
    progress: Progress | None = None,
    description: str = "",
) -> None:
    """Run what ``runs`` lacks in ``store``, recording each run as it finishes."""
    done = store.finished(r.run_id for r in runs)
    by_id = {r.run_id: r for r in runs}
    report.planned += len(runs)
    report.skipped += len(done)
    for run_id in done:
        report.records[run_id] = store.get(run_id)
    _warn_of_other_code(sweep, [report.records[run_id] for run_id in done])
    todo = [r for r in runs if r.run_id not in done]
    logger.info(
        "sweep %s: %d runs, %d already finished, %d to run with %d at a time",
        sweep,
        len(runs),
        len(done),
        len(todo),
        runner.slots,
    )
    if progress is not None:
        progress.begin(description or f"sweep {sweep}", len(runs))
        progress.advance(len(done))

    def on_done(outcome: RunOutcome) -> None:
        run = by_id[outcome.run_id]
        report.outcomes.append(outcome)
        if outcome.result is None:
            report.failed[outcome.run_id] = outcome.error or "unknown error"
            logger.error(
                "sweep %s: %s failed: %s", sweep, run.describe(), outcome.error
            )
        else:
            record = record_from_result(
                outcome.result,
                run.config.single_run(run.strategy_index, run.seed),
                name=sweep,
                directory=run.directory,
                wall_s=outcome.wall_s,
                run_environment=outcome.environment or None,
            )
            store.record(record, sweep=sweep, role=run.role, point=run.point)
            report.records[run.run_id] = record
            report.finished += 1
        if progress is not None:
            progress.advance(1)

    try:
        runner.run([RunTask.of(r) for r in todo], on_done)
    finally:
        if progress is not None:
            progress.end()


def run_sweep(
    spec: SweepSpec,
    *,
    runner: Runner | None = None,
    progress: Progress | None = None,
) -> SweepReport:
    """Run a sweep to the end: the grid, or the search and then the chosen
    configurations on every seed.

    Args:
        spec: The validated sweep (:func:`metacl.sweep.spec.load_sweep`).
        runner: Where runs run (default: local processes sized to the machine).
        progress: Receives the sweep's progress, one ``advance`` per run.

    Returns:
        The :class:`SweepReport`; runs that failed are listed in ``failed`` (the
        others are finished and recorded).
    """
    began = time.perf_counter()
    own_runner = runner is None
    if runner is None:
        runner = LocalRunner(cpus_per_run=spec.resources.cpus)
    spec.directory.mkdir(parents=True, exist_ok=True)
    store = ResultStore(spec.store)
    report = SweepReport(spec.name, spec.store)
    try:
        if spec.search is None:
            runs = expand(spec, spec.grid(), role="grid")
            store.set_members(
                spec.name,
                [(r.run_id, r.role, r.point) for r in runs],
                roles=("grid", "search", "final"),
            )
            report.table_ids = [r.run_id for r in runs]
            run_planned(
                runs, runner, store, sweep=spec.name, report=report, progress=progress
            )
        else:
            _search_then_final(spec, runner, store, report, progress)
    finally:
        store.close()
        if own_runner:
            runner.close()
    report.wall_s = time.perf_counter() - began
    return report


def _search_then_final(
    spec: SweepSpec,
    runner: Runner,
    store: ResultStore,
    report: SweepReport,
    progress: Progress | None,
) -> None:
    search = spec.search
    if search is None:  # pragma: no cover - only called with a search
        raise ValueError("_search_then_final needs a sweep with a search")

    # search: every candidate on the search seeds
    candidates = spec.grid(search.axes)
    search_runs = expand(spec, candidates, seeds=search.seeds, role="search")
    store.set_members(
        spec.name,
        [(r.run_id, r.role, r.point) for r in search_runs],
        roles=("grid", "search"),
    )
    run_planned(
        search_runs,
        runner,
        store,
        sweep=spec.name,
        report=report,
        progress=progress,
        description=f"search {spec.name}",
    )

    # a choice among the candidates that happened to finish could differ from the
    # one a complete search makes: with failed search runs, stop before choosing
    if report.failed:
        logger.error(
            "sweep %s: %d search runs failed; no configuration is chosen until they "
            "finish (run the sweep again)",
            spec.name,
            len(report.failed),
        )
        return

    # choose per grid point and strategy, on validation scores only
    choices = choose_configurations(spec, report.records)
    report.choices = choices
    for choice in choices:
        store.record_search(
            spec.name,
            choice.label,
            choice.grid_point,
            choice.chosen,
            search.metric,
            choice.score,
            choice.candidates,
        )

    # the chosen configurations on every seed: the final table
    final_runs: list[PlannedRun] = []
    seen: set[str] = set()
    for choice in choices:
        if choice.chosen is None:
            continue
        point = {**choice.grid_point, **choice.chosen}
        for run in expand(spec, [point], role="final", strategies=[choice.label]):
            if run.run_id not in seen:
                seen.add(run.run_id)
                final_runs.append(run)
    store.set_members(
        spec.name, [(r.run_id, r.role, r.point) for r in final_runs], roles=("final",)
    )
    report.table_ids = [r.run_id for r in final_runs]
    run_planned(
        final_runs,
        runner,
        store,
        sweep=spec.name,
        report=report,
        progress=progress,
        description=f"final {spec.name}",
    )
    _write_json(
        spec.directory / "search.json",
        [
            {
                "label": c.label,
                "grid_point": c.grid_point,
                "chosen": c.chosen,
                "metric": f"validation {search.metric}",
                "score": c.score,
                "candidates": c.candidates,
            }
            for c in choices
        ],
    )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
