import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from metacl.config import resolve_config
from metacl.errors import CheckpointError, ConfigError, ScenarioError, TrainingError
from metacl.experiment import load_results, run_experiment, run_single


def config(**extra):
    data = {
        "seeds": [0],
        "scenario": {"name": "class_incremental", "n_experiences": 5},
        "model": {"name": "mlp", "hidden": [32]},
        "strategy": {"name": "naive"},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 2, "batch_size": 16},
    }
    data.update(extra)
    if "strategies" in extra:
        del data["strategy"]
    return resolve_config(data)


def test_same_seed_same_matrix_bit_for_bit(blobs):
    cfg = config()
    a = run_single(cfg, 0, 0, dataset=blobs)
    b = run_single(cfg, 0, 0, dataset=blobs)
    c = run_single(cfg, 0, 1, dataset=blobs)
    assert a.R == b.R and a.b == b.b
    assert a.R != c.R
    assert len(a.R) == 5 and all(len(row) == 5 for row in a.R)


def test_resume_after_stop_equals_uninterrupted(blobs, tmp_path):
    cfg = config(optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    full = run_single(cfg, 0, 0, dataset=blobs, directory=tmp_path / "full")
    assert (
        run_single(cfg, 0, 0, dataset=blobs, directory=tmp_path / "cut", stop_after=2)
        is None
    )
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert saved["next_experience"] == 2 and len(saved["R"]) == 2
    resumed = run_single(cfg, 0, 0, dataset=blobs, directory=tmp_path / "cut")
    assert resumed.R == full.R and resumed.b == full.b


def test_checkpoint_of_another_configuration_is_refused(blobs, tmp_path):
    run_single(config(), 0, 0, dataset=blobs, directory=tmp_path, stop_after=1)
    other = config(optimizer={"name": "sgd", "lr": 0.2})
    with pytest.raises(CheckpointError, match="another configuration.*--out"):
        run_single(other, 0, 0, dataset=blobs, directory=tmp_path)


def test_corrupt_checkpoint_is_a_clear_error(blobs, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint.*delete it"):
        run_single(config(), 0, 0, dataset=blobs, directory=tmp_path)


def test_nan_loss_stops_with_a_clear_error_and_keeps_finished_work(blobs, tmp_path):
    # experience 2 holds classes 4 and 5; poison one of its inputs
    index = int((blobs.train_y == 4).nonzero()[0])
    blobs.train_x[index] = float("nan")
    with pytest.raises(
        TrainingError, match="experience 2: the training loss became nan at epoch 0"
    ):
        run_single(config(), 0, 0, dataset=blobs, directory=tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["next_experience"] == 2


def test_joint_has_one_row_and_only_acc(blobs):
    result = run_single(config(strategy={"name": "joint"}), 0, 0, dataset=blobs)
    assert len(result.R) == 1 and len(result.R[0]) == 5
    assert math.isnan(result.metrics["bwt"]) and result.metrics["acc"] > 0.5


def test_multi_head_needs_task_incremental(blobs):
    cfg = config(model={"name": "mlp", "hidden": [8], "multi_head": True})
    with pytest.raises(ScenarioError, match="multi_head = true needs task ids"):
        run_single(cfg, 0, 0, dataset=blobs)
    ok = config(
        model={"name": "mlp", "hidden": [8], "multi_head": True},
        scenario={"name": "task_incremental"},
    )
    result = run_single(ok, 0, 0, dataset=blobs)
    # task-incremental with a head per task on separable blobs: near perfect
    assert result.metrics["acc"] > 0.9


def test_validation_matrix_when_asked(blobs):
    cfg = config(scenario={"name": "class_incremental", "validation_fraction": 0.2})
    result = run_single(cfg, 0, 0, dataset=blobs)
    assert len(result.R_valid) == 5 and len(result.R_valid[0]) == 5


def test_digits_naive_forgets_and_joint_does_not(tmp_path):
    """The default experiment's claim, on real data: class-incremental fine-tuning
    keeps only the last experience, joint training keeps everything."""
    cfg = config(
        strategies=[{"name": "naive"}, {"name": "joint"}],
        model={"name": "mlp", "hidden": [128]},
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
        train={"epochs": 5, "batch_size": 32},
    )
    result = run_experiment(cfg, directory=tmp_path / "run")
    naive, joint = result.summary["naive"], result.summary["joint"]
    assert naive["acc"]["mean"] < 0.3 and naive["forgetting"]["mean"] > 0.8
    assert joint["acc"]["mean"] > 0.9
    assert naive["la"]["mean"] > 0.95
    files = {p.name for p in (tmp_path / "run").rglob("*")}
    assert {
        "config.yaml",
        "run.log",
        "summary.json",
        "summary.csv",
        "result.json",
        "accuracy_matrix.csv",
        "checkpoint.pt",
    } <= files
    loaded = load_results(tmp_path / "run")
    assert [r.R for r in loaded.results] == [r.R for r in result.results]
    # a finished run is skipped, not redone
    again = run_experiment(cfg, directory=tmp_path / "run")
    assert [r.R for r in again.results] == [r.R for r in result.results]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """kill -9 in the middle of a CLI run; the rerun finishes with the result of an
    uninterrupted run."""
    (tmp_path / "cfg.yaml").write_text(
        "seeds: [0]\nstrategy: {name: naive}\nmodel: {name: mlp, hidden: [64]}\n"
        "train: {epochs: 4, batch_size: 16, threads: 1}\nscenario: {name: permuted, n_experiences: 6}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "metacl.cli",
        "run",
        str(tmp_path / "cfg.yaml"),
        "--quiet",
        "--no-report",
    ]
    subprocess.run(
        cmd + ["--out", str(tmp_path / "full")],
        check=True,
        env=env,
        capture_output=True,
    )

    proc = subprocess.Popen(
        cmd + ["--out", str(tmp_path / "cut")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = tmp_path / "cut" / "naive" / "seed_0" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(checkpoint, weights_only=True)
    assert 1 <= saved["next_experience"] < 6, "the run finished before it was killed"
    subprocess.run(
        cmd + ["--out", str(tmp_path / "cut")], check=True, env=env, capture_output=True
    )
    full = json.loads((tmp_path / "full/naive/seed_0/result.json").read_text())
    cut = json.loads((tmp_path / "cut/naive/seed_0/result.json").read_text())
    assert cut["R"] == full["R"]


def test_sine_regression_stream_records_losses_and_forgetting():
    cfg = resolve_config(
        {
            "seeds": [0],
            "dataset": {"name": "sine", "n_functions": 3, "train_per_function": 100},
            "scenario": {"name": "grouped"},
            "model": {"name": "mlp", "hidden": [40, 40]},
            "strategy": {"name": "naive"},
            "optimizer": {"name": "adam", "lr": 0.01},
            "train": {"epochs": 15, "batch_size": 25, "threads": 1},
        }
    )
    result = run_single(cfg, 0, 0)
    assert result.kind == "regression"
    R = torch.tensor(result.R)
    # each function is fitted when learned (MSE far below the untrained model's) ...
    assert all(R[j, j] < 0.5 * result.b[j] for j in range(3))
    # ... and the earlier ones are forgotten: their loss rises afterwards
    assert result.metrics["bwt"] > 0 and result.metrics["forgetting"] > 0


class CountingProgress:
    """Records the batches the runner announces and reports per experience."""

    def __init__(self) -> None:
        self.announced: list[int] = []
        self.advanced: list[int] = []

    def begin(self, description: str, total: int) -> None:
        self.announced.append(total)
        self.advanced.append(0)

    def advance(self, n: int) -> None:
        self.advanced[-1] += n

    def end(self) -> None:
        pass


def test_an_online_stream_is_seen_once_in_small_batches(blobs):
    scenario = {"name": "class_incremental", "n_experiences": 5, "online": True}
    cfg = config(
        scenario=scenario,
        train={"epochs": 3, "batch_size": 16, "online_batch_size": 7},
    )
    progress = CountingProgress()
    result = run_single(cfg, 0, 0, dataset=blobs, progress=progress)
    sizes = [80] * 5  # 400 training samples, 2 of 10 classes per experience
    assert result.timings["train_samples"] == sum(sizes)  # one pass, not three
    assert progress.announced == [math.ceil(n / 7) for n in sizes]  # batches of 7
    assert progress.advanced == progress.announced
    # the same stream offline: every epoch, in batches of 16
    offline = config(scenario={**scenario, "online": False}, train=cfg.train)
    progress = CountingProgress()
    result = run_single(offline, 0, 0, dataset=blobs, progress=progress)
    assert result.timings["train_samples"] == 3 * sum(sizes)
    assert progress.announced == [3 * math.ceil(n / 16) for n in sizes]


def test_peak_memory_is_each_runs_own(blobs):
    """A run reports the peak of its own run, not the high-water mark its process
    reached before it (a sweep worker, several seeds in one process)."""
    cfg = config()
    small = run_single(cfg, 0, 0, dataset=blobs)
    assert small.timings["peak_rss_mb"] > 0
    assert small.timings["train_samples_per_s"] > 0
    assert small.timings["eval_samples_per_s"] > 0

    # raise this process's high-water mark by 512 MiB, then give the memory back
    big = torch.ones(2**27)  # 512 MiB of float32, touched
    del big
    again = run_single(cfg, 0, 0, dataset=blobs)
    assert again.timings["peak_rss_mb"] < small.timings["peak_rss_mb"] + 256


def test_a_run_directory_in_use_is_refused_and_freed_when_its_process_dies(
    tmp_path, lock_holder
):
    """A second process given a directory in use gets a clear error and writes
    nothing there; once the holder is killed (-9), the directory is usable at once."""
    directory = tmp_path / "run"
    directory.mkdir()
    with lock_holder(directory) as holder:
        (tmp_path / "cfg.yaml").write_text(
            "seeds: [0]\nstrategy: {name: naive}\nmodel: {name: mlp, hidden: [8]}\n"
        )
        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "metacl.cli",
                "run",
                str(tmp_path / "cfg.yaml"),
                "--out",
                str(directory),
                "--quiet",
                "--no-report",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0
        assert f"in use by another metacl process (pid {holder.pid})" in (
            refused.stderr + refused.stdout
        )
        assert not (directory / "config.yaml").exists()
        with pytest.raises(CheckpointError, match=str(holder.pid)):
            run_experiment(config(), directory=directory)
    result = run_experiment(config(), directory=directory)
    assert len(result.results[0].R) == 5
    assert (directory / "config.yaml").exists()


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ({"name": "derpp", "alpha": -2.0}, ConfigError, "alpha = -2.0"),
        ("pnn", ScenarioError, "gives no task id at test time"),
    ],
)
def test_every_strategy_is_checked_before_anything_trains(
    tmp_path, bad, error, message
):
    """A value only a strategy's constructor refuses, or a strategy that does not fit
    the scenario, stops the experiment before the strategies listed before it train,
    and the error names the strategy."""
    cfg = resolve_config(
        {
            "seeds": [0],
            "strategies": ["naive", bad],
            "model": {"name": "mlp", "hidden": [8]},
            "train": {"epochs": 1},
        }
    )
    label = cfg.strategies[1]["label"]
    with pytest.raises(error, match=rf"strategies\[1\] \({label}\): .*{message}"):
        run_experiment(cfg, directory=tmp_path / "run")
    assert not (tmp_path / "run" / "naive").exists()
