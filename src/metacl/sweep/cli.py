"""``metacl sweep`` and ``metacl compare``.

``metacl sweep FILE [--set KEY=VALUE] [--workers N | --ray local|auto|ADDRESS]``
    run a sweep file's grid (or search, then final runs), skipping finished runs and
    resuming interrupted ones; ``--dry-run`` lists the runs and their state.
``metacl compare [--store PATH] [--sweep NAME] [--where KEY=VALUE ...]``
    a table of strategies x streams (mean ± 95% CI over seeds) from the results
    store, with ``--csv``, ``--markdown`` and ``--plots`` exports.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from metacl.errors import ConfigError

__all__ = ["add_parser"]

DEFAULT_STORE = Path("runs") / "results.sqlite"


def add_parser(subparsers: Any) -> None:
    """Add the ``sweep`` and ``compare`` subcommands to the ``metacl`` parser."""
    sweep = subparsers.add_parser(
        "sweep",
        help="run a sweep: a grid of runs, in parallel, resumable",
        description="Run every run of a sweep file (a run configuration plus a `sweep` "
        "section with the axes to vary). Finished runs are skipped, interrupted ones "
        "resume from their last finished experience.",
    )
    sweep.add_argument("file", help="sweep file (YAML or TOML)")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set train.epochs=3 "
        "--set sweep.axes.optimizer.lr=[0.01,0.1]",
    )
    sweep.add_argument(
        "--workers",
        type=int,
        help="runs at a time on this machine (default: cores / sweep.resources.cpus)",
    )
    sweep.add_argument(
        "--ray",
        metavar="local|auto|ADDRESS",
        help='run on Ray: "local" starts one here, "auto" joins this machine\'s '
        'cluster, or a cluster address (needs pip install "metacl[ray]")',
    )
    sweep.add_argument("--store", help="results store (default: OUTPUT/results.sqlite)")
    sweep.add_argument(
        "--dry-run", action="store_true", help="list the runs and their state, run none"
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(handler=_sweep)

    compare = subparsers.add_parser(
        "compare",
        help="compare runs recorded in a results store",
        description="A table of strategies x streams from the results store: mean and "
        "95% confidence interval over seeds.",
    )
    compare.add_argument(
        "--store",
        default=str(DEFAULT_STORE),
        help=f"results store (default {DEFAULT_STORE})",
    )
    compare.add_argument("--sweep", help="only the runs of this sweep")
    compare.add_argument(
        "--include-search",
        action="store_true",
        help="with --sweep, also the search candidates (default: final runs only)",
    )
    compare.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose configuration has KEY=VALUE (or KEY!=VALUE), e.g. "
        "--where strategy.name=ewc --where optimizer.lr=0.05",
    )
    compare.add_argument(
        "--numbers",
        default="acc,bwt",
        help="numbers to tabulate: acc, la, bwt, fwt, forgetting, valid_acc "
        "(default acc,bwt)",
    )
    compare.add_argument("--csv", help="write every number to this CSV file")
    compare.add_argument("--markdown", help="write the tables to this Markdown file")
    compare.add_argument("--plots", help="draw the comparison plots into this folder")
    compare.set_defaults(handler=_compare)


def _sweep(args: argparse.Namespace) -> int:
    from metacl.cli import _Bar
    from metacl.sweep.runner import make_runner, run_sweep
    from metacl.sweep.spec import load_sweep

    spec = load_sweep(args.file, args.overrides, store=args.store)
    if args.dry_run:
        _print_plan(spec)
        return 0
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be >= 1")
    runner = make_runner(spec, workers=args.workers, ray=args.ray)
    where = f"Ray ({args.ray})" if args.ray else "local processes"
    print(
        f"metacl sweep {spec.name}: {where}, {runner.slots} runs at a time, "
        f"{spec.resources.cpus} thread(s) each; store {spec.store}"
    )
    try:
        report = run_sweep(
            spec,
            runner=runner,
            progress=None if args.quiet else _Bar(unit="run", leave=True),
        )
    finally:
        runner.close()
    print(
        f"{report.planned} runs: {report.skipped} already finished, {report.finished} "
        f"ran, {len(report.failed)} failed ({report.wall_s:.1f} s)"
    )
    for choice in report.choices:
        point = ", ".join(f"{k}={json.dumps(v)}" for k, v in choice.grid_point.items())
        chosen = (
            ", ".join(f"{k}={json.dumps(v)}" for k, v in choice.chosen.items())
            if choice.chosen is not None
            else "nothing (every candidate failed)"
        )
        score = (
            ""
            if math.isnan(choice.score)
            else f" (validation score {choice.score:.4f})"
        )
        print(
            f"search: {choice.label}{f' at {point}' if point else ''} -> {chosen}{score}"
        )
    for run_id, error in report.failed.items():
        first = error.strip().splitlines()[0] if error.strip() else error
        print(f"failed {run_id}: {first}")
    finished = [report.records[i] for i in report.table_ids if i in report.records]
    if finished:
        from metacl.sweep.compare import compare, format_table

        print()
        print(format_table(compare(finished), "acc"))
    print(f"\nresults: metacl compare --store {spec.store} --sweep {spec.name}")
    return 0 if report.ok else 1


def _print_plan(spec: Any) -> None:
    from metacl.experiment import CHECKPOINT, RESULT
    from metacl.sweep.spec import expand
    from metacl.sweep.store import ResultStore

    if spec.search is None:
        runs = expand(spec, spec.grid(), role="grid")
    else:
        runs = expand(
            spec, spec.grid(spec.search.axes), seeds=spec.search.seeds, role="search"
        )
    done: set[str] = set()
    if spec.store is not None and spec.store.exists():
        with ResultStore(spec.store) as store:
            done = store.finished(r.run_id for r in runs)
    print(f"sweep {spec.name}: {len(runs)} {'search ' if spec.search else ''}runs")
    for run in runs:
        if run.run_id in done or (run.directory / RESULT).exists():
            state = "finished"
        elif (run.directory / CHECKPOINT).exists():
            state = "interrupted (resumes)"
        else:
            state = "to run"
        print(f"  {run.run_id}  {state:<22} {run.describe()}")
    if spec.search is not None:
        print(
            f"then the configuration chosen on validation {spec.search.metric} for each "
            f"strategy runs on seeds {spec.seeds}"
        )


def _compare(args: argparse.Namespace) -> int:
    from metacl.sweep.compare import (
        NUMBERS,
        compare,
        format_table,
        markdown,
        parse_where,
        plot_comparison,
        select,
        write_csv,
    )
    from metacl.sweep.store import ResultStore

    numbers = [n.strip() for n in args.numbers.split(",") if n.strip()]
    unknown = [n for n in numbers if n not in NUMBERS]
    if unknown or not numbers:
        raise ConfigError(
            f"--numbers {args.numbers!r}: choose among {', '.join(NUMBERS)}"
        )
    path = Path(args.store)
    if not path.exists():
        raise ConfigError(
            f"no results store at {str(path)!r}; run `metacl run` or `metacl sweep` "
            "first, or give --store PATH"
        )
    where = parse_where(args.where)
    with ResultStore(path) as store:
        if args.sweep is not None:
            if args.sweep not in store.sweeps():
                raise ConfigError(
                    f"--sweep {args.sweep!r} has no runs in {str(path)!r}; sweeps there: "
                    f"{', '.join(store.sweeps()) or 'none'}"
                )
            roles = None if args.include_search else ("grid", "final")
            records = store.records(sweep=args.sweep, roles=roles)
        else:
            records = store.records()
    table = compare(select(records, where))
    print(f"{sum(c.n for c in table.cells.values())} runs from {path}")
    for number in numbers:
        print()
        print(format_table(table, number))
    if args.csv:
        print(f"\nCSV: {write_csv(table, args.csv)}")
    if args.markdown:
        target = Path(args.markdown)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(markdown(table, numbers))
        print(f"Markdown: {target}")
    if args.plots:
        for plot in plot_comparison(table, args.plots):
            print(f"plot: {plot}")
    return 0
