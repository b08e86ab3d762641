"""Comparisons from the results store: tables of strategies x streams, and plots.

Runs are grouped by their configuration without the seed. A **row** is a learner
(model, strategy, optimizer, training settings), titled by the strategy's label plus
the settings that tell apart rows of the same label (``naive [optimizer.lr=0.05]``); a
**column** is a stream (dataset and scenario settings), titled ``scenario(dataset)``
plus the settings that tell apart columns of the same title. A cell holds the mean and
the 95% confidence interval over seeds (Student's t, :func:`metacl.metrics.mean_ci`)
of one number: ACC, LA, BWT, FWT, forgetting, or the validation accuracy.

Filters (``strategy.name=ewc``, ``optimizer.lr!=0.1``) apply to any key of a run's
configuration (see :meth:`RunRecord.flat_config`) and to ``name``, ``run_id`` and
``code_version``; values are read as YAML (``0.1`` is a number, ``[64]`` a list).

Example:
    >>> rec = lambda seed, acc: RunRecord(run_id=f"r{seed}", config={"seed": seed,
    ...     "dataset": {"name": "digits"}, "scenario": {"name": "class_incremental"},
    ...     "strategy": {"name": "naive", "label": "naive"}}, label="naive",
    ...     strategy="naive", seed=seed, stream="", R=[[acc]], b=[0.1])
    >>> table = compare([rec(0, 0.8), rec(1, 0.9)])
    >>> table.rows, table.columns
    (['naive'], ['class_incremental(digits)'])
    >>> round(table.cell("naive", "class_incremental(digits)", "acc").mean, 2)
    0.85
"""

from __future__ import annotations

import csv
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metacl.errors import ConfigError
from metacl.metrics import mean_ci
from metacl.sweep.store import RunRecord

__all__ = [
    "NUMBERS",
    "Condition",
    "Cell",
    "Comparison",
    "parse_where",
    "select",
    "compare",
    "format_table",
    "markdown",
    "write_csv",
    "plot_comparison",
]

# number -> (title, how to read it from a record)
NUMBERS: dict[str, str] = {
    "acc": "ACC",
    "la": "LA",
    "bwt": "BWT",
    "fwt": "FWT",
    "forgetting": "Forgetting",
    "valid_acc": "validation ACC",
}
_STREAM_SECTIONS = ("dataset", "scenario")


@dataclass(frozen=True)
class Condition:
    """One filter: ``key=value`` or ``key!=value``."""

    key: str
    value: Any
    equal: bool = True

    def holds(self, flat: dict[str, Any]) -> bool:
        same = _canonical(flat.get(self.key)) == _canonical(self.value)
        return same if self.equal else not same


def _canonical(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(float(value))
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, sort_keys=True, default=str)


def parse_where(items: list[str]) -> list[Condition]:
    """``["strategy.name=ewc", "seed!=0"]`` -> conditions.

    Raises:
        ConfigError: An item without ``=``.
    """
    conditions = []
    for item in items:
        if "!=" in item:
            key, _, raw = item.partition("!=")
            equal = False
        else:
            key, sep, raw = item.partition("=")
            equal = True
            if not sep:
                key = ""
        key = key.strip()
        if not key:
            raise ConfigError(
                f"--where {item!r} must look like KEY=VALUE or KEY!=VALUE, e.g. "
                "strategy.name=ewc"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        conditions.append(Condition(key, value, equal))
    return conditions


def select(records: list[RunRecord], where: list[Condition]) -> list[RunRecord]:
    """The records every condition holds for.

    Raises:
        ConfigError: A condition names a key no record has; the message lists them.
    """
    flats = [r.flat_config() for r in records]
    known = sorted({k for flat in flats for k in flat})
    for condition in where:
        if records and condition.key not in known:
            raise ConfigError(
                f"--where {condition.key!r}: no run has this key; valid keys: "
                f"{', '.join(known)}"
            )
    return [
        r
        for r, flat in zip(records, flats, strict=True)
        if all(c.holds(flat) for c in where)
    ]


@dataclass
class Cell:
    """The seeds of one (row, column) and the mean and CI of each number."""

    records: list[RunRecord]
    numbers: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.records)

    def mean(self, number: str) -> float:
        return self.numbers[number][0]

    def ci95(self, number: str) -> float:
        return self.numbers[number][1]


