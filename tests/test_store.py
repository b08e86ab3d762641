import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from metacl.config import config_hash, resolve_config
from metacl.experiment import run_experiment, run_single
from metacl.sweep.store import (
    ResultStore,
    RunRecord,
    StoreError,
    code_version,
    environment,
    flatten,
    record_from_result,
)


def make_record(run_id: str, value: float, **extra) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        config={"seed": 0, "strategy": {"name": "naive", "label": "naive"}},
        label="naive",
        strategy="naive",
        seed=0,
        stream="class_incremental(digits)",
        R=[[value, 0.0], [value / 2, value]],
        b=[0.1, 0.1],
        **extra,
    )


def test_record_round_trip_keeps_every_field(tmp_path):
    record = make_record(
        "a1",
        0.8,
        R_valid=[[0.7, 0.0], [0.3, 0.9]],
        wall_s=1.5,
        name="exp",
        timings={"train_s": 1.0},
        code_version="v",
        environment={"host": "h"},
    )
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.record(record)
        back = store.get("a1")
    assert back.R == record.R and back.b == record.b and back.R_valid == record.R_valid
    assert back.metrics == record.metrics and back.metrics["acc"] == pytest.approx(0.6)
    assert math.isnan(back.metrics["fwt"]) is False
    assert (back.name, back.wall_s, back.timings, back.environment) == (
        "exp",
        1.5,
        {"train_s": 1.0},
        {"host": "h"},
    )
    assert back.valid_acc == pytest.approx(0.6) and back.valid_la == pytest.approx(0.8)
    assert back.recorded_at  # set on write


def test_same_run_id_keeps_one_record_the_latest(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.record(make_record("a1", 0.5))
        store.record(make_record("a1", 0.9))
        store.record(make_record("b2", 0.4), sweep="sw", role="grid", point={"x": 1})
        assert [r.metrics["acc"] for r in store.records()] == [0.9 * 0.75, 0.4 * 0.75]
        assert store.finished(["a1", "b2", "zz"]) == {"a1", "b2"}
        assert [r.run_id for r in store.records(sweep="sw")] == ["b2"]
        assert store.sweeps() == ["sw"]


def test_set_members_replaces_a_sweeps_runs_of_those_roles(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        for run_id in ("a", "b", "c"):
            store.record(make_record(run_id, 0.5))
        store.set_members("sw", [("a", "grid", {}), ("b", "grid", {})], roles=("grid",))
        store.set_members("sw", [("c", "final", {})], roles=("final",))
        store.set_members("sw", [("b", "grid", {})], roles=("grid",))  # file edited
        assert {r.run_id for r in store.records(sweep="sw")} == {"b", "c"}
        assert [r.run_id for r in store.records(sweep="sw", roles=("final",))] == ["c"]


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path):
    bad = tmp_path / "results.sqlite"
    bad.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(
        StoreError, match="results.sqlite.*not a usable metacl results store"
    ):
        ResultStore(bad)


def test_store_uses_wal_and_a_busy_timeout(tmp_path):
    ResultStore(tmp_path / "s.sqlite", timeout_s=7).close()
    conn = sqlite3.connect(tmp_path / "s.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


WRITER = r"""
import sys, time
from metacl.sweep.store import ResultStore, RunRecord
path, writer, count, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
store = ResultStore(path)
while time.time() < start:
    time.sleep(0.001)
print("began", time.time(), flush=True)
for i in range(count):
    value = writer * 1000 + i
    store.record(
        RunRecord(run_id=f"w{writer}-{i}", config={"seed": i, "writer": writer},
                  label=f"w{writer}", strategy="naive", seed=i, stream="s",
                  R=[[value, value + 0.5]] * 2, b=[float(writer), float(i)],
                  metrics={"acc": value}),
        sweep=f"sweep{writer % 2}", role="grid", point={"i": i},
    )
    print(i, flush=True)
print("ended", time.time(), flush=True)
"""


def test_concurrent_writers_lose_and_corrupt_nothing(tmp_path):
    """Six processes (two 'sweeps') write 800 records each into one store at once."""
    path = tmp_path / "shared.sqlite"
    start = time.time() + 3.0  # every writer begins at the same moment
    writers, count = 6, 800
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(w), str(count), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0] * writers
    # the writers really overlapped: each wrote while at least one other did
    began = [float(out[out.index("began") + 1]) for out in outputs]
    ended = [float(out[out.index("ended") + 1]) for out in outputs]
    for w in range(writers):
        assert any(
            began[o] < ended[w] and began[w] < ended[o]
            for o in range(writers)
            if o != w
        )
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with ResultStore(path) as store:
        records = store.records()
        assert len(records) == writers * count
        for r in records:
            writer, i = (int(x) for x in r.run_id[1:].split("-"))
            value = writer * 1000 + i
            assert r.R == [[value, value + 0.5]] * 2 and r.b == [writer, i]
            assert (
                r.config == {"seed": i, "writer": writer} and r.metrics["acc"] == value
            )
        assert len(store.records(sweep="sweep0")) == 3 * count


def test_kill_9_of_a_writer_keeps_every_committed_record(tmp_path):
    path = tmp_path / "s.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "1", "100000", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("began")
    committed = -1
    while committed < 150:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with ResultStore(path) as store:
        records = store.records()
    # every record reported committed is there, whole, and nothing half-written:
    # the records are exactly the first n the writer wrote (it kept writing while
    # its printed lines waited in the pipe, so n may exceed what we read)
    assert len(records) >= committed + 1
    assert [r.run_id for r in records] == [f"w1-{i}" for i in range(len(records))]
    assert all(r.R == [[1000 + r.seed, 1000.5 + r.seed]] * 2 for r in records)


def test_flatten_and_versions():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": 3}) == {
        "a.b": 1,
        "a.c.d": [2],
        "e": 3,
    }
    import metacl

    assert code_version().startswith(metacl.__version__)
    env = environment()
    assert {"torch", "python", "host", "torch_threads"} <= set(env)


