import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from metacl.errors import ConfigError
from metacl.experiment import CHECKPOINT, RESULT
from metacl.sweep.runner import (
    LocalRunner,
    RayRunner,
    default_workers,
    import_ray,
    make_runner,
    run_sweep,
    usable_cores,
)
from metacl.sweep.spec import expand, sweep_from_dict
from metacl.sweep.store import ResultStore

T = 5  # experiences per run


def sweep_data(output, *, epochs=1, lrs=(0.05, 0.1), seeds=(0, 1, 2), hidden=32):
    return {
        "name": "kill",
        "seeds": list(seeds),
        "dataset": {"name": "digits"},
        "scenario": {"name": "class_incremental", "n_experiences": T},
        "model": {"name": "mlp", "hidden": [hidden]},
        "strategy": {"name": "naive"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": epochs, "batch_size": 32},
        "output": str(output),
        "sweep": {"axes": {"optimizer.lr": list(lrs)}},
    }


def matrices(store_path):
    with ResultStore(store_path) as store:
        return {r.run_id: (r.R, r.b) for r in store.records()}


def test_finished_runs_are_skipped_not_redone(tmp_path):
    spec = sweep_from_dict(sweep_data(tmp_path / "out", seeds=(0,)))
    first = run_sweep(spec, runner=LocalRunner(1))
    assert (first.planned, first.skipped, first.finished) == (2, 0, 2) and first.ok
    results = sorted(spec.directory.glob(f"runs/*/{RESULT}"))
    stamps = [p.stat().st_mtime_ns for p in results]
    second = run_sweep(spec, runner=LocalRunner(1))
    assert (second.planned, second.skipped, second.finished) == (2, 2, 0)
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert matrices(spec.store).keys() == {r.run_id for r in expand(spec, spec.grid())}
    # a run the store lost (killed between its result file and its record) is
    # recorded again from its result file without training
    with ResultStore(spec.store) as store:
        store._conn.execute("DELETE FROM runs WHERE rowid = 1")
    third = run_sweep(spec, runner=LocalRunner(1))
    assert (third.skipped, third.finished) == (1, 1)
    assert [p.stat().st_mtime_ns for p in results] == stamps


def test_a_failing_run_does_not_stop_the_others(tmp_path):
    """A checkpoint of another configuration in a run's folder is refused with a
    clear error; the other runs finish."""
    spec = sweep_from_dict(sweep_data(tmp_path / "out", seeds=(0,)))
    runs = expand(spec, spec.grid())
    other = sweep_from_dict(sweep_data(tmp_path / "other", seeds=(0,), hidden=8))
    run_sweep(other, runner=LocalRunner(1))
    foreign = next((other.directory / "runs").glob(f"*/{RESULT}")).parent
    runs[0].directory.mkdir(parents=True)
    (runs[0].directory / CHECKPOINT).write_bytes((foreign / CHECKPOINT).read_bytes())
    report = run_sweep(spec, runner=LocalRunner(1))
    assert list(report.failed) == [runs[0].run_id]
    assert "belongs to another configuration" in report.failed[runs[0].run_id]
    assert report.finished == 1 and runs[1].run_id in matrices(spec.store)


def test_a_checkpoint_holding_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    spec = sweep_from_dict(sweep_data(tmp_path / "out", seeds=(0,), lrs=(0.05,)))
    run = expand(spec, spec.grid())[0]
    run.directory.mkdir(parents=True)
    torch.save(
        {"config_hash": run.run_id, "model": Payload()}, run.directory / CHECKPOINT
    )
    report = run_sweep(spec, runner=LocalRunner(1))
    assert "cannot read checkpoint" in report.failed[run.run_id]
    assert "never unpickled" in report.failed[run.run_id]
    assert not marker.exists()


def test_workers_fit_the_cores():
    cores = usable_cores()
    assert default_workers(1) == cores
    assert default_workers(cores) == 1 and default_workers(cores + 5) == 1
    assert LocalRunner(cpus_per_run=1).slots == cores
    with pytest.raises(ConfigError, match="workers = 0 must be an integer >= 1"):
        LocalRunner(0)


def test_ray_is_optional_and_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError, match=r'pip install "metacl\[ray\]"'):
        import_ray()
    with pytest.raises(ConfigError, match=r'pip install "metacl\[ray\]"'):
        RayRunner("local")
    spec = sweep_from_dict(sweep_data(tmp_path, seeds=(0,)))
    with pytest.raises(ConfigError, match="--workers applies to the local runner"):
        make_runner(spec, workers=2, ray="local")


def _children(pid):
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _state(directory):
    """(finished?, next experience from the checkpoint, log length) of a run folder."""
    if (directory / RESULT).exists():
        return True, T, None
    next_experience = 0
    if (directory / CHECKPOINT).exists():
        state = torch.load(directory / CHECKPOINT, weights_only=True)
        next_experience = state["next_experience"]
    log = directory / "run.log"
    return False, next_experience, len(log.read_text()) if log.exists() else 0