@dataclass
class _View:
    mean: float
    ci95: float
    n: int


@dataclass
class Comparison:
    """Rows (learners) x columns (streams) of cells."""

    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]

    def cell(self, row: str, column: str, number: str) -> _View:
        """Mean, CI half-width and seed count of ``number`` in one cell."""
        c = self.cells[(row, column)]
        return _View(c.mean(number), c.ci95(number), c.n)


def _value(record: RunRecord, number: str) -> float:
    if number == "valid_acc":
        return record.valid_acc
    value = record.metrics.get(number, math.nan)
    return math.nan if value is None else float(value)


def _titles(
    keys: list[str], base: dict[str, str], flats: dict[str, dict]
) -> dict[str, str]:
    """Title each key by its base title plus the settings that differ among keys of
    the same base title."""
    titles = {}
    for key in keys:
        same = [k for k in keys if base[k] == base[key]]
        if len(same) == 1:
            titles[key] = base[key]
            continue
        differing = sorted(
            name
            for name in {n for k in same for n in flats[k]}
            if len({_canonical(flats[k].get(name)) for k in same}) > 1
        )
        detail = ", ".join(
            f"{name}={json.dumps(flats[key].get(name), default=str)}"
            for name in differing
        )
        titles[key] = f"{base[key]} [{detail}]"
    return titles


def compare(records: list[RunRecord]) -> Comparison:
    """Group records into rows x columns and compute every number's mean and CI.

    Raises:
        ConfigError: No records.
    """
    if not records:
        raise ConfigError(
            "no finished runs to compare; run `metacl run` or `metacl sweep` first, "
            "or loosen --where / --sweep"
        )
    row_of, col_of = {}, {}
    row_flat, col_flat, row_base, col_base = {}, {}, {}, {}
    for r in records:
        config = {k: v for k, v in r.config.items() if k != "seed"}
        stream = {k: config.get(k) for k in _STREAM_SECTIONS}
        learner = {k: v for k, v in config.items() if k not in _STREAM_SECTIONS}
        row = json.dumps(learner, sort_keys=True, default=str)
        col = json.dumps(stream, sort_keys=True, default=str)
        row_of[r.run_id], col_of[r.run_id] = row, col
        row_flat[row], col_flat[col] = _flatten(learner), _flatten(stream)
        row_base[row] = r.label
        dataset = (stream.get("dataset") or {}).get("name", "?")
        scenario = (stream.get("scenario") or {}).get("name", "?")
        col_base[col] = f"{scenario}({dataset})"
    rows = list(dict.fromkeys(row_of[r.run_id] for r in records))
    cols = list(dict.fromkeys(col_of[r.run_id] for r in records))
    row_title = _titles(rows, row_base, row_flat)
    col_title = _titles(cols, col_base, col_flat)

    cells: dict[tuple[str, str], Cell] = {}
    for r in records:
        key = (row_title[row_of[r.run_id]], col_title[col_of[r.run_id]])
        cells.setdefault(key, Cell([])).records.append(r)
    for cell in cells.values():
        cell.records.sort(key=lambda r: r.seed)
        for number in NUMBERS:
            cell.numbers[number] = mean_ci([_value(r, number) for r in cell.records])
    return Comparison([row_title[k] for k in rows], [col_title[k] for k in cols], cells)


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    from metacl.sweep.store import flatten

    return flatten(data)


def _text(view: _View | None, *, with_n: bool = True) -> str:
    if view is None or math.isnan(view.mean):
        return "-"
    text = f"{view.mean:.4f}"
    if not math.isnan(view.ci95):
        text += f" ± {view.ci95:.4f}"
    return text + (f" (n={view.n})" if with_n else "")


def _grid(table: Comparison, number: str) -> tuple[list[str], list[list[str]]]:
    header = [f"{NUMBERS[number]} \\ stream"] + table.columns
    body = []
    for row in table.rows:
        line = [row]
        for col in table.columns:
            view = table.cell(row, col, number) if (row, col) in table.cells else None
            line.append(_text(view))
        body.append(line)
    return header, body


def format_table(table: Comparison, number: str = "acc") -> str:
    """A plain-text table of one number: mean ± 95% CI (n = seeds)."""
    header, body = _grid(table, number)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
        for line in body
    ]
    return "\n".join(lines)