def tiny_config(**extra):
    data = {
        "name": "tiny",
        "seeds": [0],
        "scenario": {"name": "class_incremental", "n_experiences": 2},
        "model": {"name": "mlp", "hidden": [8]},
        "strategy": {"name": "naive"},
        "train": {"epochs": 1, "batch_size": 64},
    }
    data.update(extra)
    return resolve_config(data)


def test_record_from_a_real_result(blobs):
    cfg = tiny_config()
    result = run_single(cfg, 0, 0, dataset=blobs)
    record = record_from_result(result, cfg.single_run(0, 0), name="tiny", wall_s=0.5)
    assert record.run_id == config_hash(cfg.single_run(0, 0)) == result.config_hash
    assert record.R == result.R and record.metrics == result.metrics
    assert record.config["strategy"]["label"] == "naive"
    json.dumps(record.config)  # stored as JSON


def test_metacl_run_records_each_finished_run_once(tmp_path):
    cfg = tiny_config(seeds=[0, 1])
    result = run_experiment(cfg, directory=tmp_path / "out" / "tiny")
    store_path = tmp_path / "out" / "results.sqlite"  # beside the run directory
    with ResultStore(store_path) as store:
        records = store.records()
        assert [r.R for r in records] == [r.R for r in result.results]
        assert {r.name for r in records} == {"tiny"}
        first = [r.recorded_at + str(r.wall_s) for r in records]
    # a rerun skips finished runs and keeps their records as they were
    run_experiment(cfg, directory=tmp_path / "out" / "tiny")
    with ResultStore(store_path) as store:
        assert [r.recorded_at + str(r.wall_s) for r in store.records()] == first


def test_metacl_run_store_path_or_none(tmp_path):
    target = tmp_path / "elsewhere" / "mine.sqlite"
    run_experiment(tiny_config(store=str(target)), directory=tmp_path / "a")
    with ResultStore(target) as store:
        assert len(store.records()) == 1
    run_experiment(tiny_config(store=False), directory=tmp_path / "b" / "run")
    assert not (tmp_path / "b" / "results.sqlite").exists()
    with pytest.raises(Exception, match="store = 3 must be a file path"):
        tiny_config(store=3)


def test_a_failed_write_is_rolled_back_and_the_store_stays_usable(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        with pytest.raises(StoreError, match="cannot write probe to the results store"):
            with store._write("probe") as conn:
                conn.execute(
                    "INSERT INTO sweep_runs VALUES ('s', 'lost', 'grid', '{}')"
                )
                conn.execute("INSERT INTO no_such_table VALUES (1)")
        assert not store._conn.in_transaction
        store.record(make_record("kept", 0.5), sweep="s")
        assert store.finished(["kept", "lost"]) == {"kept"}
        members = store._conn.execute("SELECT run_id FROM sweep_runs").fetchall()
        assert members == [("kept",)]  # the half-done write left nothing
