"""The sweep runner against a real local Ray (the `ray` extra: pip install
"metacl[ray]"). Ray starts once for the module with two CPUs and no dashboard."""

import pytest
import yaml

from metacl.cli import main
from metacl.sweep.runner import LocalRunner, RayRunner, run_sweep
from metacl.sweep.spec import sweep_from_dict
from metacl.sweep.store import ResultStore


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=80 * 2**20,
    )
    yield ray
    ray.shutdown()


def sweep_data(output):
    return {
        "name": "ray",
        "seeds": [0, 1],
        "dataset": {"name": "digits"},
        "scenario": {
            "name": "class_incremental",
            "n_experiences": 3,
            "classes_per_experience": [4, 3, 3],
        },
        "model": {"name": "mlp", "hidden": [16]},
        "strategies": [{"name": "naive"}, {"name": "joint"}],
        "optimizer": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 1, "batch_size": 32},
        "output": str(output),
        "sweep": {"axes": {"optimizer.momentum": [0.0, 0.9]}, "resources": {"cpus": 1}},
    }


def matrices(path):
    with ResultStore(path) as store:
        return {r.run_id: (r.R, r.b) for r in store.records()}


def test_ray_runs_give_the_local_results(local_ray, tmp_path):
    local = sweep_from_dict(sweep_data(tmp_path / "local"))
    assert run_sweep(local, runner=LocalRunner(1)).ok

    spec = sweep_from_dict(sweep_data(tmp_path / "ray"))
    runner = RayRunner("local", cpus=spec.resources.cpus)
    assert runner.slots == 2  # two CPUs, one per run
    report = run_sweep(spec, runner=runner)
    runner.close()  # joined an existing Ray: leaves it running
    assert local_ray.is_initialized()
    assert report.ok and report.finished == 8
    assert matrices(spec.store) == matrices(local.store)
    # the runs ran in Ray's worker processes, not in this one
    workers = {o.worker for o in report.outcomes}
    assert all(not w.endswith(f":{__import__('os').getpid()}") for w in workers)
    with ResultStore(spec.store) as store:
        assert {r.environment["worker"] for r in store.records()} == workers


def test_cli_sweep_on_ray_then_skips_what_is_finished(local_ray, tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    data = sweep_data(tmp_path / "out")
    data["sweep"]["axes"] = {"optimizer.momentum": [0.5]}
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(path), "--ray", "local", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert (
        "Ray (local), 2 runs at a time" in out
        and "4 runs: 0 already finished, 4 ran" in out
    )
    assert main(["sweep", str(path), "--ray", "local", "--quiet"]) == 0
    assert "4 runs: 4 already finished, 0 ran" in capsys.readouterr().out