def markdown(table: Comparison, numbers: list[str]) -> str:
    """Markdown tables, one per number."""
    parts = [
        "Mean ± 95% confidence interval over seeds (Student's t); n = seeds. "
        "Numbers as defined in metacl.metrics."
    ]
    for number in numbers:
        header, body = _grid(table, number)
        parts.append(f"\n### {NUMBERS[number]}\n")
        parts.append("| " + " | ".join(h.replace("|", "\\|") for h in header) + " |")
        parts.append("|" + "---|" * len(header))
        parts += [
            "| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
            for line in body
        ]
    return "\n".join(parts) + "\n"


def write_csv(table: Comparison, path: str | Path) -> Path:
    """One line per (row, stream, number): mean, ci95, seeds, run ids."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["strategy", "stream", "number", "mean", "ci95", "n_seeds", "seeds"]
        )
        for row in table.rows:
            for col in table.columns:
                if (row, col) not in table.cells:
                    continue
                cell = table.cells[(row, col)]
                seeds = " ".join(str(r.seed) for r in cell.records)
                for number in NUMBERS:
                    mean, half = cell.numbers[number]
                    writer.writerow([row, col, number, mean, half, cell.n, seeds])
    return path


def _seen_accuracy(record: RunRecord) -> list[float]:
    """Mean accuracy on the experiences seen so far, after each experience."""
    R = record.R
    if len(R) == 1:  # joint training: one row after all experiences
        return [sum(R[0]) / len(R[0])]
    return [sum(R[i][: i + 1]) / (i + 1) for i in range(len(R))]


def plot_comparison(table: Comparison, directory: str | Path) -> list[Path]:
    """Draw ``acc_bwt.png`` (bars with 95% CI per stream) and
    ``accuracy_over_experiences.png`` (mean accuracy on the experiences seen so far,
    with its CI over seeds, one panel per stream)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    n_rows, n_cols = len(table.rows), len(table.columns)

    # ACC and BWT bars, grouped by stream
    names = [textwrap.fill(c, 30) for c in table.columns]
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 1.5 + 2.5 * n_cols), 7.5))
    width = 0.8 / max(n_rows, 1)
    for ax, number in zip(axes, ("acc", "bwt"), strict=True):
        for i, row in enumerate(table.rows):
            means, errors, xs = [], [], []
            for j, col in enumerate(table.columns):
                if (row, col) not in table.cells:
                    continue
                mean, half = table.cells[(row, col)].numbers[number]
                if math.isnan(mean):
                    continue
                xs.append(j - 0.4 + width * (i + 0.5))
                means.append(mean)
                errors.append(0.0 if math.isnan(half) else half)
            ax.bar(xs, means, width, yerr=errors, capsize=3, label=row)
        ax.set_xticks(range(n_cols))
        ax.set_xlim(-0.5, n_cols - 0.5)
        ax.set_xticklabels(names, fontsize=7)
        ax.set_title(f"{NUMBERS[number]} (mean, 95% CI over seeds)", fontsize=9)
        ax.axhline(0.0, color="black", linewidth=0.5)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = directory / "acc_bwt.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    # mean accuracy on the experiences seen so far, per stream
    fig, axes = plt.subplots(1, n_cols, figsize=(4.5 * n_cols, 3.6), squeeze=False)
    for ax, col in zip(axes[0], table.columns, strict=True):
        for row in table.rows:
            if (row, col) not in table.cells:
                continue
            curves = [_seen_accuracy(r) for r in table.cells[(row, col)].records]
            if len(curves[0]) == 1:  # joint: a level, not a curve
                mean, _ = mean_ci([c[0] for c in curves])
                ax.axhline(
                    mean, linestyle="--", color="grey", label=f"{row} (all data)"
                )
                continue
            length = min(len(c) for c in curves)
            stats = [mean_ci([c[i] for c in curves]) for i in range(length)]
            means = [m for m, _ in stats]
            halves = [0.0 if math.isnan(h) else h for _, h in stats]
            ax.errorbar(
                range(length), means, yerr=halves, marker="o", capsize=3, label=row
            )
        ax.set_xlabel("after training on experience")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean accuracy on experiences seen")
        ax.set_title(textwrap.fill(col, 50), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = directory / "accuracy_over_experiences.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths
