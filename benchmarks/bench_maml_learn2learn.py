"""MAML on sine-wave regression: metacl against learn2learn, side by side.

The protocol of Finn et al. (2017): an MLP 1-40-40-1 (ReLU), K = 10 support and 10 query
points per wave, one inner SGD step with alpha = 0.01, 25 waves per meta-batch, Adam
with learning rate 0.001. Both libraries start from the same initial weights and see
the same waves in the same order (drawn once here with numpy and written to a file), and
run alternately (A B A B, ``--rounds`` times) on one thread each. For second- and
first-order MAML it prints the meta-iterations per second of both (median over rounds),
their ratio, and the post-adaptation test MSE of both after the same number of
meta-iterations, on the same 600 held-out waves (100 query points each), measured by
one neutral evaluator written here in plain torch.

learn2learn runs in its own virtual environment (``benchmarks/setup_learn2learn.sh``)
as a subprocess of this script (``--worker``), which writes its timing and final
weights to files. Usage::

    bash benchmarks/setup_learn2learn.sh /tmp/l2l-venv
    flock /tmp/metacl-cpu.lock python benchmarks/bench_maml_learn2learn.py \\
        --l2l-python /tmp/l2l-venv/bin/python --iterations 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

SHOTS, QUERY, EVAL_QUERY = 10, 10, 100
META_BATCH, INNER_LR, OUTER_LR = 25, 0.01, 1e-3
EVAL_TASKS = 600


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
    )


def draw_waves(rng: np.random.Generator, tasks: int, points: int) -> np.ndarray:
    """``(tasks, points, 2)`` float32: x and y of sine waves, amplitude U[0.1, 5],
    phase U[0, pi], x U[-5, 5]."""
    amplitude = rng.uniform(0.1, 5.0, size=(tasks, 1))
    phase = rng.uniform(0.0, math.pi, size=(tasks, 1))
    x = rng.uniform(-5.0, 5.0, size=(tasks, points))
    y = amplitude * np.sin(x - phase)
    return np.stack([x, y], axis=-1).astype(np.float32)


def split(waves: torch.Tensor, shots: int) -> tuple[torch.Tensor, ...]:
    x, y = waves[..., :1], waves[..., 1:]
    return x[..., :shots, :], y[..., :shots, :], x[..., shots:, :], y[..., shots:, :]


# ----------------------------------------------------------------------------- sides


def train_learn2learn(
    init: dict, waves: np.ndarray, first_order: bool
) -> tuple[float, dict]:
    """learn2learn's MAML, written as its sine example writes it."""
    import learn2learn as l2l

    model = make_model()
    model.load_state_dict(init)
    maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=first_order)
    optimizer = torch.optim.Adam(maml.parameters(), OUTER_LR)
    data = torch.from_numpy(waves)  # (iterations, tasks, points, 2)
    loss_fn = nn.functional.mse_loss

    started = time.perf_counter()
    for batch in data:
        optimizer.zero_grad()
        meta_loss = 0.0
        for task in batch:
            sx, sy, qx, qy = split(task, SHOTS)
            learner = maml.clone()
            learner.adapt(loss_fn(learner(sx), sy))
            meta_loss = meta_loss + loss_fn(learner(qx), qy)
        (meta_loss / len(batch)).backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    return seconds, {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_metacl(
    init: dict, waves: np.ndarray, first_order: bool
) -> tuple[float, dict]:
    """metacl's MAML through its Python API (vmap over the tasks of a meta-batch)."""
    from metacl.meta.algorithms import MAML
    from metacl.meta.tasks import TaskBatch

    model = make_model()
    model.load_state_dict(init)
    maml = MAML(
        model, nn.functional.mse_loss, inner_lr=INNER_LR, first_order=first_order
    )
    meta = maml.meta_parameters()
    optimizer = torch.optim.Adam(meta.values(), OUTER_LR)
    data = torch.from_numpy(waves)

    started = time.perf_counter()
    for batch in data:
        loss, grads = maml.meta_gradient(TaskBatch(*split(batch, SHOTS)))
        for name, tensor in meta.items():
            tensor.grad = grads[name]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return seconds, {k: v.detach().clone() for k, v in model.state_dict().items()}


def post_adaptation_mse(weights: dict, waves: np.ndarray) -> tuple[float, float]:
    """Mean and 95% CI half-width of the query MSE after one SGD step on K points."""
    model = make_model()
    model.load_state_dict(weights)
    losses = []
    for task in torch.from_numpy(waves):
        sx, sy, qx, qy = split(task, SHOTS)
        params = dict(model.named_parameters())
        support = nn.functional.mse_loss(
            torch.func.functional_call(model, params, sx), sy
        )
        grads = torch.autograd.grad(support, list(params.values()))
        adapted = {
            n: p - INNER_LR * g for (n, p), g in zip(params.items(), grads, strict=True)
        }
        with torch.no_grad():
            query = torch.func.functional_call(model, adapted, qx)
            losses.append(float(nn.functional.mse_loss(query, qy)))
    values = np.asarray(losses)
    return float(values.mean()), float(
        1.96 * values.std(ddof=1) / math.sqrt(len(values))
    )


# ---------------------------------------------------------------------------- driver


def worker(args: argparse.Namespace) -> None:
    """Run one side in this interpreter; write seconds and weights to --result."""
    torch.set_num_threads(1)
    init = torch.load(args.init, weights_only=True)
    waves = np.load(args.waves)
    train = train_learn2learn if args.worker == "learn2learn" else train_metacl
    seconds, weights = train(init, waves, args.first_order)
    torch.save(
        {
            "seconds": seconds,
            "weights": weights,
            "torch": str(torch.__version__),
            "threads": torch.get_num_threads(),
        },
        args.result,
    )


def run_side(side: str, python: str, files: dict[str, Path], first_order: bool) -> dict:
    result = files["dir"] / f"{side}.pt"
    command = [
        python,
        "-W",
        "ignore",
        __file__,
        "--worker",
        side,
        "--init",
        str(files["init"]),
        "--waves",
        str(files["waves"]),
        "--result",
        str(result),
    ]
    if first_order:
        command.append("--first-order")
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return torch.load(result, weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--l2l-python", default="/tmp/l2l-venv/bin/python")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--worker", choices=("learn2learn", "metacl"))
    parser.add_argument("--init")
    parser.add_argument("--waves")
    parser.add_argument("--result")
    parser.add_argument("--first-order", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    train_waves = draw_waves(rng, args.iterations * META_BATCH, SHOTS + QUERY)
    train_waves = train_waves.reshape(args.iterations, META_BATCH, SHOTS + QUERY, 2)
    eval_waves = draw_waves(rng, EVAL_TASKS, SHOTS + EVAL_QUERY)
    torch.manual_seed(args.seed)
    init = make_model().state_dict()

    report: dict = {"iterations": args.iterations, "rounds": args.rounds, "threads": 1}
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "dir": Path(tmp),
            "init": Path(tmp) / "init.pt",
            "waves": Path(tmp) / "w.npy",
        }
        torch.save(init, files["init"])
        np.save(files["waves"], train_waves)
        pythons = {"metacl": sys.executable, "learn2learn": args.l2l_python}

        for first_order in (False, True):
            order = "first-order" if first_order else "second-order"
            runs: dict[str, list[dict]] = {"learn2learn": [], "metacl": []}
            for round_ in range(args.rounds):
                for side in ("learn2learn", "metacl"):  # A B, A B, ...
                    out = run_side(side, pythons[side], files, first_order)
                    runs[side].append(out)
                    print(
                        f"  {order} round {round_ + 1} {side:<11} "
                        f"{args.iterations / out['seconds']:8.1f} meta-it/s",
                        flush=True,
                    )
            entry = {}
            for side, outs in runs.items():
                rates = [args.iterations / o["seconds"] for o in outs]
                mse, ci = post_adaptation_mse(outs[-1]["weights"], eval_waves)
                entry[side] = {
                    "meta_it_per_s": statistics.median(rates),
                    "rates": rates,
                    "test_mse": mse,
                    "test_mse_ci95": ci,
                    "torch": outs[-1]["torch"],
                    "threads": outs[-1]["threads"],
                }
            entry["speedup"] = (
                entry["metacl"]["meta_it_per_s"] / entry["learn2learn"]["meta_it_per_s"]
            )
            # the ratio within each round (neighbouring runs share the machine's load)
            entry["round_ratios"] = [
                mine / theirs
                for mine, theirs in zip(
                    entry["metacl"]["rates"], entry["learn2learn"]["rates"], strict=True
                )
            ]
            report[order] = entry

    print()
    print(
        f"MAML sine, MLP 1-40-40-1, K={SHOTS}, 1 inner step alpha={INNER_LR}, "
        f"meta-batch {META_BATCH}, Adam {OUTER_LR}; {args.iterations} meta-iterations, "
        f"median of {args.rounds} alternating rounds, 1 thread each"
    )
    header = (
        f"{'':<13}{'learn2learn it/s':>17}{'metacl it/s':>13}{'ratio':>8}"
        f"{'per-round ratios':>22}{'l2l test MSE':>20}{'metacl test MSE':>20}"
    )
    print(header)
    for order in ("second-order", "first-order"):
        e = report[order]
        l2l, mine = e["learn2learn"], e["metacl"]
        print(
            f"{order:<13}{l2l['meta_it_per_s']:>17.1f}{mine['meta_it_per_s']:>13.1f}"
            f"{e['speedup']:>7.1f}x"
            f"{' '.join(f'{r:.1f}' for r in e['round_ratios']):>22}"
            f"{l2l['test_mse']:>12.3f} ± {l2l['test_mse_ci95']:.3f}"
            f"{mine['test_mse']:>12.3f} ± {mine['test_mse_ci95']:.3f}"
        )
    print(
        f"torch: learn2learn side {report['second-order']['learn2learn']['torch']}, "
        f"metacl side {report['second-order']['metacl']['torch']}; test MSE on "
        f"{EVAL_TASKS} held-out waves, {EVAL_QUERY} query points, after one step"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
