import pytest
import torch

from metacl.config import resolve_config
from metacl.data.scenarios import build_stream
from metacl.errors import ScenarioError
from metacl.experiment import run_single
from metacl.models import MultiHead, ProgressiveNet, build_model
from metacl.strategies import PNN, OptimizerSpec, build_strategy


def _train(strategy, experience, steps=5):
    strategy.begin_experience(experience)
    for i in range(steps):
        s = slice(16 * i, 16 * (i + 1))
        x, y = experience.train_x[s], experience.train_y[s]
        strategy.observe(x, y, experience.task_ids(len(x)))
    strategy.end_experience(experience)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_earlier_columns_stay_bit_identical(blobs, model_name):
    stream = build_stream("task_incremental", blobs, seed=0)
    torch.manual_seed(0)
    settings = (
        {"hidden": [8]} if model_name == "mlp" else {"channels": [4], "hidden": 8}
    )
    model = build_model(model_name, stream.input_shape, 10, **settings)
    pnn = build_strategy(
        "pnn", model, stream, OptimizerSpec(lr=0.1, momentum=0.9, weight_decay=1e-3)
    )
    assert isinstance(pnn.model, ProgressiveNet) and len(pnn.model.columns) == len(
        stream
    )
    _train(pnn, stream.experiences[0])
    column0 = {k: v.clone() for k, v in pnn.model.columns[0].state_dict().items()}
    untouched = {k: v.clone() for k, v in pnn.model.columns[2].state_dict().items()}
    _train(pnn, stream.experiences[1])
    after1 = {k: v.clone() for k, v in pnn.model.columns[1].state_dict().items()}
    _train(pnn, stream.experiences[2])
    for k, v in pnn.model.columns[0].state_dict().items():
        assert torch.equal(v, column0[k]), k
    for k, v in pnn.model.columns[1].state_dict().items():
        assert torch.equal(v, after1[k]), k
    # and the column of the latest task did learn
    assert any(
        not torch.equal(v, untouched[k])
        for k, v in pnn.model.columns[2].state_dict().items()
    )


def test_old_tasks_keep_their_predictions(blobs):
    stream = build_stream("task_incremental", blobs, seed=0)
    torch.manual_seed(0)
    pnn = build_strategy(
        "pnn",
        build_model("mlp", stream.input_shape, 10, hidden=[8]),
        stream,
        OptimizerSpec(lr=0.1),
    )
    _train(pnn, stream.experiences[0])
    e0 = stream.experiences[0]
    before = pnn.predict(e0.test_x, e0.task_ids(len(e0.test_x)))
    for e in stream.experiences[1:]:
        _train(pnn, e)
    assert torch.equal(pnn.predict(e0.test_x, e0.task_ids(len(e0.test_x))), before)


@pytest.mark.parametrize("scenario", ["class_incremental", "permuted"])
def test_refuses_streams_without_task_ids(blobs, scenario):
    stream = build_stream(scenario, blobs, seed=0)
    model = build_model("mlp", stream.input_shape, 10, hidden=[8])
    with pytest.raises(
        ScenarioError, match="gives no task id at test time. Use the task_incremental"
    ):
        PNN(model, stream, OptimizerSpec())
    cfg = resolve_config(
        {
            "scenario": {"name": scenario},
            "strategy": "pnn",
            "model": {"name": "mlp", "hidden": [8]},
        }
    )
    with pytest.raises(ScenarioError, match="replay"):
        run_single(cfg, 0, 0, dataset=blobs)


def test_refuses_a_multi_head_model(blobs):
    stream = build_stream("task_incremental", blobs, seed=0)
    model = MultiHead(
        build_model("mlp", stream.input_shape, 10, hidden=[8]), len(stream)
    )
    with pytest.raises(ScenarioError, match="multi_head = false"):
        PNN(model, stream, OptimizerSpec())


def test_resume_equals_uninterrupted(blobs, tmp_path):
    cfg = resolve_config(
        {
            "seeds": [0],
            "scenario": {"name": "task_incremental", "n_experiences": 5},
            "model": {"name": "mlp", "hidden": [16]},
            "strategy": "pnn",
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "train": {"epochs": 1, "batch_size": 16},
        }
    )
    full = run_single(cfg, 0, 0, dataset=blobs, directory=tmp_path / "full")
    assert (
        run_single(cfg, 0, 0, dataset=blobs, directory=tmp_path / "cut", stop_after=2)
        is None
    )
    resumed = run_single(cfg, 0, 0, dataset=blobs, directory=tmp_path / "cut")
    assert resumed.R == full.R
    assert full.metrics["bwt"] == 0.0  # no forgetting, by construction
