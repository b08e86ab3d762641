"""The least time metacl's progressive network can take on Split Fashion-MNIST
task-incremental, from its bare arithmetic, beside the 5x / 10x targets set by
Avalanche's PNN.

The comparison protocol (``compare_avalanche.py``, split_ti): 5 experiences of 12,000
training images, batch 32, one epoch, SGD; after each experience the 5 test sets of
2,000 images, eval batch 1000. Column ``k`` trains during experience ``k`` behind
``k`` frozen columns; a test batch of task ``j`` runs columns ``0..j``.

This script times only the model: a training step of :class:`ProgressiveNet`
(forward, backward, SGD step on column ``k``) on a fixed batch, and its forward on a
test batch, the fastest of ``--rounds`` rounds. No data handling, no strategy, no metric.
The sums below are therefore floors for any implementation of this architecture on
this machine:

- training floor = sum over k of 375 steps x (step time at column k);
- evaluation floor = 5 evaluations x sum over j of 2 batches x (forward time of
  task j).

It also counts each column's multiply-adds per sample, to show that the floor is
arithmetic (about the same multiply-adds per second at every column).

``--avalanche`` (run with the Avalanche venv's python) also times Avalanche's PNN
model (two PNN layers of 400, MLP adapters, a 2-class head on the last column), the
same training step at the last column, alternating with metacl's model: the
arithmetic each library's PNN asks for.

Usage::

    python benchmarks/pnn_floor.py --threads 2 --avalanche-train 21.7 \\
        --avalanche-eval 9.78
    /tmp/avalanche-venv/bin/python benchmarks/pnn_floor.py --threads 2 --avalanche
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from metacl.models import ProgressiveNet

COLUMNS, TRAIN, TEST, BATCH, EVAL_BATCH = 5, 12000, 2000, 32, 1000


def macs_forward(net: ProgressiveNet, k: int, single: bool = True) -> int:
    """Multiply-adds per sample of a forward pass for task ``k`` (columns 0..k)."""
    total = 0
    for j in range(k + 1):
        column = net.columns[j]
        for i, layer in enumerate(column.layers):
            if single and j < k and i == len(column.layers) - 1:
                break  # an earlier column's output layer is not needed
            total += layer.weight.numel()
            if j > 0 and i > 0:
                adapter = column.adapters[i - 1]
                total += adapter.project.weight.numel() + adapter.out.weight.numel()
    return total


def timed(fn, rounds: int, reps: int) -> float:
    """The fastest of ``rounds`` rounds of ``reps`` calls, per call: a floor (the
    machine's noise only adds time)."""
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - began) / reps)
    return min(times)


def avalanche_side_by_side(rounds: int) -> None:
    """Training step at the last column: Avalanche's PNN model against metacl's."""
    from avalanche.models.pnn import PNN

    k = COLUMNS - 1
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 2, (BATCH,))
    ours = ProgressiveNet.mlp((1, 28, 28), 10, hidden=[400, 400], columns=COLUMNS)
    for j, column in enumerate(ours.columns):
        column.requires_grad_(j == k)
    ours_opt = torch.optim.SGD(ours.column_parameters(k), lr=0.01)
    task = torch.full((BATCH,), k)
    theirs = PNN(num_layers=2, in_features=784, hidden_features_per_column=400)
    for layer in theirs.layers:  # what adaptation does for tasks 1..k
        for _ in range(k):
            layer._add_column()  # freezes the existing columns
        layer.task_to_module_idx = {t: t for t in range(k + 1)}
    head = nn.Linear(400, 2)  # the multi-head classifier's head of task k

    def theirs_forward(x):
        xs = [x.reshape(len(x), 784)] * (k + 1)
        for layer in theirs.layers:
            xs = [torch.relu(h) for h in layer.forward_single_task(xs, k)]
        return head(xs[k])

    trainable = [p for p in theirs.parameters() if p.requires_grad]
    theirs_opt = torch.optim.SGD(trainable + list(head.parameters()), lr=0.01)

    def step(forward, optimizer):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(x), y).backward()
        optimizer.step()

    times = {"metacl": [], "avalanche": []}
    for _ in range(rounds):
        for name, forward, optimizer in (
            ("metacl", lambda x: ours(x, task), ours_opt),
            ("avalanche", theirs_forward, theirs_opt),
        ):
            times[name].append(timed(lambda f=forward, o=optimizer: step(f, o), 1, 30))
    m, a = min(times["metacl"]), min(times["avalanche"])
    print(
        f"training step at column {k}: metacl {1000 * m:.2f} ms, Avalanche "
        f"{1000 * a:.2f} ms (Avalanche / metacl {a / m:.2f}); trainable parameters: "
        f"metacl {sum(p.numel() for p in ours.column_parameters(k)):,}, Avalanche "
        f"{sum(p.numel() for p in trainable) + 802:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--avalanche-train", type=float, help="Avalanche PNN train s")
    parser.add_argument("--avalanche-eval", type=float, help="Avalanche PNN eval s")
    parser.add_argument(
        "--avalanche", action="store_true", help="time Avalanche's PNN model beside"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.avalanche:
        avalanche_side_by_side(args.rounds)
        return
    torch.manual_seed(0)
    net = ProgressiveNet.mlp((1, 28, 28), 10, hidden=[400, 400], columns=COLUMNS)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
    test = torch.randn(EVAL_BATCH, 1, 28, 28)
    train_floor = eval_floor = 0.0
    print(f"torch {torch.__version__}, {args.threads} threads")
    print("| column k | MACs / sample (train fwd) | ms / step | GMAC/s (fwd) |")
    print("| --- | --- | --- | --- |")
    for k in range(COLUMNS):
        for j, column in enumerate(net.columns):
            column.requires_grad_(j == k)
        optimizer = torch.optim.SGD(net.column_parameters(k), lr=0.01)
        task = torch.full((BATCH,), k)

        def step(optimizer=optimizer, task=task):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x, task), y).backward()
            optimizer.step()

        step_s = timed(step, args.rounds, 30)
        train_floor += TRAIN // BATCH * step_s
        macs = macs_forward(net, k)
        with torch.no_grad():
            test_task = torch.full((EVAL_BATCH,), k)
            forward_s = timed(lambda t=test_task: net(test, t), args.rounds, 3)
        eval_floor += COLUMNS * (TEST // EVAL_BATCH) * forward_s
        rate = macs * EVAL_BATCH / forward_s / 1e9
        print(f"| {k} | {macs:,} | {1000 * step_s:.2f} | {rate:.0f} |")
    print()
    print(f"training floor: {train_floor:.2f} s   evaluation floor: {eval_floor:.2f} s")
    if args.avalanche_train:
        target = args.avalanche_train / 5
        print(
            f"5x training target: {target:.2f} s (Avalanche {args.avalanche_train} s); "
            f"floor / target = {train_floor / target:.2f}"
        )
    if args.avalanche_eval:
        target = args.avalanche_eval / 10
        print(
            f"10x evaluation target: {target:.2f} s (Avalanche {args.avalanche_eval} "
            f"s); floor / target = {eval_floor / target:.2f}"
        )


if __name__ == "__main__":
    main()
