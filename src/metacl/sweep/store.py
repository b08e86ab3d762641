"""The results store: every finished run, recorded in one embedded SQLite file.

A record holds what is needed to compare runs later without their directories: the
run's configuration (the part that determines its result, see
:meth:`metacl.config.RunConfig.single_run`), the accuracy matrix ``R``, the
before-training scores ``b``, the validation matrix when the stream has a validation
split, the derived numbers, timings, the code version and the environment. Records are
keyed by the run id, the hash of that configuration
(:func:`metacl.config.config_hash`): the same configuration and seed give the same
matrix, so a run recorded twice keeps one record (the latest).

Note [store concurrency]: several processes (the runs of ``metacl run``, the drivers of
several sweeps) may write one store at the same time. Every write is one transaction
opened with ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two writers never
deadlock upgrading a read lock), the database is in WAL mode (readers never block the
writer) with ``synchronous = NORMAL`` (a killed process loses nothing committed; only
a power cut may roll back the last transactions), and a writer that finds the lock
taken waits up to ``timeout_s`` for it. A process killed mid-transaction leaves the
database as it was before that transaction. WAL needs shared memory between the
processes, so the store must live on a local file system, not a network share.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "results.sqlite"
    >>> with ResultStore(path) as store:
    ...     store.record(RunRecord(run_id="abc", config={"seed": 0}, label="naive",
    ...         strategy="naive", seed=0, stream="s", R=[[1.0]], b=[0.1]))
    ...     [r.metrics["acc"] for r in store.records()]
    [1.0]
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import math
import os
import platform
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metacl.errors import MetaclError

__all__ = [
    "StoreError",
    "RunRecord",
    "ResultStore",
    "record_from_result",
    "code_version",
    "environment",
    "flatten",
    "STORE_FILE",
]

logger = logging.getLogger(__name__)

STORE_FILE = "results.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    strategy TEXT NOT NULL,
    seed INTEGER NOT NULL,
    dataset TEXT,
    scenario TEXT,
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    R TEXT NOT NULL,
    b TEXT NOT NULL,
    R_valid TEXT,
    acc REAL,
    la REAL,
    bwt REAL,
    fwt REAL,
    forgetting REAL,
    valid_acc REAL,
    metrics TEXT NOT NULL,
    timings TEXT NOT NULL,
    wall_s REAL,
    code_version TEXT NOT NULL,
    environment TEXT NOT NULL,
    directory TEXT,
    recorded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL,
    run_id TEXT NOT NULL,
    role TEXT NOT NULL,
    point TEXT NOT NULL,
    PRIMARY KEY (sweep, run_id, role)
);
CREATE TABLE IF NOT EXISTS searches (
    sweep TEXT NOT NULL,
    label TEXT NOT NULL,
    grid_point TEXT NOT NULL,
    chosen TEXT NOT NULL,
    metric TEXT NOT NULL,
    score REAL,
    candidates TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (sweep, label, grid_point)
);
CREATE INDEX IF NOT EXISTS runs_by_label ON runs (label, seed);
"""


class StoreError(MetaclError):
    """The results store cannot be opened, read or written."""


