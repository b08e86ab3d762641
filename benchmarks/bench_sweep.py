"""The sweep runners side by side: serial, local worker processes, and a local Ray.

Protocol: one grid sweep of short CPU-bound runs (default 24: the strategies naive,
EWC and replay x ``optimizer.lr`` in {0.01, 0.05} x 4 seeds, on class-incremental
Split Digits with 5 experiences, an MLP 64-256-256-10, 30 epochs per experience; 1.4
to 2.4 s a run, measured one at a time on a 2-core machine busy with other work), run
by three runners:

- ``serial``: ``LocalRunner(1)``, the runs one after another in the driver process;
- ``parallel``: ``LocalRunner(W)``, W spawned worker processes (W = usable cores);
- ``ray``: a local Ray started for the sweep (``ray.init(num_cpus=W,
  include_dashboard=False)``) and a ``RayRunner`` that joins it.

Every run has 1 torch thread (``sweep.resources.cpus = 1``, hence ``train.threads =
1``, which the run sets with ``torch.set_num_threads``), and every process of the
benchmark starts with ``OMP_NUM_THREADS=1`` and ``MKL_NUM_THREADS=1``.

What is timed. Each sweep runs in a fresh Python process, with its own output folder
and results store, so no run is skipped as finished and no mode inherits what an
earlier sweep warmed up (the runner's per-process dataset cache, the scikit-learn
import behind the digits, the first run's lazy imports). That process imports metacl
and torch before its clock starts, as ``metacl sweep`` does. The clock runs from
building the runner to the end of ``runner.close()``: expanding the grid, the store's
writes, and, for ``parallel``, starting the pool (spawn, and torch imported in each
worker) and shutting it down; for ``ray``, submitting the tasks and fetching their
results. ``ray.init`` (reported on its own line) and ``ray.shutdown`` are outside it.

A run's own wall time is the ``RunOutcome.wall_s`` that ``execute_run`` measures in the
process that runs it: loading the dataset on that process's first run (once per
process in every mode: once in ``serial``, once per worker otherwise), building the
stream and model, training, evaluating, the checkpoint after every experience and the
result files. The overhead per run of a runner is::

    (runner wall time * slots - sum of the runs' own wall times) / runs

the slot time a runner spends on anything but runs: process start-up, scheduling,
transfers, the driver's store writes, and slots idle at the end of the sweep.

The modes alternate, one sweep each per repeat, in an order rotated by one each repeat
(``serial parallel ray``, ``parallel ray serial``, ``ray serial parallel``, ...), so
that a drift of the machine's load over the benchmark favours no mode; the medians over
repeats are reported, since a shared machine is noisy.
The accuracy matrices (``R`` and ``b``) in every sweep's store must be identical.

Goals: overhead under 0.5 s per run; speed-up over serial within 10% of the core count
(at least 1.8x on 2 cores).

Run:
    python benchmarks/bench_sweep.py --repeats 3
    python benchmarks/bench_sweep.py --seeds 1 --epochs 5 --repeats 1  # 6 tiny runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# NOTE: only the standard library at module level. The parallel runner's spawned
# workers import this file again as their main module; torch is imported in the
# sweep's process, inside the functions below.

MODES = ("serial", "parallel", "ray")
OVERHEAD_GOAL_S = 0.5
SPEEDUP_SHARE = 0.9  # speed-up goal: this share of the core count
THREADS = 1
RAY_OBJECT_STORE_BYTES = 100 * 2**20
PUBLIC_OPTIONS = (
    "repeats",
    "modes",
    "seeds",
    "strategies",
    "lrs",
    "epochs",
    "hidden",
    "workers",
    "timeout",
)


def usable_cores() -> int:
    """CPU cores this process may use (as the sweep runner counts them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def sweep_data(
    *,
    strategies: list[str],
    lrs: list[float],
    seeds: int,
    epochs: int,
    hidden: list[int],
) -> dict[str, Any]:
    """The benchmark's sweep as a sweep-file dictionary (output set per sweep)."""
    return {
        "name": "bench-sweep",
        "seeds": list(range(seeds)),
        "dataset": {"name": "digits"},
        "scenario": {"name": "class_incremental", "n_experiences": 5},
        "model": {"name": "mlp", "hidden": list(hidden)},
        "strategies": [{"name": name} for name in strategies],
        "optimizer": {"name": "sgd", "lr": lrs[0], "momentum": 0.9},
        "train": {"epochs": epochs, "batch_size": 32},
        "sweep": {
            "axes": {"optimizer.lr": list(lrs)},
            "resources": {"cpus": THREADS, "gpus": 0},
        },
    }


def planned_runs(data: dict[str, Any]) -> int:
    """Validate the sweep as ``metacl sweep`` does; the number of its runs."""
    from metacl.sweep.spec import expand, sweep_from_dict

    spec = sweep_from_dict({**data, "output": tempfile.gettempdir()})
    return len(expand(spec, spec.grid()))


# ---------------------------------------------------------------------------
# one sweep, in its own process


def measure(mode: str, data: dict[str, Any], output: Path, workers: int) -> dict:
    """Run the sweep once with the runner of ``mode``; its timings and processes."""
    from metacl.sweep.runner import LocalRunner, RayRunner, run_sweep
    from metacl.sweep.spec import sweep_from_dict

    spec = sweep_from_dict({**data, "output": str(output)})
    if spec.base["train"]["threads"] != THREADS:
        raise ValueError(
            f"train.threads = {spec.base['train']['threads']!r}; the benchmark needs "
            f"{THREADS} torch thread per run"
        )

    # a local Ray for this sweep, started before the clock
    ray = None
    ray_init_s = None
    if mode == "ray":
        import ray

        began = time.perf_counter()
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=RAY_OBJECT_STORE_BYTES,
        )
        ray_init_s = time.perf_counter() - began

    # the timed sweep: runner built, every run run and recorded, runner closed
    try:
        began = time.perf_counter()
        if mode == "serial":
            runner = LocalRunner(1)
        elif mode == "parallel":
            runner = LocalRunner(workers, cpus_per_run=spec.resources.cpus)
        else:
            runner = RayRunner("local", cpus=spec.resources.cpus)
        try:
            report = run_sweep(spec, runner=runner)
        finally:
            closing = time.perf_counter()
            runner.close()
        wall_s = time.perf_counter() - began
        close_s = time.perf_counter() - closing
    finally:
        if ray is not None:
            ray.shutdown()

    if report.skipped:
        raise RuntimeError(
            f"{mode}: {report.skipped} runs were skipped as finished; the output "
            f"folder {output} was not fresh"
        )
    if report.failed:
        lines = "\n".join(f"  {k}: {v}" for k, v in report.failed.items())
        raise RuntimeError(f"{mode}: {len(report.failed)} runs failed:\n{lines}")
    return {
        "mode": mode,
        "wall_s": wall_s,
        "sweep_wall_s": report.wall_s,
        "close_s": close_s,
        "ray_init_s": ray_init_s,
        "slots": runner.slots,
        "runs": report.finished,
        "run_wall_s": [o.wall_s for o in report.outcomes],
        "workers": [o.worker for o in report.outcomes],
        "store": str(spec.store),
    }


def sweep_process(args: argparse.Namespace) -> None:
    """The entry point of a sweep's own process: measure, write the result file."""
    data = json.loads(Path(args.sweep_file).read_text())
    result = measure(args.child, data, Path(args.output), args.workers)
    Path(args.result).write_text(json.dumps(result))


def run_in_process(
    mode: str, data_file: Path, output: Path, workers: int, timeout_s: float
) -> dict:
    """Run one sweep in a fresh Python process and read back its measurements."""
    result_file = output.with_suffix(".json")
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--sweep-file",
        str(data_file),
        "--output",
        str(output),
        "--result",
        str(result_file),
        "--workers",
        str(workers),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0 or not result_file.exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"the {mode} sweep failed (exit {done.returncode}):\n{tail}")
    return json.loads(result_file.read_text())


# ---------------------------------------------------------------------------
# numbers from the sweeps


def overhead_per_run(result: dict) -> float:
    """Slot time not spent in runs, per run (see the module docstring)."""
    busy = sum(result["run_wall_s"])
    return (result["wall_s"] * result["slots"] - busy) / result["runs"]


def matrices(store: str) -> dict[str, str]:
    """Run id -> its accuracy matrix and before-training scores, as exact text."""
    from metacl.sweep.store import ResultStore

    with ResultStore(store) as results:
        return {r.run_id: json.dumps([r.R, r.b]) for r in results.records()}


def compare_matrices(results: list[dict]) -> tuple[bool, list[str]]:
    """Whether every sweep's store holds the first one's matrices; the differences."""
    reference = matrices(results[0]["store"])
    problems = []
    for index, result in enumerate(results[1:], start=1):
        other = matrices(result["store"])
        where = f"{result['mode']} (sweep {index + 1})"
        if other.keys() != reference.keys():
            problems.append(f"{where}: other run ids than {results[0]['mode']}")
            continue
        differ = [k for k in reference if other[k] != reference[k]]
        if differ:
            problems.append(f"{where}: {len(differ)} runs differ, e.g. {differ[0]}")
    return not problems, problems


def summarize(results: list[dict], modes: list[str], workers: int) -> dict:
    """Medians per mode, speed-ups over serial and the goals."""
    by_mode = {m: [r for r in results if r["mode"] == m] for m in modes}
    summary: dict[str, Any] = {"modes": {}, "goals": {}}
    for mode, rows in by_mode.items():
        summary["modes"][mode] = {
            "wall_s": statistics.median(r["wall_s"] for r in rows),
            "run_s": statistics.median(sum(r["run_wall_s"]) for r in rows),
            "overhead_s_per_run": statistics.median(overhead_per_run(r) for r in rows),
            "slots": rows[0]["slots"],
            "processes": statistics.median(len(set(r["workers"])) for r in rows),
        }
        if mode == "ray":
            summary["modes"][mode]["ray_init_s"] = statistics.median(
                r["ray_init_s"] for r in rows
            )
    serial = summary["modes"].get("serial")
    for numbers in summary["modes"].values():
        numbers["speedup"] = (
            serial["wall_s"] / numbers["wall_s"] if serial is not None else None
        )

    # goals: overhead per run in every mode, speed-up of the parallel ones
    target = SPEEDUP_SHARE * min(workers, usable_cores())
    for mode, numbers in summary["modes"].items():
        overhead = numbers["overhead_s_per_run"]
        summary["goals"][f"overhead {mode}"] = {
            "value": overhead,
            "goal": f"< {OVERHEAD_GOAL_S} s per run",
            "pass": overhead < OVERHEAD_GOAL_S,
        }
    for mode in ("parallel", "ray"):
        if mode in summary["modes"] and serial is not None:
            speedup = summary["modes"][mode]["speedup"]
            summary["goals"][f"speed-up {mode}"] = {
                "value": speedup,
                "goal": f">= {target:.2f}x",
                "pass": speedup >= target,
            }
    return summary


def print_report(
    results: list[dict], summary: dict, identical: bool, problems: list[str]
) -> None:
    print()
    print(
        f"{'sweep':>5} {'mode':9} {'wall s':>8} {'runs s':>8} {'close s':>8} "
        f"{'slots':>5} {'procs':>5} {'overhead s/run':>14}"
    )
    for index, r in enumerate(results, start=1):
        print(
            f"{index:5} {r['mode']:9} {r['wall_s']:8.2f} {sum(r['run_wall_s']):8.2f} "
            f"{r['close_s']:8.2f} {r['slots']:5} {len(set(r['workers'])):5} "
            f"{overhead_per_run(r):14.3f}"
        )
    print(
        "(wall: runner built to runner closed; runs: the sum of the runs' own wall "
        "times; close: runner.close(), part of wall; procs: processes that ran runs)"
    )

    print()
    print("medians over repeats:")
    print(
        f"{'mode':9} {'wall s':>8} {'runs s':>8} {'speed-up':>9} {'overhead s/run':>14}"
    )
    for mode, n in summary["modes"].items():
        speedup = "n/a" if n["speedup"] is None else f"{n['speedup']:.2f}x"
        print(
            f"{mode:9} {n['wall_s']:8.2f} {n['run_s']:8.2f} {speedup:>9} "
            f"{n['overhead_s_per_run']:14.3f}"
        )
    if "ray" in summary["modes"]:
        ray_init_s = summary["modes"]["ray"]["ray_init_s"]
        print(f"(ray.init, outside the ray wall time: {ray_init_s:.2f} s)")

    print()
    for name, goal in summary["goals"].items():
        unit = "x" if name.startswith("speed-up") else " s/run"
        verdict = "PASS" if goal["pass"] else "FAIL"
        print(
            f"goal {name:18} {goal['value']:7.3f}{unit:6} {goal['goal']:16} {verdict}"
        )
    if identical:
        print(
            f"accuracy matrices: identical in all {len(results)} sweeps "
            f"({results[0]['runs']} runs each)"
        )
    else:
        print("accuracy matrices: DIFFER")
        for line in problems:
            print(f"  {line}")


# ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="sweeps per mode")
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="runners"
    )
    parser.add_argument("--seeds", type=int, default=4, help="seeds per point")
    parser.add_argument("--strategies", nargs="+", default=["naive", "ewc", "replay"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.01, 0.05])
    parser.add_argument("--epochs", type=int, default=30, help="per experience")
    parser.add_argument("--hidden", nargs="+", type=int, default=[256, 256])
    parser.add_argument(
        "--workers", type=int, default=usable_cores(), help="parallel and Ray slots"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="s per sweep")
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    # the sweep's own process (internal)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--sweep-file", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sweep_process(args)
        return 0
    for name in ("repeats", "seeds", "epochs", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} = {getattr(args, name)} must be >= 1")
    modes = list(dict.fromkeys(args.modes))

    data = sweep_data(
        strategies=args.strategies,
        lrs=args.lrs,
        seeds=args.seeds,
        epochs=args.epochs,
        hidden=args.hidden,
    )
    from metacl.errors import ConfigError

    try:
        runs = planned_runs(data)
    except ConfigError as error:
        parser.error(f"the sweep is not valid: {error}")
    cores = usable_cores()
    print(
        f"sweep: {runs} runs = {len(args.strategies)} strategies "
        f"({', '.join(args.strategies)}) x {len(args.lrs)} lr x {args.seeds} seeds; "
        f"digits, class_incremental, 5 experiences, MLP {args.hidden}, "
        f"{args.epochs} epochs"
    )
    print(
        f"{THREADS} torch thread per run; {cores} usable cores; parallel: "
        f"LocalRunner({args.workers}); ray: local Ray num_cpus={args.workers}, joined "
        "by RayRunner; each sweep in a fresh process with a fresh store"
    )
    print(
        f"{args.repeats} repeats, order {' '.join(modes)} rotated by one each repeat; "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )

    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="metacl-bench-sweep-") as tmp:
        data_file = Path(tmp) / "sweep.json"
        data_file.write_text(json.dumps(data))
        for repeat in range(args.repeats):
            shift = repeat % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                output = Path(tmp) / f"{mode}-{repeat}"
                result = run_in_process(
                    mode, data_file, output, args.workers, args.timeout
                )
                if result["runs"] != runs:
                    raise RuntimeError(
                        f"{mode}: {result['runs']} runs finished, {runs} planned"
                    )
                results.append(result)
                print(
                    f"  repeat {repeat + 1} {mode:9} {result['wall_s']:7.2f} s "
                    f"(overhead {overhead_per_run(result):.3f} s/run)",
                    flush=True,
                )
        identical, problems = compare_matrices(results)

    summary = summarize(results, modes, args.workers)
    print_report(results, summary, identical, problems)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")

    if args.json is not None:
        for result in results:
            result.pop("store")
        payload = {
            "settings": {
                "runs": runs,
                "threads_per_run": THREADS,
                "usable_cores": cores,
                **{k: v for k, v in vars(args).items() if k in PUBLIC_OPTIONS},
                "sweep": data,
            },
            "sweeps": results,
            "summary": summary,
            "identical_matrices": identical,
            "matrix_problems": problems,
        }
        args.json.write_text(json.dumps(payload, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
