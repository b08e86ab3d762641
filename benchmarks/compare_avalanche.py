"""Side-by-side comparison of metacl's classic strategies with Avalanche's.

Same streams, same model, same seeds, same hyperparameters, one epoch per experience:

- protocols: Split Fashion-MNIST class-incremental (``split_ci``) and
  task-incremental (``split_ti``), 5 experiences of 2 classes in label order, and
  Permuted Fashion-MNIST (``permuted``), 10 experiences; the permutations are
  metacl's (this script computes them and hands them to the Avalanche side).
  ``--permuted-samples N`` trains each permuted experience on a seeded subset of N of
  the 60,000 training images (tested on all 10,000), and the Avalanche side then
  receives metacl's stream itself (the permuted images as uint8 tensors, written by
  this script), so both train on exactly the same samples. On the full protocol one
  naive run takes 86 s (metacl) and 141 s (Avalanche) on one thread here, the
  regularisers and replay two to three times that, so the 48 runs of the full grid
  do not fit a session: the reported grid uses N = 10,000;
- model: MLP 784-400-400-10 (ReLU). In the task-incremental protocol both libraries
  use the single head with the outputs of the other tasks' classes masked (metacl's
  task_incremental scenario; on the Avalanche side a small ``MultiTaskModule``);
- SGD, lr 0.01, batch 32, eval batch 1000, ``--threads`` torch threads (default 1)
  in both libraries, every run in its own process (peak memory = that process's max
  RSS, data included). Run the driver with the Avalanche venv's python after ``pip
  install --no-deps -e .`` there (plus ``mnist1d``, ``scikit-learn``) so that both
  libraries run on the same torch build.
- two setups (``--avalanche-setup``). ``default``: Avalanche out of the box, as its
  documentation runs it: its own benchmark builders on torchvision's Fashion-MNIST
  (``SplitFMNIST``; for the permuted protocol the construction of its
  ``PermutedMNIST``), whose default per-sample transforms (``ToTensor``,
  ``Normalize(0.2860, 0.3530)``) run each time a sample is drawn, and its default
  evaluator (accuracy and loss metrics, interactive logger); metacl loads the same
  images normalised with the same constants (``dataset.normalize``), so both train
  on the same values. ``tensors``: Avalanche receives metacl's stream as tensors (no
  per-sample work) and an evaluator of experience accuracy only, without logger: its
  fastest input path;

Every (protocol, strategy, seed) runs metacl then Avalanche (A B A B: the machine is
shared and noisy) and appends one JSON line per library to ``--results``; runs found
there are skipped, so the grid can run in chunks. ``--report`` prints one table per
(threads, setup). Its time ratios are medians over seeds of the per-seed ratio (the
two runs of a seed ran back to back, under the same load), and the speed goals are
judged on them; beside each, in parentheses, the ratio of the two libraries' fastest
runs over the seeds (the machine's noise only adds time). ``train / naive`` is each
library's training time over its own naive strategy's: what the strategy adds to the
floor in that library. ``--repeats N`` runs each (library, strategy, seed) N times,
alternating the libraries (m, A, m, A, ...); the report then takes each library's
fastest run of a seed as that seed's time, and says so in the seeds column.

Hyperparameters (identical objectives; where the two libraries write a constant
differently, the conversion is stated):

- EWC / online EWC: Avalanche ``ewc_lambda = L`` (penalty ``L * sum F d^2``, Fisher
  from squared mean gradients of mini-batches of the training batch size) is metacl
  ``lambda_ = 2 L`` (penalty ``lambda_/2 * sum F d^2``) with ``fisher_batch_size =
  32``. L = 100 (split) and 20 (permuted): ANCHORS.md notes lambda above ~200
  diverges on Permuted Fashion-MNIST at lr 0.01. Online: ``decay_factor = gamma =
  0.9``.
- SI: Avalanche ``si_lambda = S`` (penalty ``S/2 * sum Omega d^2``, importances
  clipped at 0.001) is metacl ``strength = S/2, max_importance = 0.001``; S = 100,
  damping ``eps = xi = 1e-3``.
- LwF: alpha 1, temperature 2.
- Replay: memory 1000, replay batch 32, reservoir policy. Avalanche's
  ``ReservoirSamplingBuffer`` (and its DER's buffer) is filled at the end of each
  experience; metacl fills its memory after every batch, as the ER and DER++ papers
  do, unless ``update="experience"``. ``--memory-update`` picks metacl's policy
  (default ``experience``, Avalanche's); each record says which, and the report
  shows the two policies as separate rows.
- A-GEM: 200 patterns per experience (metacl: ``memory_size = 200 * T``), reference
  batch 256.
- DER++: memory 1000, replay batch 32, alpha 0.1, beta 0.5.
- PNN (task-incremental only): two hidden layers of 400 per column, MLP adapters.

Usage::

    bash benchmarks/setup_avalanche.sh /tmp/avalanche-venv
    flock /tmp/metacl-cpu.lock python benchmarks/compare_avalanche.py \\
        --protocols split_ci --seeds 0 1 2 --results /tmp/compare.jsonl
    python benchmarks/compare_avalanche.py --report --results /tmp/compare.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROTOCOLS = ("split_ci", "split_ti", "permuted")
STRATEGIES = (
    "naive",
    "ewc",
    "online_ewc",
    "si",
    "lwf",
    "replay",
    "agem",
    "derpp",
    "pnn",
)
FMNIST = Path("/usr/share/datasets/fashion-mnist")
LR, BATCH, EVAL_BATCH = 0.01, 32, 1000
MEMORY, REPLAY_BATCH = 1000, 32
AGEM_PER_EXP, AGEM_SAMPLE = 200, 256
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530  # Avalanche's default Normalize
SETUPS = {
    "tensors": "Avalanche receives metacl's stream as tensors (its fastest input "
    "path) and an evaluator of experience accuracy only, without logger",
    "default": "Avalanche out of the box: its own benchmark builders on "
    "torchvision's Fashion-MNIST with their default per-sample transforms (ToTensor, "
    "Normalize) and its default evaluator; metacl normalises with the same constants",
}


def n_experiences(protocol: str) -> int:
    return 10 if protocol == "permuted" else 5


def ewc_lambda_avalanche(protocol: str) -> float:
    return 20.0 if protocol == "permuted" else 100.0


def fits(protocol: str, strategy: str) -> bool:
    return strategy != "pnn" or protocol == "split_ti"


# ---------------------------------------------------------------------------
# the metacl side (runs in metacl's venv)


def metacl_settings(
    protocol: str, strategy: str, memory_update: str = "experience"
) -> dict:
    lam = ewc_lambda_avalanche(protocol)
    return {
        "naive": {},
        "ewc": {"lambda_": 2 * lam, "fisher_batch_size": BATCH},
        "online_ewc": {"lambda_": 2 * lam, "gamma": 0.9, "fisher_batch_size": BATCH},
        "si": {"strength": 50.0, "xi": 1e-3, "max_importance": 1e-3},
        "lwf": {"alpha": 1.0, "temperature": 2.0},
        "replay": {
            "memory_size": MEMORY,
            "replay_batch_size": REPLAY_BATCH,
            "update": memory_update,
        },
        "agem": {
            "memory_size": AGEM_PER_EXP * n_experiences(protocol),
            "replay_batch_size": AGEM_SAMPLE,
        },
        "derpp": {
            "memory_size": MEMORY,
            "replay_batch_size": REPLAY_BATCH,
            "alpha": 0.1,
            "beta": 0.5,
            "update": memory_update,
        },
        "pnn": {},
    }[strategy]


def metacl_config(
    protocol: str,
    strategy: str,
    seed: int,
    permuted_samples: int | None = None,
    memory_update: str = "experience",
    threads: int = 1,
    setup: str = "tensors",
) -> dict:
    dataset = {"name": "fashion_mnist"}
    if setup == "default":  # the constants of Avalanche's default transforms
        dataset["normalize"] = {"mean": [FMNIST_MEAN], "std": [FMNIST_STD]}
    scenario = {
        "split_ci": {"name": "class_incremental", "n_experiences": 5},
        "split_ti": {"name": "task_incremental", "n_experiences": 5},
        "permuted": {
            "name": "permuted",
            "n_experiences": 10,
            "samples_per_experience": permuted_samples,
        },
    }[protocol]
    return {
        "seeds": [seed],
        "dataset": dataset,
        "scenario": scenario,
        "model": {"name": "mlp", "hidden": [400, 400]},
        "strategy": {
            "name": strategy,
            **metacl_settings(protocol, strategy, memory_update),
        },
        "optimizer": {"name": "sgd", "lr": LR},
        "train": {
            "epochs": 1,
            "batch_size": BATCH,
            "eval_batch_size": EVAL_BATCH,
            "threads": threads,
        },
    }


def metacl_worker(protocol: str, strategy: str, seed: int, **settings) -> dict:
    """One metacl run; ``settings`` as :func:`metacl_config` takes them."""
    import torch

    from metacl.config import resolve_config
    from metacl.experiment import run_single

    config = resolve_config(metacl_config(protocol, strategy, seed, **settings))
    torch.set_num_threads(config.train["threads"])
    result = run_single(config, 0, seed)
    T = len(result.R)
    return {
        "R": result.R,
        "acc": result.metrics["acc"],
        "bwt": result.metrics["bwt"],
        "train_s": result.timings["train_s"],
        # the runner also evaluates once before training; count T evaluations
        "eval_s": result.timings["eval_s"] * T / (T + 1),
        "peak_rss_mb": _peak_rss_mb(),
    }


def permutations(seed: int, n: int) -> list[list[int]]:
    """metacl's permutations for ``seed`` (computed in metacl's venv)."""
    import torch

    from metacl.data.scenarios import _generator

    return [
        torch.randperm(784, generator=_generator(seed, 200 + i)).tolist()
        for i in range(n)
    ]


def bare_worker(
    protocol: str,
    seed: int,
    permuted_samples: int | None = None,
    threads: int = 1,
    setup: str = "tensors",
) -> dict:
    """Naive fine-tuning as a hand-written PyTorch loop on metacl's stream: the
    arithmetic every library must do, with no library around it (the floor of the
    training and evaluation times)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from metacl.config import resolve_config
    from metacl.data import load_dataset
    from metacl.data.scenarios import build_stream

    torch.set_num_threads(threads)
    config = resolve_config(
        metacl_config(
            protocol, "naive", seed, permuted_samples, threads=threads, setup=setup
        )
    )
    settings, data = dict(config.scenario), dict(config.dataset)
    dataset = load_dataset(data.pop("name"), **data)
    stream = build_stream(settings.pop("name"), dataset, seed=seed, **settings)
    T = len(stream.experiences)
    masks = None
    if stream.task_ids_at_test:  # task-incremental: other tasks' outputs masked
        masks = torch.zeros(T, 10, dtype=torch.bool)
        for e in stream.experiences:
            masks[e.index, list(e.classes)] = True
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 400),
        nn.ReLU(),
        nn.Linear(400, 400),
        nn.ReLU(),
        nn.Linear(400, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def logits(x, task):
        out = model(x)
        return out if masks is None else out.masked_fill(~masks[task], -1e9)

    R, train_s, eval_s = [], 0.0, 0.0
    for i, e in enumerate(stream.experiences):
        # one epoch of shuffled mini-batches
        began = time.perf_counter()
        order = torch.randperm(len(e.train_x))
        for start in range(0, len(order), BATCH):
            index = order[start : start + BATCH]
            loss = F.cross_entropy(logits(e.train_x[index], i), e.train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        train_s += time.perf_counter() - began

        # every test experience
        began = time.perf_counter()
        row = []
        with torch.inference_mode():
            for test in stream.experiences:
                correct = 0
                for start in range(0, len(test.test_x), EVAL_BATCH):
                    x = test.test_x[start : start + EVAL_BATCH]
                    y = test.test_y[start : start + EVAL_BATCH]
                    correct += int((logits(x, test.index).argmax(1) == y).sum())
                row.append(correct / len(test.test_x))
        eval_s += time.perf_counter() - began
        R.append(row)
    return {
        "R": R,
        "acc": sum(R[-1]) / T,
        "bwt": sum(R[-1][j] - R[j][j] for j in range(T - 1)) / (T - 1),
        "train_s": train_s,
        "eval_s": eval_s,
        "peak_rss_mb": _peak_rss_mb(),
    }


def permuted_subsets(seed: int, samples: int) -> list[list[int]]:
    """The training images (indices into the 60,000) that metacl keeps in each
    permuted experience for ``seed`` with ``samples_per_experience = samples``
    (computed in metacl's venv, for Avalanche's own benchmark builders)."""
    import torch

    from metacl.data.scenarios import _generator, _split_train

    index = torch.arange(60_000)
    return [
        _split_train(
            index,
            index,
            samples=samples,
            validation_fraction=0.0,
            generator=_generator(seed, 100 + i),
            where="permuted",
        )[0].tolist()
        for i in range(n_experiences("permuted"))
    ]


def prepare_torchvision_root(root: Path) -> Path:
    """torchvision's Fashion-MNIST layout (``ROOT/FashionMNIST/raw``, the four IDX
    files gunzipped) made from the Debian files, for Avalanche's own builders (its
    datasets only download)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for packed in sorted(FMNIST.glob("*-ubyte.gz")):
        target = raw / packed.name[: -len(".gz")]
        if not target.exists():
            partial = target.with_suffix(f".{os.getpid()}.tmp")
            with gzip.open(packed, "rb") as f:
                partial.write_bytes(f.read())
            partial.replace(target)
    return root


def export_permuted_stream(seed: int, samples: int, path: Path) -> None:
    """Write metacl's permuted stream for ``seed`` (``samples`` training images per
    experience) as uint8 tensors, for the Avalanche side to train on."""
    import torch

    from metacl.config import resolve_config
    from metacl.data import load_dataset
    from metacl.data.scenarios import build_stream

    config = resolve_config(metacl_config("permuted", "naive", seed, samples))
    settings = dict(config.scenario)
    stream = build_stream(
        settings.pop("name"), load_dataset("fashion_mnist"), seed=seed, **settings
    )

    def as_bytes(x):  # pixels are k / 255 exactly: the uint8 round trip is lossless
        return (x.reshape(len(x), -1) * 255).round().to(torch.uint8)

    torch.save(
        [
            {
                "train_x": as_bytes(e.train_x),
                "train_y": e.train_y,
                "test_x": as_bytes(e.test_x),
                "test_y": e.test_y,
            }
            for e in stream.experiences
        ],
        path,
    )


def measure_replay_flatness(strategies: list[str], rounds: int = 5) -> dict:
    """Time per observe() early and late in the stream, Split Fashion-MNIST
    class-incremental, memory 1000, per-batch memory update.

    Two figures per strategy. ``ms_per_batch``: the median time per batch in each
    experience of one pass (the first experience's first batch, with an empty memory,
    left out). ``alternated``: the strategy as it is when the first experience with a
    memory begins and when the last one begins, copied, then timed on the same
    batches of the last experience in turn (early, late, early, late, ...; ``rounds``
    times 50 batches each), so that the machine's drifting load falls on both alike;
    ``late_over_early`` is the ratio of their medians.
    """
    import copy

    import torch

    from metacl.data import load_dataset
    from metacl.data.scenarios import build_stream
    from metacl.models import build_model
    from metacl.strategies import OptimizerSpec, build_strategy

    torch.set_num_threads(1)
    dataset = load_dataset("fashion_mnist")
    stream = build_stream("class_incremental", dataset, seed=0, n_experiences=5)
    last = stream.experiences[-1]
    batches = [
        index
        for index in torch.randperm(len(last.train_x)).split(BATCH)
        if len(index) == BATCH
    ][:50]

    def timed(strategy) -> list[float]:
        times = []
        for index in batches:
            began = time.perf_counter()
            strategy.observe(
                last.train_x[index], last.train_y[index], last.task_ids(len(index))
            )
            times.append(time.perf_counter() - began)
        return times

    out = {}
    for name in strategies:
        torch.manual_seed(0)
        model = build_model("mlp", stream.input_shape, 10, hidden=[400, 400])
        settings = metacl_settings("split_ci", name, "batch")
        strategy = build_strategy(name, model, stream, OptimizerSpec(lr=LR), **settings)
        per_experience, snapshots = [], {}
        for e in stream.experiences:
            if len(strategy.memory) and "early" not in snapshots:
                snapshots["early"] = copy.deepcopy(strategy)
            if e is last:
                snapshots["late"] = copy.deepcopy(strategy)
            strategy.begin_experience(e)
            times = []
            order = torch.randperm(len(e.train_x))
            for start in range(0, len(order), BATCH):
                index = order[start : start + BATCH]
                had_memory = len(strategy.memory) > 0
                began = time.perf_counter()
                strategy.observe(
                    e.train_x[index], e.train_y[index], e.task_ids(len(index))
                )
                if had_memory:
                    times.append(time.perf_counter() - began)
            strategy.end_experience(e)
            per_experience.append(statistics.median(times) if times else math.nan)
        first = next(t for t in per_experience if not math.isnan(t))

        # the early and the late strategy on the same batches, in turn
        alternated = {"early": [], "late": []}
        for _ in range(rounds):
            for when in ("early", "late"):
                alternated[when] += timed(snapshots[when])
        early = statistics.median(alternated["early"])
        late = statistics.median(alternated["late"])
        out[name] = {
            "ms_per_batch": [round(1000 * t, 3) for t in per_experience],
            "last_over_first": per_experience[-1] / first,
            "alternated_ms": {
                "early": round(1000 * early, 3),
                "late": round(1000 * late, 3),
            },
            "late_over_early": late / early,
        }
    return out


# ---------------------------------------------------------------------------
# the Avalanche side (runs in Avalanche's venv; does not import metacl)


def _read_idx(path: Path):
    import numpy as np

    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _default_benchmark(protocol: str, perms, subsets, root: str):
    """The stream as Avalanche's own builders make it on torchvision's Fashion-MNIST,
    out of the box: each sample is read from the dataset, made a PIL image and
    converted by per-sample transforms when a batch is drawn.

    Split: ``SplitFMNIST`` with its default transforms (``ToTensor``, then
    ``Normalize(0.2860, 0.3530)``), the classes in label order. Permuted (Avalanche
    has no permuted Fashion-MNIST): built as its ``PermutedMNIST`` builds its stream,
    one dataset per permutation with the permutation a frozen per-sample transform
    and ``nc_benchmark`` with one dataset per experience, on Fashion-MNIST with
    metacl's permutations and training subsets. One deviation: the permutation acts
    on the normalised tensor, where ``PermutedMNIST`` permutes the PIL image (a
    round trip through uint8 that can move a pixel by 1/255 and costs two
    conversions more): it keeps the inputs identical to metacl's and can only make
    Avalanche faster.
    """
    import torch
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.classic import SplitFMNIST
    from avalanche.benchmarks.classic.cmnist import PixelsPermutation
    from avalanche.benchmarks.datasets.external_datasets.fmnist import (
        get_fmnist_dataset,
    )
    from avalanche.benchmarks.utils import (
        DefaultTransformGroups,
        _make_taskaware_classification_dataset,
    )
    from avalanche.benchmarks.utils.data import make_avalanche_dataset
    from torchvision.transforms import Compose, Normalize, ToTensor

    if protocol != "permuted":
        return SplitFMNIST(
            n_experiences("split_ci"),
            return_task_id=protocol == "split_ti",
            fixed_class_order=list(range(10)),
            dataset_root=root,
        )
    train, test = get_fmnist_dataset(root)
    trains, tests = [], []
    for i, perm in enumerate(perms):
        frozen = Compose(
            [
                ToTensor(),
                Normalize((FMNIST_MEAN,), (FMNIST_STD,)),
                PixelsPermutation(torch.tensor(perm)),
            ]
        )
        groups = DefaultTransformGroups((frozen, None))  # (input, target)
        base = _make_taskaware_classification_dataset(train)
        if subsets is not None:
            base = base.subset(subsets[i])
        trains.append(make_avalanche_dataset(base, frozen_transform_groups=groups))
        tests.append(
            make_avalanche_dataset(
                _make_taskaware_classification_dataset(test),
                frozen_transform_groups=groups,
            )
        )
    return nc_benchmark(
        trains,
        tests,
        n_experiences=len(trains),
        task_labels=False,
        shuffle=False,
        class_ids_from_zero_in_each_exp=True,
        one_dataset_per_exp=True,
    )


def _tensor_benchmark(protocol: str, perms, stream_file: str | None):
    """The stream handed to Avalanche as tensors, cut as metacl cuts it (classes in
    label order, metacl's permutations or metacl's own exported stream): Avalanche's
    fastest input path, with no per-sample decoding or transforms."""
    import numpy as np
    import torch
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import (
        _make_taskaware_tensor_classification_dataset as tensor_dataset,
    )

    def load(split: str):
        prefix = "train" if split == "train" else "t10k"
        x = _read_idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz").reshape(-1, 784)
        y = _read_idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")
        return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(
            y.astype(np.int64)
        )

    train_x, train_y = load("train")
    test_x, test_y = load("test")
    T = n_experiences(protocol)
    task_il = protocol == "split_ti"
    trains, tests = [], []
    exported = torch.load(stream_file, weights_only=True) if stream_file else None
    for i in range(T):
        label = i if task_il else 0
        if exported is not None:  # metacl's own stream
            e = exported[i]
            parts = [
                (e["train_x"].float() / 255.0, e["train_y"]),
                (e["test_x"].float() / 255.0, e["test_y"]),
            ]
        elif protocol == "permuted":
            perm = torch.tensor(perms[i])
            parts = [(train_x[:, perm], train_y), (test_x[:, perm], test_y)]
        else:
            classes = [2 * i, 2 * i + 1]
            parts = []
            for x, y in ((train_x, train_y), (test_x, test_y)):
                keep = (y == classes[0]) | (y == classes[1])
                parts.append((x[keep], y[keep]))
        for (x, y), sink in zip(parts, (trains, tests), strict=True):
            sink.append(
                tensor_dataset(x, y, targets=y.tolist(), task_labels=[label] * len(y))
            )
    return with_task_labels(
        with_classes_timeline(benchmark_from_datasets(train=trains, test=tests))
    )


def avalanche_worker(
    protocol: str,
    strategy: str,
    seed: int,
    perms_file: str | None,
    stream_file: str | None = None,
    setup: str = "tensors",
    root: str | None = None,
    subsets_file: str | None = None,
    threads: int = 1,
) -> dict:
    import numpy as np
    import torch
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.models import MultiTaskModule
    from avalanche.models.pnn import PNN
    from avalanche.training import (
        AGEM,
        DER,
        EWC,
        LwF,
        Naive,
        PNNStrategy,
        SynapticIntelligence,
    )
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.plugins.evaluation import default_evaluator
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)

    T = n_experiences(protocol)
    task_il = protocol == "split_ti"
    perms = json.loads(Path(perms_file).read_text()) if perms_file else None
    if setup == "default":
        subsets = json.loads(Path(subsets_file).read_text()) if subsets_file else None
        benchmark = _default_benchmark(protocol, perms, subsets, root)
    else:
        benchmark = _tensor_benchmark(protocol, perms, stream_file)
    groups = [
        list(range(10)) if protocol == "permuted" else [2 * i, 2 * i + 1]
        for i in range(T)
    ]

    def mlp():
        return nn.Sequential(
            nn.Flatten(),  # a view; the default setup's samples are (1, 28, 28)
            nn.Linear(784, 400),
            nn.ReLU(),
            nn.Linear(400, 400),
            nn.ReLU(),
            nn.Linear(400, 10),
        )

    class MaskedMLP(MultiTaskModule):
        """One head; outputs of classes outside the sample's task masked."""

        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()
            mask = torch.zeros(T, 10, dtype=torch.bool)
            for t, classes in enumerate(groups):
                mask[t, classes] = True
            self.register_buffer("mask", mask)

        def forward_single_task(self, x, task_label):
            return self.net(x).masked_fill(~self.mask[int(task_label)], -1e9)

        def forward(self, x, task_labels="raw"):
            if isinstance(task_labels, str):  # DER's stored logits: unmasked, as metacl
                return self.net(x)
            if task_labels is None:  # every known task's outputs (LwF)
                return self.forward_all_tasks(x)
            if isinstance(task_labels, int):
                task_labels = torch.full((len(x),), task_labels)
            return self.net(x).masked_fill(~self.mask[task_labels.long()], -1e9)

    if strategy == "pnn":
        model = PNN(
            num_layers=2, in_features=784, hidden_features_per_column=400, adapter="mlp"
        )
    else:
        model = MaskedMLP() if task_il else mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    if setup == "default":  # accuracy and loss metrics, the interactive logger
        evaluator = default_evaluator()
    else:  # only what ACC and BWT need, no logger
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    common = dict(
        model=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=BATCH,
        train_epochs=1,
        eval_mb_size=EVAL_BATCH,
        device="cpu",
        evaluator=evaluator,
    )
    lam = ewc_lambda_avalanche(protocol)
    if strategy == "naive":
        learner = Naive(**common)
    elif strategy == "ewc":
        learner = EWC(ewc_lambda=lam, mode="separate", **common)
    elif strategy == "online_ewc":
        learner = EWC(ewc_lambda=lam, mode="online", decay_factor=0.9, **common)
    elif strategy == "si":
        learner = SynapticIntelligence(si_lambda=100.0, eps=1e-3, **common)
    elif strategy == "lwf":
        learner = LwF(alpha=1.0, temperature=2.0, **common)
    elif strategy == "replay":
        plugin = ReplayPlugin(
            mem_size=MEMORY,
            batch_size_mem=REPLAY_BATCH,
            storage_policy=ReservoirSamplingBuffer(MEMORY),
        )
        learner = Naive(plugins=[plugin], **common)
    elif strategy == "agem":
        learner = AGEM(patterns_per_exp=AGEM_PER_EXP, sample_size=AGEM_SAMPLE, **common)
    elif strategy == "derpp":
        learner = DER(
            mem_size=MEMORY, batch_size_mem=REPLAY_BATCH, alpha=0.1, beta=0.5, **common
        )
    elif strategy == "pnn":
        learner = PNNStrategy(**common)
    else:
        raise ValueError(strategy)

    R, train_s, eval_s = [], 0.0, 0.0
    for i, experience in enumerate(benchmark.train_stream):
        # Avalanche 0.6.0's multi-head classifier (inside its PNN) indexes a tensor
        # with this set of classes, which torch refuses: hand it a list
        experience.classes_in_this_experience = sorted(
            experience.classes_in_this_experience
        )
        # Avalanche's evaluation draws from the global generator: seed each phase
        torch.manual_seed(seed * 1000 + i)
        began = time.perf_counter()
        learner.train(experience)
        train_s += time.perf_counter() - began
        torch.manual_seed(seed * 1000 + 500 + i)
        began = time.perf_counter()
        learner.eval(benchmark.test_stream)
        eval_s += time.perf_counter() - began
        metrics = learner.evaluator.get_last_metrics()
        row = [math.nan] * T
        for key, value in metrics.items():
            match = re.match(
                r"Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$", key
            )
            if match:
                row[int(match.group(1))] = float(value)
        R.append(row)
    acc = sum(R[-1]) / T
    bwt = sum(R[-1][j] - R[j][j] for j in range(T - 1)) / (T - 1)
    return {
        "R": R,
        "acc": acc,
        "bwt": bwt,
        "train_s": train_s,
        "eval_s": eval_s,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------
# the driver (metacl's venv)


def update_of(record: dict) -> str | None:
    """metacl's memory update policy of a replay or DER++ record (older records,
    written before the option, used the per-batch update)."""
    if record["library"] == "metacl" and record["strategy"] in ("replay", "derpp"):
        return record.get("memory_update", "batch")
    return None


def _load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_worker(python: str, args: list[str], env: dict, timeout: int) -> dict:
    command = [python, __file__, *args]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def threads_of(record: dict) -> int:
    return record.get("threads", 1)  # records written before the option: 1


def setup_of(record: dict) -> str:
    """The comparison's setup (records written before the option: tensors)."""
    return record.get("setup", "tensors")


def _key(record: dict) -> tuple:
    return (
        record["library"],
        record["protocol"],
        record["strategy"],
        record["seed"],
        record.get("permuted_samples"),
        update_of(record),
        threads_of(record),
        setup_of(record),
        record.get("repeat", 0),
    )


def collapse_repeats(records: list[dict]) -> list[dict]:
    """One record per run key, repeats merged: times are the minimum over the
    repeats (the machine's noise only adds time), peak memory the maximum, and
    ``repeats`` how many runs were merged. ACC and BWT are those of the first
    repeat; both libraries are deterministic for a given seed, so every repeat gives
    the same numbers."""
    merged: dict[tuple, dict] = {}
    for record in records:
        key = _key(record)[:-1]
        if key not in merged:
            merged[key] = {**record, "repeats": 1}
            continue
        into = merged[key]
        into["repeats"] += 1
        for field in ("train_s", "eval_s"):
            into[field] = min(into[field], record[field])
        into["peak_rss_mb"] = max(into["peak_rss_mb"], record["peak_rss_mb"])
    return list(merged.values())


def drive(args: argparse.Namespace) -> None:
    results = Path(args.results)
    done = {_key(r) for r in _load(results)}
    threads = str(args.threads)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        PYTHONWARNINGS="ignore",
    )
    if args.avalanche_setup == "default" and "avalanche" in args.libraries:
        prepare_torchvision_root(Path(args.avalanche_root))
    home = Path(tempfile.gettempdir()) / "avalanche-home"
    home.mkdir(exist_ok=True)
    avalanche_env = dict(env, HOME=str(home))
    for protocol in args.protocols:
        perms_file = None
        for seed in args.seeds:
            for strategy, repeat, library in [
                (strategy, repeat, library)
                for strategy in args.strategies
                if fits(protocol, strategy)
                # repeats alternate the libraries: m, A, m, A, ...
                for repeat in range(args.repeats)
                for library in args.libraries
            ]:
                if library == "bare" and strategy != "naive":
                    continue
                samples = args.permuted_samples if protocol == "permuted" else None
                update = update_of(
                    {
                        "library": library,
                        "strategy": strategy,
                        "memory_update": args.memory_update,
                    }
                )
                fields = {
                    "library": library,
                    "protocol": protocol,
                    "strategy": strategy,
                    "seed": seed,
                    "permuted_samples": samples,
                    "memory_update": update,
                    "threads": args.threads,
                    "setup": args.avalanche_setup,
                }
                if repeat:  # records of a single run keep their old form
                    fields["repeat"] = repeat
                if _key(fields) in done:
                    continue
                worker = ["--worker", library, protocol, strategy, str(seed)]
                worker += ["--threads", threads]
                if update is not None:
                    worker += ["--memory-update", update]
                worker += ["--avalanche-setup", args.avalanche_setup]
                classic = library == "avalanche" and args.avalanche_setup == "default"
                if classic:
                    worker += ["--avalanche-root", args.avalanche_root]
                if samples is not None and library in ("metacl", "bare"):
                    worker += ["--permuted-samples", str(samples)]
                elif samples is not None and classic:
                    subsets_file = (
                        Path(tempfile.gettempdir())
                        / f"metacl-subsets-{seed}-{samples}.json"
                    )
                    if not subsets_file.exists():
                        subsets_file.write_text(
                            json.dumps(permuted_subsets(seed, samples))
                        )
                    worker += ["--subsets", str(subsets_file)]
                elif samples is not None:
                    stream_file = (
                        Path(tempfile.gettempdir())
                        / f"metacl-permuted-{seed}-{samples}.pt"
                    )
                    if not stream_file.exists():
                        export_permuted_stream(seed, samples, stream_file)
                    worker += ["--stream", str(stream_file)]
                if (
                    library == "avalanche"
                    and protocol == "permuted"
                    and (samples is None or classic)
                ):
                    perms_file = (
                        Path(tempfile.gettempdir()) / f"metacl-perms-{seed}.json"
                    )
                    perms_file.write_text(json.dumps(permutations(seed, 10)))
                    worker += ["--perms", str(perms_file)]
                python = (
                    args.avalanche_python if library == "avalanche" else sys.executable
                )
                began = time.perf_counter()
                try:
                    record = _run_worker(
                        python,
                        worker,
                        avalanche_env if library == "avalanche" else env,
                        args.timeout,
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    # one library failing one run does not stop the grid; the
                    # report leaves out what lacks either side
                    print(f"FAILED {library} {protocol} {strategy} seed {seed}:")
                    print(str(error)[-2000:], flush=True)
                    continue
                record.update(fields)
                with open(results, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(
                    f"{library:9s} {protocol:8s} {strategy:10s} seed {seed}"
                    + (f" repeat {repeat}" if args.repeats > 1 else "")
                    + ": ACC "
                    f"{record['acc']:.4f} BWT {record['bwt']:+.4f} train "
                    f"{record['train_s']:.1f}s eval {record['eval_s']:.2f}s "
                    f"({time.perf_counter() - began:.0f}s wall)",
                    flush=True,
                )


def _mean_ci(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    # two-sided 95% Student t quantiles for n - 1 degrees of freedom
    t = {
        1: 12.706,
        2: 4.303,
        3: 3.182,
        4: 2.776,
        5: 2.571,
        6: 2.447,
        7: 2.365,
        8: 2.306,
        9: 2.262,
    }
    sd = statistics.stdev(values)
    return mean, t.get(n - 1, 1.96) * sd / math.sqrt(n)


def report(args: argparse.Namespace) -> None:
    records = []
    for path in args.results.split(","):
        records += _load(Path(path))
    records = collapse_repeats(records)
    setups = sorted(
        {(threads_of(r), setup_of(r)) for r in records if r["library"] == "avalanche"}
    )
    for threads, setup in setups:
        described = SETUPS[setup]
        plural = "s" if threads > 1 else ""
        print(f"\n### {threads} torch thread{plural}, setup {setup}: {described}\n")
        _report_setup(
            [r for r in records if (threads_of(r), setup_of(r)) == (threads, setup)]
        )


def _report_setup(records: list[dict]) -> None:
    print(
        "| protocol | strategy | seeds | metacl ACC | Avalanche ACC | metacl BWT | "
        "Avalanche BWT | ACC goal | train s (m / A) | train ratio (of minima) | "
        "train / naive (m / A) | eval s (m / A) | eval ratio (of minima) | "
        "speed goals (5x / 10x) | "
        "peak MB (m / A) |"
    )
    print("|" + " --- |" * 15)
    variants = sorted(
        {(r["protocol"], r.get("permuted_samples")) for r in records},
        key=lambda v: (PROTOCOLS.index(v[0]), v[1] or 0),
    )
    for protocol, samples in variants:
        title = protocol if samples is None else f"{protocol} ({samples} per exp.)"
        for strategy, update in [
            (name, u)
            for name in STRATEGIES
            for u in sorted(
                {update_of(r) for r in records if r["strategy"] == name}, key=str
            )
        ]:
            rows = {
                lib: [
                    r
                    for r in records
                    if r["library"] == lib
                    and r["protocol"] == protocol
                    and r.get("permuted_samples") == samples
                    and r["strategy"] == strategy
                    and (lib == "avalanche" or update_of(r) == update)
                ]
                for lib in ("metacl", "avalanche")
            }
            label = strategy if update is None else f"{strategy} (update={update})"
            seeds = sorted(
                {r["seed"] for r in rows["metacl"]}
                & {r["seed"] for r in rows["avalanche"]}
            )
            if not seeds:
                continue
            pick = {lib: [r for r in rows[lib] if r["seed"] in seeds] for lib in rows}

            def stat(lib, key, pick=pick):
                return _mean_ci([r[key] for r in pick[lib]])

            def med(lib, key, pick=pick):
                return statistics.median(r[key] for r in pick[lib])

            (ma, mh), (aa, ah) = stat("metacl", "acc"), stat("avalanche", "acc")
            (mb, mbh), (ab, abh) = stat("metacl", "bwt"), stat("avalanche", "bwt")
            if len(seeds) < 2:  # no interval to compare with
                goal = "n/a (1 seed)"
            else:
                goal = "yes" if ma >= aa - ah else "no"
            mt, at = med("metacl", "train_s"), med("avalanche", "train_s")
            me, ae = med("metacl", "eval_s"), med("avalanche", "eval_s")

            def ratio(key, pick=pick, seeds=seeds):
                # per seed, the two runs ran back to back under the same load
                by_seed = {lib: {r["seed"]: r[key] for r in pick[lib]} for lib in pick}
                return statistics.median(
                    by_seed["avalanche"][s] / by_seed["metacl"][s] for s in seeds
                )

            def ratio_of_minima(key, pick=pick):
                # the machine's noise only ever adds time: each library's fastest
                # run over the seeds estimates its time on a quiet machine
                return min(r[key] for r in pick["avalanche"]) / min(
                    r[key] for r in pick["metacl"]
                )

            # each library's training time over its own naive's (medians): what the
            # strategy adds to the floor in each
            naive = {
                lib: [
                    r["train_s"]
                    for r in records
                    if r["library"] == lib
                    and r["protocol"] == protocol
                    and r.get("permuted_samples") == samples
                    and r["strategy"] == "naive"
                    and r["seed"] in seeds
                ]
                for lib in ("metacl", "avalanche")
            }
            over = " / ".join(
                f"{med(lib, 'train_s') / statistics.median(naive[lib]):.2f}"
                if naive[lib]
                else "n/a"
                for lib in ("metacl", "avalanche")
            )
            train_ratio, eval_ratio = ratio("train_s"), ratio("eval_s")
            speed = " / ".join(
                "yes" if value >= goal_ratio else "no"
                for value, goal_ratio in ((train_ratio, 5.0), (eval_ratio, 10.0))
            )
            mm, am = med("metacl", "peak_rss_mb"), med("avalanche", "peak_rss_mb")
            repeats = {r["repeats"] for lib in pick for r in pick[lib]}
            counted = str(len(seeds))
            if repeats != {1}:
                low, high = min(repeats), max(repeats)
                runs = f"{low}" if low == high else f"{low}-{high}"
                counted += f" (min of {runs} runs)"
            print(
                f"| {title} | {label} | {counted} | {ma:.3f} ± {mh:.3f} | "
                f"{aa:.3f} ± {ah:.3f} | {mb:+.3f} ± {mbh:.3f} | {ab:+.3f} ± {abh:.3f} | "
                f"{goal} | {mt:.1f} / {at:.1f} | {train_ratio:.1f}x "
                f"({ratio_of_minima('train_s'):.1f}x) | {over} | {me:.2f} / {ae:.2f} | "
                f"{eval_ratio:.1f}x ({ratio_of_minima('eval_s'):.1f}x) | {speed} | "
                f"{mm:.0f} / {am:.0f} |"
            )

    # the floor: naive fine-tuning as a bare loop, beside both libraries' naive
    floor = [
        (protocol, samples)
        for protocol, samples in variants
        if any(
            r["library"] == "bare"
            and r["protocol"] == protocol
            and r.get("permuted_samples") == samples
            for r in records
        )
    ]
    if not floor:
        return
    print()
    print(
        "| protocol (naive) | train s: bare / metacl / Avalanche | metacl / bare | "
        "Avalanche / bare | eval s: bare / metacl / Avalanche | metacl / bare | "
        "Avalanche / bare |"
    )
    print("|" + " --- |" * 7)
    for protocol, samples in floor:
        title = protocol if samples is None else f"{protocol} ({samples} per exp.)"

        def med(lib, key, protocol=protocol, samples=samples):
            values = [
                r[key]
                for r in records
                if r["library"] == lib
                and r["protocol"] == protocol
                and r.get("permuted_samples") == samples
                and r["strategy"] == "naive"
            ]
            return statistics.median(values) if values else math.nan

        cells = []
        for key in ("train_s", "eval_s"):
            b, m, a = med("bare", key), med("metacl", key), med("avalanche", key)
            cells.append(f"{b:.2f} / {m:.2f} / {a:.2f} | {m / b:.2f}x | {a / b:.2f}x")
        print(f"| {title} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS
    )
    parser.add_argument(
        "--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per (library, strategy, seed), alternating the libraries; the "
        "report takes each library's fastest",
    )
    parser.add_argument(
        "--libraries",
        nargs="+",
        default=["metacl", "avalanche"],
        choices=("metacl", "avalanche", "bare"),
        help="bare: naive fine-tuning as a hand-written loop (the arithmetic floor)",
    )
    parser.add_argument(
        "--results",
        default="compare_avalanche.jsonl",
        help="JSON-lines file of results (--report: several, comma-separated)",
    )
    parser.add_argument("--avalanche-python", default="/tmp/avalanche-venv/bin/python")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument(
        "--report", action="store_true", help="print the table and exit"
    )
    parser.add_argument(
        "--replay-flatness",
        action="store_true",
        help="measure metacl's replay time per batch, first vs last experience",
    )
    parser.add_argument(
        "--worker", nargs=4, metavar=("LIBRARY", "PROTOCOL", "STRATEGY", "SEED")
    )
    parser.add_argument("--perms")
    parser.add_argument("--stream")
    parser.add_argument("--subsets")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of every run, both libraries (default 1)",
    )
    parser.add_argument(
        "--avalanche-setup",
        choices=tuple(SETUPS),
        default="tensors",
        help="; ".join(f"{name}: {text}" for name, text in SETUPS.items()),
    )
    parser.add_argument(
        "--avalanche-root",
        default=str(Path(tempfile.gettempdir()) / "avalanche-data"),
        help="torchvision dataset root for the default setup (made from the Debian "
        "files when missing)",
    )
    parser.add_argument(
        "--memory-update",
        choices=("batch", "experience"),
        default="experience",
        help="when metacl's replay and DER++ fill their memory (default: at the end "
        "of each experience, as Avalanche does)",
    )
    parser.add_argument(
        "--permuted-samples",
        type=int,
        help="training images per permuted experience (default: all 60,000)",
    )
    args = parser.parse_args()

    if args.worker:
        library, protocol, strategy, seed = args.worker
        if library == "metacl":
            out = metacl_worker(
                protocol,
                strategy,
                int(seed),
                permuted_samples=args.permuted_samples,
                memory_update=args.memory_update,
                threads=args.threads,
                setup=args.avalanche_setup,
            )
        elif library == "bare":
            out = bare_worker(
                protocol,
                int(seed),
                args.permuted_samples,
                args.threads,
                args.avalanche_setup,
            )
        else:
            out = avalanche_worker(
                protocol,
                strategy,
                int(seed),
                args.perms,
                args.stream,
                args.avalanche_setup,
                args.avalanche_root,
                args.subsets,
                args.threads,
            )
        print(json.dumps(out))
    elif args.report:
        report(args)
    elif args.replay_flatness:
        print(
            json.dumps(measure_replay_flatness(["replay", "agem", "derpp"]), indent=1)
        )
    else:
        drive(args)


if __name__ == "__main__":
    main()
