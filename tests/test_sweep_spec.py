import pytest
import yaml

from metacl.config import config_hash
from metacl.errors import ConfigError
from metacl.sweep.spec import expand, load_sweep, sweep_from_dict


def sweep_dict(tmp_path, **sweep):
    return {
        "name": "grid",
        "seeds": [0, 1],
        "dataset": {"name": "digits"},
        "scenario": {"name": "class_incremental", "n_experiences": 2},
        "model": {"name": "mlp", "hidden": [8]},
        "strategies": [{"name": "naive"}, {"name": "joint"}],
        "train": {"epochs": 1},
        "output": str(tmp_path / "out"),
        "sweep": sweep,
    }


def test_grid_is_the_product_in_file_order_with_stable_ids(tmp_path):
    data = sweep_dict(
        tmp_path, axes={"optimizer.lr": [0.01, 0.1], "model.hidden": [[8], [16]]}
    )
    spec = sweep_from_dict(data)
    assert spec.grid() == [
        {"optimizer.lr": 0.01, "model.hidden": [8]},
        {"optimizer.lr": 0.01, "model.hidden": [16]},
        {"optimizer.lr": 0.1, "model.hidden": [8]},
        {"optimizer.lr": 0.1, "model.hidden": [16]},
    ]
    runs = expand(spec, spec.grid())
    assert len(runs) == 4 * 2 * 2  # points x strategies x seeds
    assert [(r.label, r.seed) for r in runs[:4]] == [
        ("naive", 0),
        ("naive", 1),
        ("joint", 0),
        ("joint", 1),
    ]
    # the id is the hash of what determines the result, and does not move
    for run in runs:
        assert run.run_id == config_hash(
            run.config.single_run(run.strategy_index, run.seed)
        )
        assert run.config.optimizer["lr"] == run.point["optimizer.lr"]
        assert run.directory == (tmp_path / "out" / "grid" / "runs" / run.run_id)
    again = expand(sweep_from_dict(data), sweep_from_dict(data).grid())
    assert [r.run_id for r in again] == [r.run_id for r in runs]
    assert len({r.run_id for r in runs}) == len(runs)


def test_an_axis_that_does_not_concern_a_strategy_gives_one_run(tmp_path):
    # joint's settings do not change naive's runs: naive runs once per seed
    spec = sweep_from_dict(
        sweep_dict(tmp_path, axes={"strategies.1.label": ["joint-a", "joint-b"]})
    )
    runs = expand(spec, spec.grid())
    assert (
        sorted(r.label for r in runs)
        == ["joint-a"] * 2 + ["joint-b"] * 2 + ["naive"] * 2
    )


def test_resources_fix_threads_so_ids_do_not_depend_on_the_machine(tmp_path):
    spec = sweep_from_dict(sweep_dict(tmp_path, resources={"cpus": 2, "gpus": 0.5}))
    assert spec.resources.cpus == 2 and spec.resources.gpus == 0.5
    assert expand(spec, spec.grid())[0].config.train["threads"] == 2
    default = sweep_from_dict(sweep_dict(tmp_path))
    assert default.resources.cpus == 1
    assert expand(default, default.grid())[0].config.train["threads"] == 1
    data = sweep_dict(tmp_path, resources={"cpus": 1})
    data["train"]["threads"] = 4
    with pytest.raises(
        ConfigError, match="train.threads = 4 exceeds sweep.resources.cpus = 1"
    ):
        sweep_from_dict(data)


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"axis": {}}, "unknown key.*'axis'.*valid keys: axes, search, resources"),
        (
            {"axes": {"optimizer.lr": 0.1}},
            "optimizer.lr = 0.1 must be a non-empty list",
        ),
        ({"axes": {"optimizer.lr": []}}, "must be a non-empty list"),
        ({"axes": {"seeds": [[0], [1]]}}, "'seeds' cannot be an axis"),
        ({"axes": {"optimizer.lr": [0.1, 0.1]}}, "repeats a value"),
        (
            {"axes": {"optimizer.lrr": [0.1]}},
            "at optimizer.lrr=0.1: unknown key.*'lrr'",
        ),
        ({"axes": {"optimizer.lr": [0.1, -1.0]}}, "at optimizer.lr=-1.0: optimizer.lr"),
        (
            {"resources": {"cpus": 0}},
            "sweep.resources.cpus = 0 must be an integer >= 1",
        ),
        (
            {"search": {"axes": {"optimizer.lr": [0.1, 0.2]}}},
            "chosen on validation accuracy.*validation_fraction = 0.0; set it",
        ),
        (
            {
                "axes": {"optimizer.lr": [0.1]},
                "search": {"axes": {"optimizer.lr": [0.2]}},
            },
            "both a grid axis and a search axis",
        ),
    ],
)
def test_bad_sweeps_are_refused_before_anything_runs(tmp_path, sweep, message):
    with pytest.raises(ConfigError, match=message):
        sweep_from_dict(sweep_dict(tmp_path, **sweep))