def test_kill_9_mid_sweep_then_restart_gives_the_uninterrupted_results(tmp_path):
    """Kill a real two-worker sweep process with SIGKILL while runs are in progress,
    start it again, and get the results of an uninterrupted sweep, having redone at
    most the experiences that were in progress."""
    # runs long enough (about 0.3 s an experience) that one is still between two
    # checkpoints when the kill lands, even on a loaded machine
    data = sweep_data(tmp_path / "cut", epochs=30, hidden=64, seeds=(0, 1))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(data))
    reference = sweep_from_dict({**data, "output": str(tmp_path / "full")})
    assert run_sweep(reference, runner=LocalRunner(1)).ok
    expected = matrices(reference.store)
    assert len(expected) == 4

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "metacl.cli",
        "sweep",
        str(tmp_path / "sweep.yaml"),
        "--workers",
        "2",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    runs_dir = tmp_path / "cut" / "kill" / "runs"
    deadline = time.time() + 180
    # wait for a finished run and a run in the middle of its experiences, with at
    # least one whole experience still ahead of it: a run one experience from its
    # end could finish between this check and the kill
    while time.time() < deadline:
        folders = list(runs_dir.glob("*")) if runs_dir.exists() else []
        done = [f for f in folders if (f / RESULT).exists()]
        mid = [
            f
            for f in folders
            if (f / CHECKPOINT).exists()
            and not (f / RESULT).exists()
            and 0 < _state(f)[1] <= T - 2
        ]
        if done and mid:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    else:
        pytest.fail("the sweep did not reach the middle of a run in time")
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    # the workers die with the driver: no orphan keeps training
    deadline = time.time() + 15
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)
    at_kill = {f.name: _state(f) for f in runs_dir.glob("*")}
    recorded_at_kill = len(matrices(tmp_path / "cut" / "results.sqlite"))
    assert any(s[0] for s in at_kill.values())
    assert any(not s[0] and 0 < s[1] < T for s in at_kill.values())

    restart = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr
    # the store is what says finished: a run whose result file was written just
    # before the kill, but not yet recorded, is recorded now without training
    assert f"{recorded_at_kill} already finished" in restart.stdout

    # the same results as the uninterrupted sweep, bit for bit
    assert matrices(tmp_path / "cut" / "results.sqlite") == expected

    # finished runs were not redone; interrupted ones resumed at their checkpoint
    redone = 0
    for name, (finished, next_experience, log_length) in at_kill.items():
        log = (runs_dir / name / "run.log").read_text()
        before = log[:log_length] if log_length is not None else log
        after = log[log_length:] if log_length is not None else ""
        trained_after = [int(i) for i in re.findall(r"after experience (\d+)", after)]
        if finished:
            assert trained_after == []
            continue
        assert trained_after == list(range(next_experience, T))
        if next_experience:
            assert f"resumed at experience {next_experience}" in after
        # an experience finished but not yet checkpointed when killed is redone
        trained_before = [int(i) for i in re.findall(r"after experience (\d+)", before)]
        redone += len([i for i in trained_before if i >= next_experience])
        redone += 1  # the experience in progress at the kill (if one was)
    workers_count = 2
    assert redone <= workers_count + sum(1 for s in at_kill.values() if not s[0])


def test_each_record_says_where_its_run_ran(tmp_path):
    """The environment stored with a run is the worker's, taken while the run's
    threads were set, and a run in the driver's process gives its threads back."""
    data = sweep_data(tmp_path / "out", seeds=(0,))
    data["sweep"]["resources"] = {"cpus": 1}
    spec = sweep_from_dict(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        report = run_sweep(spec, runner=LocalRunner(2))
        assert report.ok and torch.get_num_threads() == 2
        with ResultStore(spec.store) as store:
            records = store.records()
        workers = {r.environment["worker"] for r in records}
        assert workers == {o.worker for o in report.outcomes}
        assert all(not w.endswith(f":{os.getpid()}") for w in workers)
        assert {r.environment["torch_threads"] for r in records} == {"1"}

        serial = sweep_from_dict({**data, "output": str(tmp_path / "serial")})
        assert run_sweep(serial, runner=LocalRunner(1)).ok
        assert torch.get_num_threads() == 2  # the driver's threads are back
        with ResultStore(serial.store) as store:
            assert {r.environment["worker"] for r in store.records()} == {
                f"{__import__('socket').gethostname()}:{os.getpid()}"
            }
    finally:
        torch.set_num_threads(threads)


def test_reusing_runs_of_other_code_is_said(tmp_path, caplog):
    spec = sweep_from_dict(sweep_data(tmp_path / "out", seeds=(0,)))
    assert run_sweep(spec, runner=LocalRunner(1)).ok
    with caplog.at_level("WARNING", logger="metacl"):
        run_sweep(spec, runner=LocalRunner(1))
    assert "code version" not in caplog.text  # the same code: nothing to say
    with ResultStore(spec.store) as store:
        store._conn.execute("UPDATE runs SET code_version = '0.0.1' WHERE rowid = 1")
    with caplog.at_level("WARNING", logger="metacl"):
        again = run_sweep(spec, runner=LocalRunner(1))
    assert again.skipped == 2 and again.finished == 0
    assert "1 finished runs were recorded by code version(s) 0.0.1" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="metacl"):
        run_sweep(spec, runner=LocalRunner(1))
    assert "code version" in caplog.text  # still said: the record is unchanged


def test_a_run_folder_held_by_another_process_is_waited_for(tmp_path, lock_holder):
    """Sweep workers take the run folder's lock (the one ``metacl run`` takes) and
    wait for it: nothing is written into a folder another process holds, and the run
    goes ahead as soon as that process dies."""
    spec = sweep_from_dict(sweep_data(tmp_path / "out", seeds=(0,)))
    held = expand(spec, spec.grid())[0].directory
    reports = []
    with lock_holder(held):
        sweep = threading.Thread(
            target=lambda: reports.append(run_sweep(spec, runner=LocalRunner(1)))
        )
        sweep.start()
        time.sleep(3)
        assert sweep.is_alive()
        assert not (held / RESULT).exists() and not (held / CHECKPOINT).exists()
    sweep.join(timeout=120)
    assert not sweep.is_alive()
    assert reports[0].ok and reports[0].finished == 2
    assert (held / RESULT).is_file()
