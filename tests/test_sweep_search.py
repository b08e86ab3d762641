import math

import pytest

import metacl.sweep.runner as runner_module
from metacl.config import config_hash
from metacl.sweep.runner import LocalRunner, run_sweep
from metacl.sweep.search import choose_configurations, validation_score
from metacl.sweep.spec import expand, sweep_from_dict
from metacl.sweep.store import ResultStore, RunRecord


def search_sweep(tmp_path, lrs, **extra):
    data = {
        "name": "search",
        "seeds": [0, 1],
        "dataset": {"name": "digits"},
        "scenario": {
            "name": "class_incremental",
            "n_experiences": 2,
            "validation_fraction": 0.2,
        },
        "model": {"name": "mlp", "hidden": [16]},
        "strategies": [{"name": "naive"}, {"name": "joint"}],
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 2, "batch_size": 32},
        "output": str(tmp_path / "out"),
        "sweep": {"search": {"axes": {"optimizer.lr": lrs}, "seeds": [0, 1]}},
    }
    data.update(extra)
    return sweep_from_dict(data)


def make_record(R, R_valid=None, run_id="r", **fields):
    """A one-strategy record with the matrices given."""
    return RunRecord(
        run_id=run_id,
        config={},
        label="x",
        strategy="x",
        seed=0,
        stream="s",
        R=R,
        b=[0.0] * len(R[0]),
        R_valid=R_valid,
        **fields,
    )


def fake(run_id, valid, test):
    return make_record(
        [[test, test], [test, test]], [[valid, valid], [valid, valid]], run_id=run_id
    )


def records_for(spec, scores):
    """scores: (label, lr, seed) -> (valid, test)."""
    out = {}
    for point in spec.grid(spec.search.axes):
        config = spec.config_at(point, spec.search.seeds)
        for index, strategy in enumerate(config.strategies):
            for seed in config.seeds:
                key = (strategy["label"], point["optimizer.lr"], seed)
                if key in scores:
                    run_id = config_hash(config.single_run(index, seed))
                    out[run_id] = fake(run_id, *scores[key])
    return out


def test_the_choice_follows_validation_never_test(tmp_path):
    spec = search_sweep(tmp_path, [0.01, 0.1, 0.5])
    scores = {}
    for seed in (0, 1):
        # naive: validation prefers 0.1, test prefers 0.5
        scores[("naive", 0.01, seed)] = (0.30, 0.30)
        scores[("naive", 0.1, seed)] = (0.80, 0.40)
        scores[("naive", 0.5, seed)] = (0.60, 0.95)
        # joint: 0.01 and 0.5 tie on validation; the first in grid order wins
        scores[("joint", 0.01, seed)] = (0.70, 0.10)
        scores[("joint", 0.1, seed)] = (0.50, 0.99)
        scores[("joint", 0.5, seed)] = (0.70, 0.90)
    choices = {
        c.label: c for c in choose_configurations(spec, records_for(spec, scores))
    }
    assert choices["naive"].chosen == {"optimizer.lr": 0.1}
    assert choices["naive"].score == pytest.approx(0.80)
    assert choices["joint"].chosen == {"optimizer.lr": 0.01}
    assert [c["score"] for c in choices["naive"].candidates] == pytest.approx(
        [0.3, 0.8, 0.6]
    )


def test_a_candidate_missing_a_seed_is_not_chosen(tmp_path):
    spec = search_sweep(tmp_path, [0.01, 0.1])
    scores = {
        ("naive", 0.01, 0): (0.5, 0.5),
        ("naive", 0.01, 1): (0.5, 0.5),
        ("naive", 0.1, 0): (0.9, 0.9),  # seed 1 failed
    }
    choices = {
        c.label: c for c in choose_configurations(spec, records_for(spec, scores))
    }
    assert choices["naive"].chosen == {"optimizer.lr": 0.01}
    assert math.isnan(choices["naive"].candidates[1]["score"])
    # joint has no finished candidate at all
    assert choices["joint"].chosen is None and math.isnan(choices["joint"].score)