@dataclass
class RunRecord:
    """One finished run as the store keeps it.

    ``config`` is the run's configuration as given by
    :meth:`metacl.config.RunConfig.single_run` (seed, dataset, scenario, model,
    strategy with its label, optimizer, train); every key of it can be filtered on.
    """

    run_id: str
    config: dict[str, Any]
    label: str
    strategy: str
    seed: int
    stream: str
    R: list[list[float]]
    b: list[float]
    R_valid: list[list[float]] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    kind: str = "classification"
    name: str = ""
    wall_s: float = math.nan
    directory: str | None = None
    code_version: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    recorded_at: str = ""

    def __post_init__(self) -> None:
        if not self.metrics:
            from metacl.metrics import derived_metrics

            self.metrics = derived_metrics(self.R, self.b)

    @property
    def valid_acc(self) -> float:
        """Final average accuracy on the validation split (NaN without one)."""
        if not self.R_valid:
            return math.nan
        row = [v for v in self.R_valid[-1] if not math.isnan(v)]
        return sum(row) / len(row) if row else math.nan

    @property
    def valid_la(self) -> float:
        """Learning accuracy (mean of the diagonal) on the validation split."""
        if not self.R_valid or len(self.R_valid) != len(self.R_valid[0]):
            return math.nan
        diagonal = [self.R_valid[i][i] for i in range(len(self.R_valid))]
        diagonal = [v for v in diagonal if not math.isnan(v)]
        return sum(diagonal) / len(diagonal) if diagonal else math.nan

    def flat_config(self) -> dict[str, Any]:
        """The configuration flattened to dotted keys (``strategy.name``), plus
        ``name``, ``run_id`` and ``code_version``."""
        flat = flatten(self.config)
        flat.update(
            {
                "name": self.name,
                "run_id": self.run_id,
                "code_version": self.code_version,
            }
        )
        return flat


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; lists stay values.

    Example:
        >>> flatten({"strategy": {"name": "ewc", "lambda_": 10.0}, "seed": 0})
        {'strategy.name': 'ewc', 'strategy.lambda_': 10.0, 'seed': 0}
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@functools.cache
def code_version() -> str:
    """The package version, with ``git describe`` when metacl runs from a checkout.

    Example: ``0.1.0+git.787f3ae-dirty``. Only the checkout that holds this very
    package is described, never an unrelated repository around a virtual environment.
    """
    import metacl

    version = metacl.__version__
    package = Path(metacl.__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args],
                cwd=package,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / "src" / "metacl" != package:
        return version
    described = git("describe", "--always", "--dirty", "--tags")
    return f"{version}+git.{described}" if described else version


