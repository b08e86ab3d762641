"""The ``metacl`` command line.

``metacl run [CONFIG] [--set key=value ...]``  run an experiment (default: a short one
                                               on an embedded dataset)
``metacl list``                                datasets, scenarios, models, strategies
``metacl report DIR [DIR ...]``                rebuild a report, or compare runs
``metacl meta-train ...``                      meta-train MAML and its family
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from metacl.errors import MetaclError

__all__ = ["main", "build_parser"]


class _Bar:
    """A tqdm progress bar, as the runner's ``Progress``: one per experience (batches)
    for ``metacl run``, one over the runs for ``metacl sweep``."""

    def __init__(self, *, unit: str = "batch", leave: bool = False) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = None
        self._unit = unit
        self._leave = leave

    def begin(self, description: str, total: int) -> None:
        self._bar = self._tqdm(
            total=total,
            desc=description,
            unit=self._unit,
            leave=self._leave,
            dynamic_ncols=True,
        )

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metacl",
        description="Continual learning seen from meta-learning, on PyTorch.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run an experiment")
    run.add_argument(
        "config",
        nargs="?",
        help="YAML or TOML configuration (default: the built-in short experiment)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set train.epochs=3 --set strategies.0.name=naive",
    )
    run.add_argument("--strategies", help="comma-separated strategy names to run")
    run.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    run.add_argument("--data-dir", help="where dataset files are (else $METACL_DATA)")
    run.add_argument("--out", help="run directory (default: OUTPUT/NAME)")
    run.add_argument(
        "--restart", action="store_true", help="ignore finished work in the directory"
    )
    run.add_argument("--no-report", action="store_true", help="skip plots and report")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("list", help="list datasets, scenarios, models and strategies")

    report = sub.add_parser("report", help="rebuild a run's report or compare runs")
    report.add_argument("directories", nargs="+", help="run directories")
    report.add_argument("--out", help="where a comparison goes")

    # commands that live beside their subsystem: each module's add_parser adds its
    # subcommands, and sets `handler` on those that do not go through _dispatch
    import importlib

    for module in ("metacl.meta.cli", "metacl.sweep.cli"):
        try:
            part = importlib.import_module(module)
        except ModuleNotFoundError:  # pragma: no cover - subsystem absent
            continue
        if hasattr(part, "add_parser"):
            part.add_parser(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    from metacl.config import (
        apply_overrides,
        default_config,
        load_config_file,
        resolve_config,
    )
    from metacl.experiment import run_experiment
    from metacl.report import format_table, write_report

    data = load_config_file(args.config) if args.config else default_config()
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"dataset.root={args.data_dir}")
    data = apply_overrides(data, overrides)
    if args.strategies:
        data.pop("strategy", None)
        data["strategies"] = [{"name": s.strip()} for s in args.strategies.split(",")]
    if args.seeds:
        try:
            data["seeds"] = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise MetaclError(
                f"--seeds {args.seeds!r} must be integers like 0,1,2"
            ) from None
    config = resolve_config(data)
    directory = Path(args.out) if args.out else Path(config.output) / config.name

    print(
        f"metacl run {config.name}: {', '.join(config.labels)} on "
        f"{config.scenario['name']}({config.dataset['name']}), seeds {config.seeds}"
    )
    progress = None if args.quiet else _Bar()
    result = run_experiment(
        config, directory=directory, resume=not args.restart, progress=progress
    )
    print(result.results[0].stream)
    print()
    print(format_table([result]))
    print()
    if not args.no_report:
        report = write_report([directory])
        print(f"report: {report} (and report.html), plots in {report.parent / 'plots'}")
    print(f"results: {directory}")
    return 0


def _list() -> int:
    import metacl.data  # noqa: F401
    import metacl.models  # noqa: F401
    import metacl.strategies  # noqa: F401
    from metacl.data.base import DATASETS
    from metacl.data.scenarios import SCENARIOS
    from metacl.models.base import MODELS
    from metacl.registry import Registry
    from metacl.strategies.base import STRATEGIES

    registries: list[tuple[str, Registry]] = [
        ("datasets", DATASETS),
        ("scenarios", SCENARIOS),
        ("models", MODELS),
        ("strategies", STRATEGIES),
    ]
    from metacl.meta.algorithms import META_ALGORITHMS

    registries.append(("meta-learning algorithms", META_ALGORITHMS))
    for title, registry in registries:
        print(f"{title}:")
        for entry in registry:
            print(f"  {entry.name:<20} {entry.summary}")
            settings = ", ".join(p.describe() for p in entry.params.values())
            if settings:
                print(f"  {'':<20}   settings: {settings}")
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the terminal shows warnings (details with -v); run.log always gets details
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("metacl").setLevel(logging.INFO)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "list":
            return _list()
        if args.command == "report":
            from metacl.report import write_report

            path = write_report(args.directories, args.out)
            print(f"report: {path} (and report.html)")
            return 0
        if getattr(args, "handler", None) is not None:
            return args.handler(args)
        if args.command == "meta-train":
            from metacl.meta import cli as meta_cli

            return meta_cli.run(args)
        parser.print_help()
        return 2
    except MetaclError as error:
        print(f"metacl: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``metacl list | head``): stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except KeyboardInterrupt:
        print(
            "metacl: interrupted; run the same command again to resume", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
