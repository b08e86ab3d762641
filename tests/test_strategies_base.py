import pytest
import torch

from metacl.data.scenarios import build_stream
from metacl.errors import ConfigError, ScenarioError
from metacl.models import MultiHead, build_model
from metacl.strategies import Naive, OptimizerSpec, Strategy, build_strategy


def test_naive_observe_takes_one_sgd_step(blobs):
    stream = build_stream("class_incremental", blobs, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, 10, hidden=[8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = build_strategy("naive", model, stream, OptimizerSpec(lr=0.1))
    e = stream.experiences[0]
    x, y, t = e.train_x[:8], e.train_y[:8], e.task_ids(8)

    # the expected step by hand
    reference = build_model("mlp", stream.input_shape, 10, hidden=[8])
    reference.load_state_dict(before)
    loss = torch.nn.functional.cross_entropy(reference(x), y)
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    strategy.observe(x, y, t)
    for (name, p), g in zip(reference.named_parameters(), grads, strict=True):
        assert torch.allclose(model.state_dict()[name], p - 0.1 * g, atol=1e-6)


def test_task_incremental_masks_other_tasks_classes(blobs):
    stream = build_stream("task_incremental", blobs, seed=0)
    model = build_model("mlp", stream.input_shape, 10, hidden=[8])
    strategy = build_strategy("naive", model, stream, OptimizerSpec())
    e = stream.experiences[2]
    assert e.classes == (4, 5)
    out = strategy.predict(e.test_x[:5], e.task_ids(5))
    outside = [c for c in range(stream.n_classes) if c not in e.classes]
    assert len(outside) == 8
    assert (out[:, outside] == float("-inf")).all()
    assert torch.isfinite(out[:, list(e.classes)]).all()
    assert set(out.argmax(1).tolist()) <= {4, 5}


def test_class_incremental_predict_ignores_task_ids(blobs):
    stream = build_stream("class_incremental", blobs, seed=0)
    model = build_model("mlp", stream.input_shape, 10, hidden=[8])
    strategy = build_strategy("naive", model, stream, OptimizerSpec())
    out = strategy.predict(blobs.test_x[:5], torch.zeros(5, dtype=torch.long))
    assert torch.isfinite(out).all()


def test_multihead_refuses_class_incremental(blobs):
    stream = build_stream("class_incremental", blobs, seed=0)
    model = MultiHead(
        build_model("mlp", stream.input_shape, 10, hidden=[8]), len(stream)
    )
    with pytest.raises(ScenarioError, match="multi-head model needs task ids"):
        Naive(model, stream, OptimizerSpec())


def test_strategy_refuses_scenarios_it_does_not_fit(blobs):
    class NeedsTasks(Strategy):
        requires_task_ids = True

    class OnlyDomain(Strategy):
        scenarios = ("domain_incremental",)

    model = build_model("mlp", (1, 4, 4), 10, hidden=[8])
    stream = build_stream("class_incremental", blobs, seed=0)
    with pytest.raises(
        ScenarioError, match="needs task ids at test time.*task_incremental"
    ):
        NeedsTasks(model, stream, OptimizerSpec())
    with pytest.raises(ScenarioError, match="supports: domain_incremental"):
        OnlyDomain(model, stream, OptimizerSpec())


def test_optimizer_spec_validates():
    with pytest.raises(ConfigError, match="optimizer.lr = 0"):
        OptimizerSpec(lr=0)
    assert isinstance(
        OptimizerSpec(name="adam").build([torch.zeros(1, requires_grad=True)]),
        torch.optim.Adam,
    )