def test_validation_score_reads_the_validation_matrix_only():
    record = fake("r", valid=0.25, test=0.75)
    assert validation_score(record, "acc") == 0.25
    assert validation_score(record, "la") == 0.25
    no_valid = make_record([[1.0]])
    assert math.isnan(validation_score(no_valid))


def test_search_sweep_runs_the_chosen_configuration_on_every_seed(tmp_path):
    # a learning rate so small that nothing is learnt, against a reasonable one
    spec = search_sweep(tmp_path, [1e-5, 0.05])
    spec.search = type(spec.search)(spec.search.axes, [0], spec.search.metric)
    report = run_sweep(spec, runner=LocalRunner(1))
    assert report.ok and {c.chosen["optimizer.lr"] for c in report.choices} == {0.05}

    with ResultStore(spec.store) as store:
        search_records = store.records(sweep="search", roles=("search",))
        final_records = store.records(sweep="search", roles=("final",))
        stored_choices = store.searches("search")
    assert len(search_records) == 2 * 2  # candidates x strategies, seed 0
    # the choice is the argmax of the recorded validation accuracy, per strategy
    for label in ("naive", "joint"):
        candidates = [r for r in search_records if r.label == label]
        best = max(candidates, key=lambda r: r.valid_acc)
        assert best.config["optimizer"]["lr"] == 0.05
        assert all(r.R_valid is not None for r in candidates)
    # the chosen configuration on seeds 0 and 1; seed 0 is the search run itself
    assert sorted((r.label, r.seed) for r in final_records) == [
        ("joint", 0),
        ("joint", 1),
        ("naive", 0),
        ("naive", 1),
    ]
    assert {r.config["optimizer"]["lr"] for r in final_records} == {0.05}
    assert report.skipped == 2  # the two seed-0 final runs were search runs
    assert {(c["label"], c["chosen"]["optimizer.lr"]) for c in stored_choices} == {
        ("naive", 0.05),
        ("joint", 0.05),
    }
    assert (spec.directory / "search.json").exists()
    assert sorted(report.table_ids) == sorted(r.run_id for r in final_records)

    # run again: everything is finished, nothing runs
    again = run_sweep(spec, runner=LocalRunner(1))
    assert again.finished == 0 and again.skipped == again.planned == 4 + 4
    assert [c.chosen for c in again.choices] == [c.chosen for c in report.choices]
    assert len(expand(spec, spec.grid(spec.search.axes), seeds=[0])) == 4


def test_regression_scores_are_negated_losses_and_joint_has_no_la():
    """A regression matrix holds losses: the lower loss must score higher. Joint
    training's one-row matrix has no learning accuracy: 'la' reads its final row."""

    def valid(R_valid, kind="classification"):
        return make_record(R_valid, R_valid, kind=kind)

    low, high = (
        valid([[0.5, 1.0], [0.3, 0.1]], "regression"),
        valid([[0.5, 1.0], [2.0, 3.0]], "regression"),
    )
    assert validation_score(low) == pytest.approx(-0.2)
    assert validation_score(low) > validation_score(high)
    joint = valid([[0.6, 0.8]])
    assert validation_score(joint, "la") == pytest.approx(0.7)


def test_a_failed_search_run_stops_the_sweep_before_choosing(tmp_path, monkeypatch):
    spec = search_sweep(tmp_path, [0.01, 0.05])
    spec.search = type(spec.search)(spec.search.axes, [0], spec.search.metric)
    real = runner_module.execute_run

    def fail_one(task):
        if task.config.optimizer["lr"] == 0.01 and task.strategy_index == 0:
            return runner_module.RunOutcome(task.run_id, error="simulated failure")
        return real(task)

    monkeypatch.setattr(runner_module, "execute_run", fail_one)
    report = run_sweep(spec, runner=LocalRunner(1))
    assert not report.ok and len(report.failed) == 1
    assert report.choices == []  # nothing chosen from an incomplete search
    with ResultStore(spec.store) as store:
        assert store.searches(spec.name) == []
        assert {r.label for r in store.records()} <= {"naive", "joint"}
        assert all(r.seed == 0 for r in store.records())  # no final runs