def test_search_metric_and_seeds_are_checked(tmp_path):
    data = sweep_dict(
        tmp_path, search={"axes": {"optimizer.lr": [0.1]}, "metric": "test_acc"}
    )
    data["scenario"]["validation_fraction"] = 0.2
    with pytest.raises(
        ConfigError, match="metric = 'test_acc' is invalid; choose one of acc, la"
    ):
        sweep_from_dict(data)
    data["sweep"]["search"] = {"axes": {"optimizer.lr": [0.1]}}
    spec = sweep_from_dict(data)
    assert spec.search.seeds == [0] and spec.search.metric == "acc"


def test_a_sweep_file_can_only_name_registered_parts(tmp_path):
    data = sweep_dict(tmp_path)
    data["strategies"] = [{"name": "os.system"}]
    with pytest.raises(
        ConfigError, match="unknown strategy 'os.system'; valid choices:"
    ):
        sweep_from_dict(data)
    # nor through an axis
    data = sweep_dict(tmp_path, axes={"strategies.0.name": ["naive", "subprocess.run"]})
    with pytest.raises(ConfigError, match="unknown strategy 'subprocess.run'"):
        sweep_from_dict(data)
    data = sweep_dict(tmp_path, axes={"dataset.name": ["builtins.eval"]})
    with pytest.raises(ConfigError, match="unknown dataset 'builtins.eval'"):
        sweep_from_dict(data)


def test_python_yaml_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    text = yaml.safe_dump(sweep_dict(tmp_path, axes={"optimizer.lr": [0.1]}))
    text += f"extra: !!python/object/apply:os.system ['touch {marker}']\n"
    (tmp_path / "evil.yaml").write_text(text)
    with pytest.raises(ConfigError, match="cannot parse.*python/object"):
        load_sweep(tmp_path / "evil.yaml")
    assert not marker.exists()


def test_load_sweep_applies_overrides_and_needs_a_sweep_section(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(tmp_path, axes={"optimizer.lr": [0.1]})))
    spec = load_sweep(path, ["sweep.axes.optimizer.lr=[0.01, 0.2]", "train.epochs=2"])
    assert spec.axes == {"optimizer.lr": [0.01, 0.2]}
    assert spec.config_at(spec.grid()[0]).train["epochs"] == 2
    assert spec.store == tmp_path / "out" / "results.sqlite"
    assert load_sweep(path, store=tmp_path / "x.sqlite").store == tmp_path / "x.sqlite"
    plain = tmp_path / "plain.yaml"
    plain.write_text("seeds: [0]\n")
    with pytest.raises(ConfigError, match="has no `sweep` section.*metacl run"):
        load_sweep(plain)


def test_an_axis_can_vary_a_part_given_by_name_only(tmp_path):
    data = sweep_dict(tmp_path, axes={"scenario.n_experiences": [2, 5]})
    data["scenario"] = "class_incremental"
    spec = sweep_from_dict(data)
    assert [spec.config_at(p).scenario["n_experiences"] for p in spec.grid()] == [2, 5]