def environment() -> dict[str, str]:
    """Where a run ran: versions, host, processor count, torch threads, GPU."""
    import numpy
    import torch

    import metacl

    env = {
        "metacl": metacl.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
    return env


def record_from_result(
    result: Any,
    config: dict[str, Any],
    *,
    name: str = "",
    directory: str | Path | None = None,
    wall_s: float = math.nan,
    run_environment: dict[str, str] | None = None,
) -> RunRecord:
    """A :class:`RunRecord` from a :class:`metacl.experiment.SeedResult` (or its dict).

    Args:
        result: The run's result.
        config: Its configuration, ``RunConfig.single_run(strategy_index, seed)``.
        name: The experiment or sweep name.
        directory: The run's directory (checkpoint, result.json), if any.
        wall_s: Wall-clock seconds of the run, including data loading.
        run_environment: Where the run ran, taken in the process that ran it
            (default: this process's :func:`environment`).
    """
    data = result if isinstance(result, dict) else result.to_dict()
    where = run_environment if run_environment is not None else environment()
    return RunRecord(
        run_id=data["config_hash"],
        config=json.loads(json.dumps(config, default=str)),
        label=data["label"],
        strategy=data["strategy"],
        seed=data["seed"],
        stream=data["stream"],
        R=data["R"],
        b=data["b"],
        R_valid=data.get("R_valid"),
        metrics=dict(data["metrics"]),
        timings=dict(data["timings"]),
        kind=data.get("kind", "classification"),
        name=name,
        wall_s=wall_s,
        directory=str(directory) if directory is not None else None,
        code_version=code_version(),
        environment=dict(where),
    )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _real(value: float | None) -> float | None:
    # SQLite stores NaN as NULL anyway; say so explicitly
    return None if value is None or math.isnan(value) else float(value)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


class ResultStore:
    """An SQLite results store, safe for concurrent writers (Note [store concurrency]).

    Args:
        path: The database file; created with its folder if missing.
        timeout_s: How long a writer waits for another writer's lock.

    Raises:
        StoreError: The file is not a metacl store, or cannot be opened or written.
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None
            )
        except (OSError, sqlite3.Error) as error:
            raise StoreError(
                f"cannot open the results store {str(self.path)!r}: {error}; give a "
                "writable path (--store PATH, or `store:` in the configuration)"
            ) from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            mode = self._retry(
                lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            )
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"the results store {str(self.path)!r} cannot use write-ahead "
                    f"logging (journal mode {mode!r}); keep it on a local disk, not "
                    "a network share"
                )
            self._conn.execute("PRAGMA synchronous = NORMAL")
            with self._write():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                row = self._conn.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()
                if row is None:
                    self._conn.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
                elif int(row[0]) > SCHEMA_VERSION:
                    raise StoreError(
                        f"{str(self.path)!r} was written by a newer metacl (schema "
                        f"{row[0]}, this one reads {SCHEMA_VERSION}); upgrade metacl"
                    )
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise StoreError(
                f"{str(self.path)!r} is not a usable metacl results store ({error}); "
                "give another path or move the file away"
            ) from None
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing ---------------------------------------------------------------

    def _retry(self, action: Any) -> Any:
        # NOTE: busy_timeout covers most waits; switching a brand-new file to WAL can
        # still report "locked" at once while another process creates it.
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return action()
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def _write(self, what: str = "records") -> Iterator[sqlite3.Connection]:
        """One write transaction; a failure anywhere in it, the commit included,
        rolls it back (if SQLite has not already) and is raised as a StoreError that
        names ``what`` was being written."""
        try:
            self._retry(lambda: self._conn.execute("BEGIN IMMEDIATE"))
            try:
                yield self._conn
                self._retry(lambda: self._conn.execute("COMMIT"))
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise StoreError(
                f"cannot write {what} to the results store {str(self.path)!r}: "
                f"{error}; the runs' own files are kept, run again to record them"
            ) from None

    def close(self) -> None:
        """Close the connection (records are already committed)."""
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------

    def record(
        self,
        record: RunRecord,
        *,
        sweep: str | None = None,
        role: str = "grid",
        point: dict[str, Any] | None = None,
    ) -> None:
        """Write one finished run in one transaction (replacing an older record of
        the same run id), and its membership of ``sweep`` when given."""
        record.recorded_at = record.recorded_at or _now()
        config = record.config
        values = (
            record.run_id,
            record.name,
            record.label,
            record.strategy,
            int(record.seed),
            (config.get("dataset") or {}).get("name"),
            (config.get("scenario") or {}).get("name"),
            record.stream,
            record.kind,
            json.dumps(config, sort_keys=True),
            json.dumps(record.R),
            json.dumps(record.b),
            json.dumps(record.R_valid) if record.R_valid else None,
            _real(record.metrics.get("acc")),
            _real(record.metrics.get("la")),
            _real(record.metrics.get("bwt")),
            _real(record.metrics.get("fwt")),
            _real(record.metrics.get("forgetting")),
            _real(record.valid_acc),
            json.dumps(record.metrics),
            json.dumps(record.timings),
            _real(record.wall_s),
            record.code_version,
            json.dumps(record.environment, sort_keys=True),
            record.directory,
            record.recorded_at,
        )
        with self._write(f"run {record.run_id}") as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO runs VALUES ({', '.join('?' * len(values))})",
                values,
            )
            if sweep is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO sweep_runs VALUES (?, ?, ?, ?)",
                    (sweep, record.run_id, role, json.dumps(point or {})),
                )
        logger.debug("recorded run %s in %s", record.run_id, self.path)

    def set_members(
        self,
        sweep: str,
        members: Iterable[tuple[str, str, dict[str, Any]]],
        *,
        roles: tuple[str, ...],
    ) -> None:
        """Make ``members`` (run id, role, axis point) the runs of ``sweep`` in
        ``roles``, in one transaction: a sweep file edited since its last run no
        longer lists the runs it dropped."""
        rows = [
            (sweep, run_id, role, json.dumps(point)) for run_id, role, point in members
        ]
        with self._write() as conn:
            conn.executemany(
                "DELETE FROM sweep_runs WHERE sweep = ? AND role = ?",
                [(sweep, role) for role in roles],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO sweep_runs VALUES (?, ?, ?, ?)", rows
            )

    def record_search(
        self,
        sweep: str,
        label: str,
        grid_point: dict[str, Any],
        chosen: dict[str, Any],
        metric: str,
        score: float,
        candidates: list[dict[str, Any]],
    ) -> None:
        """Keep the outcome of one hyperparameter search (which point won, and the
        validation score of every candidate)."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO searches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sweep,
                    label,
                    json.dumps(grid_point, sort_keys=True),
                    json.dumps(chosen, sort_keys=True),
                    metric,
                    _real(score),
                    json.dumps(candidates),
                    _now(),
                ),
            )

    # -- reading ----------------------------------------------------------------

    def finished(self, run_ids: Iterable[str]) -> set[str]:
        """Which of ``run_ids`` have a record."""
        ids = list(run_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self._conn.execute(
                f"SELECT run_id FROM runs WHERE run_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            found.update(r[0] for r in rows)
        return found

    def get(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id``, or None."""
        rows = self._select("WHERE run_id = ?", (run_id,))
        return rows[0] if rows else None

    def records(
        self, *, sweep: str | None = None, roles: tuple[str, ...] | None = None
    ) -> list[RunRecord]:
        """Every record, or those of ``sweep`` (optionally only in ``roles``), in the
        order they were recorded."""
        if sweep is None:
            return self._select("", ())
        where = "WHERE run_id IN (SELECT run_id FROM sweep_runs WHERE sweep = ?"
        params: list[Any] = [sweep]
        if roles:
            where += f" AND role IN ({', '.join('?' * len(roles))})"
            params += list(roles)
        return self._select(where + ")", tuple(params))

    def sweeps(self) -> list[str]:
        """The names of the sweeps that have runs in this store."""
        rows = self._conn.execute(
            "SELECT DISTINCT sweep FROM sweep_runs ORDER BY sweep"
        ).fetchall()
        return [r[0] for r in rows]

    def searches(self, sweep: str) -> list[dict[str, Any]]:
        """The search outcomes of ``sweep``."""
        rows = self._conn.execute(
            "SELECT label, grid_point, chosen, metric, score, candidates FROM searches "
            "WHERE sweep = ? ORDER BY label, grid_point",
            (sweep,),
        ).fetchall()
        return [
            {
                "label": label,
                "grid_point": json.loads(grid),
                "chosen": json.loads(chosen),
                "metric": metric,
                "score": _number(score),
                "candidates": json.loads(candidates),
            }
            for label, grid, chosen, metric, score, candidates in rows
        ]

    def _select(self, where: str, params: tuple[Any, ...]) -> list[RunRecord]:
        try:
            rows = self._conn.execute(
                "SELECT run_id, name, label, strategy, seed, stream, kind, config, R, b, "
                "R_valid, metrics, timings, wall_s, code_version, environment, "
                f"directory, recorded_at FROM runs {where} ORDER BY rowid",
                params,
            ).fetchall()
        except sqlite3.Error as error:
            raise StoreError(f"cannot read {str(self.path)!r}: {error}") from None
        out = []
        for row in rows:
            (run_id, name, label, strategy, seed, stream, kind, config, R, b) = row[:10]
            (R_valid, metrics, timings, wall_s, version, env, directory, at) = row[10:]
            out.append(
                RunRecord(
                    run_id=run_id,
                    config=json.loads(config),
                    label=label,
                    strategy=strategy,
                    seed=seed,
                    stream=stream,
                    R=json.loads(R),
                    b=json.loads(b),
                    R_valid=json.loads(R_valid) if R_valid else None,
                    metrics=json.loads(metrics),
                    timings=json.loads(timings),
                    kind=kind,
                    name=name,
                    wall_s=_number(wall_s),
                    directory=directory,
                    code_version=version,
                    environment=json.loads(env),
                    recorded_at=at,
                )
            )
        return out
