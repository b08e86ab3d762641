"""Tests of metacl.meta.train: the meta-training loop, checkpoints, resume, evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from metacl.errors import CheckpointError, ConfigError, TrainingError
from metacl.meta.train import (
    CHECKPOINT_NAME,
    RESULTS_NAME,
    MetaTrainConfig,
    meta_train,
    summarise,
)


def _config(**changes) -> MetaTrainConfig:
    values = {
        "iterations": 6,
        "meta_batch": 3,
        "val_tasks": 4,
        "test_tasks": 10,
        "eval_every": 3,
        "checkpoint_every": 3,
        "model_settings": {"hidden": [16, 16]},
        "algorithm_settings": {"inner_lr": 0.05},
    }
    values.update(changes)
    return MetaTrainConfig(**values)


def test_a_short_sine_run_reports_held_out_numbers_with_intervals(tmp_path):
    seen = []
    result = meta_train(
        _config(),
        out_dir=tmp_path,
        progress=lambda i, n, m: seen.append((i, n, dict(m))),
    )
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5, 6] and seen[0][1] == 6
    assert "val_loss" in seen[2][2] and "val_loss" not in seen[1][2]
    assert len(result.train_loss) == 6 and [
        v["iteration"] for v in result.validation
    ] == [3, 6]
    assert result.vectorize == "stacked weights (training) and vmap (evaluation)"
    assert result.model["name"] == "mlp"
    stat = result.test["loss"]
    assert stat["n"] == 10 and stat["ci95"] > 0 and stat["mean"] > 0
    written = json.loads((tmp_path / RESULTS_NAME).read_text())
    assert written["test"] == json.loads(json.dumps(result.test))
    assert (tmp_path / CHECKPOINT_NAME).is_file()


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    whole = meta_train(_config(), out_dir=tmp_path / "whole")

    # stop after 3 iterations, then resume to 6 (only `iterations` changes)
    meta_train(_config(iterations=3), out_dir=tmp_path / "parts")
    resumed = meta_train(_config(), out_dir=tmp_path / "parts", resume=True)

    assert resumed.train_loss == whole.train_loss
    assert resumed.validation == whole.validation
    assert resumed.test == whole.test
    for (name, a), b in zip(
        whole.algorithm.meta_parameters().items(),
        resumed.algorithm.meta_parameters().values(),
        strict=True,
    ):
        assert torch.equal(a, b), name


def test_metasgd_resume_restores_the_learned_step_sizes(tmp_path):
    config = {"algorithm": "metasgd", "eval_every": 0, "test_tasks": 4}
    whole = meta_train(_config(**config), out_dir=tmp_path / "a")
    meta_train(_config(**config, iterations=3), out_dir=tmp_path / "b")
    resumed = meta_train(_config(**config), out_dir=tmp_path / "b", resume=True)
    lr_whole = whole.algorithm.learned_lr["head.weight"]
    assert torch.equal(resumed.algorithm.learned_lr["head.weight"], lr_whole)
    assert not torch.allclose(lr_whole, torch.full_like(lr_whole, 0.05))


def test_checkpoint_errors_are_clear(tmp_path):
    meta_train(_config(iterations=3), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="already exists; pass resume=True"):
        meta_train(_config(), out_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"another configuration \(meta_batch"):
        meta_train(_config(meta_batch=5), out_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="iteration 3, past iterations = 2"):
        meta_train(_config(iterations=2), out_dir=tmp_path, resume=True)

    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt: delete it"):
        meta_train(_config(), out_dir=tmp_path, resume=True)
    torch.save({"format": 1, "weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a metacl meta-training checkpoint"):
        meta_train(_config(), out_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match="resume=True needs out_dir"):
        meta_train(_config(), resume=True)


def test_a_diverging_run_stops_with_a_training_error():
    config = _config(algorithm_settings={"inner_lr": 1e30}, eval_every=0)
    with pytest.raises(
        TrainingError, match="not finite at iteration 1.*lower outer_lr"
    ):
        meta_train(config)


def test_configuration_errors_name_the_value():
    with pytest.raises(ConfigError, match="unknown meta algorithm 'mamal'"):
        _config(algorithm="mamal")
    with pytest.raises(ConfigError, match="meta_batch = 0"):
        _config(meta_batch=0)
    with pytest.raises(ConfigError, match="outer_lr = -1"):
        _config(outer_lr=-1)
    with pytest.raises(ConfigError, match="vectorize = 'fast'"):
        _config(vectorize="fast")
    with pytest.raises(
        ConfigError, match=r"unknown meta-training key\(s\) \['epochs'\]"
    ):
        MetaTrainConfig.from_dict({"epochs": 3})
    with pytest.raises(ConfigError, match="unknown key"):
        _config(algorithm_settings={"inner_rate": 0.1})
    # validation asked for while the family has no meta-validation classes
    config = _config(
        family="episodes",
        family_settings={"dataset": "digits", "ways": 2, "splits": [5, 0, 5]},
        model=None,
        model_settings={},
    )
    with pytest.raises(ConfigError, match="eval_every = 3 asks for validation"):
        meta_train(config)


def test_episodes_of_a_real_dataset_give_accuracy_with_intervals():
    config = MetaTrainConfig(
        family="episodes",
        family_settings={
            "dataset": "digits",
            "ways": 2,
            "shots": 1,
            "query_shots": 3,
            "splits": [6, 2, 2],
        },
        algorithm="maml",
        algorithm_settings={"inner_lr": 0.4, "inner_steps": 1},
        iterations=2,
        meta_batch=2,
        eval_every=2,
        val_tasks=2,
        test_tasks=6,
        checkpoint_every=0,
    )
    result = meta_train(config)
    assert result.model["name"] == "cnn"
    assert sorted(result.test) == ["accuracy", "accuracy_before", "loss", "loss_before"]
    accuracy = result.test["accuracy"]
    assert 0 <= accuracy["mean"] <= 1 and accuracy["n"] == 6
    assert "accuracy" in result.validation[0]


def test_summarise_uses_student_t():
    stat = summarise(torch.tensor([1.0, 2.0, 3.0]))
    # t(0.975, 2) = 4.302652729911275; std = 1; n = 3
    assert stat["mean"] == pytest.approx(2.0)
    assert stat["std"] == pytest.approx(1.0)
    assert stat["ci95"] == pytest.approx(4.302652729911275 / 3**0.5)
    assert summarise(torch.tensor([5.0]))["ci95"] is None


def test_a_folder_in_use_by_another_process_is_refused(tmp_path, lock_holder):
    """meta-train holds the same lock as ``metacl run``: a second process on the
    folder stops before writing anything, and the folder is free once it ends."""
    with lock_holder(tmp_path) as holder:
        with pytest.raises(CheckpointError, match=f"in use .*pid {holder.pid}"):
            meta_train(_config(iterations=3), out_dir=tmp_path)
        assert not (tmp_path / CHECKPOINT_NAME).exists()
    meta_train(_config(iterations=3), out_dir=tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).is_file()
