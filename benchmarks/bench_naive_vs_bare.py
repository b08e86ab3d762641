"""metacl's naive strategy beside a bare PyTorch loop doing the same arithmetic.

Protocol (issue 2): Split Fashion-MNIST, 5 experiences of 2 classes, MLP 784-400-400-10,
SGD (lr 0.01), batch 128, one epoch per experience, and a full evaluation on every test
experience before training and after each experience (the accuracy matrix and ``b``).

Time: both run in this one process, alternately (metacl, bare, metacl, bare, ...), on
the same stream tensors; the script prints the median of each and the ratios. Memory:
peak resident memory is a high-water mark of a process, so each side runs once more in
a fresh child process (``--child``) that loads the data the same way, resets its peak
(Linux ``/proc/self/clear_refs``; the files' loading peak is identical for both sides)
and reports the peak resident memory of building the stream, training and evaluating.

Goals: metacl within 1.15x of the bare loop for training and for evaluation, and peak
memory within 1.2x.

Run:
    python benchmarks/bench_naive_vs_bare.py --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from metacl.config import resolve_config
from metacl.data import load_dataset
from metacl.data.scenarios import Stream, build_stream
from metacl.experiment import _peak_memory_mb, _reset_peak_memory, run_single

SEED = 0
SCENARIO = {"name": "class_incremental", "n_experiences": 5}
LR = 0.01
BATCH = 128
EVAL_BATCH = 1000


def metacl_config(threads: int):
    return resolve_config(
        {
            "seeds": [SEED],
            "dataset": {"name": "fashion_mnist"},
            "scenario": SCENARIO,
            "model": {"name": "mlp", "hidden": [400, 400]},
            "strategy": {"name": "naive"},
            "optimizer": {"name": "sgd", "lr": LR},
            "train": {
                "epochs": 1,
                "batch_size": BATCH,
                "eval_batch_size": EVAL_BATCH,
                "threads": threads,
            },
        }
    )


def run_metacl(dataset, threads: int) -> dict[str, float]:
    result = run_single(metacl_config(threads), 0, SEED, dataset=dataset)
    return {
        "train_s": result.timings["train_s"],
        "eval_s": result.timings["eval_s"],
        "acc": result.metrics["acc"],
    }


def run_bare(stream: Stream) -> dict[str, float]:
    """The loop a careful PyTorch user writes by hand, with no library."""
    torch.manual_seed(SEED)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 400),
        nn.ReLU(),
        nn.Linear(400, 400),
        nn.ReLU(),
        nn.Linear(400, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    tests = [(e.test_x, e.test_y) for e in stream.experiences]

    def evaluate() -> list[float]:
        model.eval()
        scores = []
        with torch.inference_mode():
            for x, y in tests:
                correct = 0
                for start in range(0, len(x), EVAL_BATCH):
                    out = model(x[start : start + EVAL_BATCH])
                    correct += int(
                        (out.argmax(1) == y[start : start + EVAL_BATCH]).sum()
                    )
                scores.append(correct / len(x))
        model.train()
        return scores

    train_s = eval_s = 0.0
    began = time.perf_counter()
    evaluate()
    eval_s += time.perf_counter() - began
    last: list[float] = []
    for i, e in enumerate(stream.experiences):
        generator = torch.Generator().manual_seed(SEED * 1000 + i)
        x, y = e.train_x, e.train_y

        # one epoch of shuffled mini-batches
        began = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), BATCH):
            index = order[start : start + BATCH]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        train_s += time.perf_counter() - began

        # full evaluation
        began = time.perf_counter()
        last = evaluate()
        eval_s += time.perf_counter() - began
    return {"train_s": train_s, "eval_s": eval_s, "acc": sum(last) / len(last)}


def reset_peak() -> bool:
    """Reset this process's peak resident memory (Linux: VmHWM), as each run does."""
    return _reset_peak_memory("cpu")


def peak_rss_mb() -> float:
    return _peak_memory_mb("cpu")["peak_rss_mb"]


def child(side: str, threads: int) -> None:
    torch.set_num_threads(threads)
    dataset = load_dataset("fashion_mnist")
    # the peak of loading the files is the same for both: measure from here on
    reset = reset_peak()
    if side == "metacl":
        run_metacl(dataset, threads)
    else:
        stream = build_stream(SCENARIO["name"], dataset, seed=SEED, n_experiences=5)
        del dataset
        run_bare(stream)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "reset": reset}))


def child_memory(side: str, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, __file__, "--child", side, "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if not report["reset"]:
        print(f"note: {side}: peak memory includes loading the files (no VmHWM reset)")
    return report["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=["metacl", "bare"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads)
        return

    torch.set_num_threads(args.threads)
    dataset = load_dataset("fashion_mnist")
    stream = build_stream(SCENARIO["name"], dataset, seed=SEED, n_experiences=5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(stream.describe())

    # warm up both, then alternate
    run_metacl(dataset, args.threads)
    run_bare(stream)
    rows: dict[str, list[dict[str, float]]] = {"metacl": [], "bare": []}
    for repeat in range(args.repeats):
        rows["metacl"].append(run_metacl(dataset, args.threads))
        rows["bare"].append(run_bare(stream))
        print(
            f"repeat {repeat}: metacl train {rows['metacl'][-1]['train_s']:.2f}s "
            f"eval {rows['metacl'][-1]['eval_s']:.2f}s | bare train "
            f"{rows['bare'][-1]['train_s']:.2f}s eval {rows['bare'][-1]['eval_s']:.2f}s"
        )

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[side])

    memory = {side: child_memory(side, args.threads) for side in ("metacl", "bare")}
    print()
    print(f"{'':10} {'metacl':>10} {'bare':>10} {'ratio':>8} {'goal':>8}")
    for key, goal in (("train_s", 1.15), ("eval_s", 1.15)):
        m, b = median("metacl", key), median("bare", key)
        print(f"{key:10} {m:10.3f} {b:10.3f} {m / b:8.3f} {'<= ' + str(goal):>8}")
    m, b = memory["metacl"], memory["bare"]
    print(f"{'peak MB':10} {m:10.1f} {b:10.1f} {m / b:8.3f} {'<= 1.2':>8}")
    print(
        f"{'final ACC':10} {median('metacl', 'acc'):10.4f} {median('bare', 'acc'):10.4f}"
    )


if __name__ == "__main__":
    main()
