import copy
import dataclasses

import pytest
import torch

from metacl.config import resolve_config
from metacl.data import load_dataset
from metacl.data.scenarios import build_stream
from metacl.errors import ConfigError, ScenarioError
from metacl.experiment import run_single
from metacl.models import build_model
from metacl.strategies import AGEM, DERpp, OptimizerSpec, Replay, build_strategy


def _setup(blobs, name, scenario="class_incremental", **settings):
    stream = build_stream(scenario, blobs, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, 10, hidden=[8])
    return stream, build_strategy(
        name, model, stream, OptimizerSpec(lr=0.1), **settings
    )


def test_replay_trains_on_the_batch_and_a_memory_batch(blobs):
    stream, replay = _setup(blobs, "replay", memory_size=20, replay_batch_size=4)
    e = stream.experiences[0]
    replay.observe(e.train_x[:8], e.train_y[:8], e.task_ids(8))
    assert (
        len(replay.memory) == 8
    )  # the first batch finds an empty memory, then fills it
    model_before = copy.deepcopy(replay.model)
    state = replay.memory.state_dict()
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
    x, y = e.train_x[8:16], e.train_y[8:16]
    replay.observe(x, y, e.task_ids(8))

    # the same step by hand: the batch concatenated with the same memory draw
    replay.memory.load_state_dict(state)
    drawn = replay.memory.sample(4)
    xs, ys = torch.cat([x, drawn.x]), torch.cat([y, drawn.y])
    loss = torch.nn.functional.cross_entropy(model_before(xs), ys)
    grads = torch.autograd.grad(loss, list(model_before.parameters()))
    for (name, p), g in zip(model_before.named_parameters(), grads, strict=True):
        assert torch.allclose(replay.model.state_dict()[name], p - 0.1 * g, atol=1e-6)


def test_class_balanced_replay_keeps_classes_equal(blobs):
    stream, replay = _setup(blobs, "replay", memory="class_balanced", memory_size=30)
    for e in stream.experiences[:3]:
        for start in range(0, len(e.train_x), 16):
            x, y = e.train_x[start : start + 16], e.train_y[start : start + 16]
            replay.observe(x, y, e.task_ids(len(x)))
    assert replay.memory.counts()[:6].tolist() == [5] * 6


def test_agem_memory_holds_only_past_experiences_and_projects(blobs):
    stream, agem = _setup(blobs, "agem", memory_size=40, replay_batch_size=16)
    e0, e1 = stream.experiences[:2]
    agem.observe(e0.train_x[:8], e0.train_y[:8], e0.task_ids(8))
    assert len(agem.memory) == 0  # filled at the end of an experience
    agem.end_experience(e0)
    assert len(agem.memory) == 40 and set(agem.memory.y.tolist()) <= set(e0.classes)

    # the applied update never points against the memory gradient
    params = agem.params
    before = [p.detach().clone() for p in params]
    state = {
        k: (v.clone() if torch.is_tensor(v) else v)
        for k, v in agem.memory.state_dict().items()
    }
    agem.observe(e1.train_x[:8], e1.train_y[:8], e1.task_ids(8))
    update = torch.cat(
        [(b - p.detach()).reshape(-1) for b, p in zip(before, params, strict=True)]
    )
    agem.memory.load_state_dict(state)
    ref = agem.memory.sample(16)
    probe = copy.deepcopy(agem.model)
    with torch.no_grad():
        for p, b in zip(probe.parameters(), before, strict=True):
            p.copy_(b)
    loss = torch.nn.functional.cross_entropy(probe(ref.x), ref.y)
    g_ref = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(loss, list(probe.parameters()))]
    )
    assert float(torch.dot(update / 0.1, g_ref)) >= -1e-5


def test_derpp_stores_the_logits_seen_in_training(blobs):
    stream, der = _setup(blobs, "derpp", memory_size=50, replay_batch_size=8)
    e = stream.experiences[0]
    x, y = e.train_x[:16], e.train_y[:16]
    expected = copy.deepcopy(der.model)(x).detach()
    der.observe(x, y, e.task_ids(16))
    assert torch.allclose(der.memory.logits[:16], expected)
    assert torch.equal(der.memory.y[:16], y)
    # the logits are stored unmasked, and finite, in a task-incremental stream too
    stream, der = _setup(blobs, "derpp", scenario="task_incremental", memory_size=50)
    e = stream.experiences[1]
    der.observe(e.train_x[:16], e.train_y[:16], e.task_ids(16))
    assert torch.isfinite(der.memory.logits[:16]).all()


def test_replay_time_per_batch_does_not_grow_with_experiences(blobs):
    # the memory is preallocated: its tensors keep their storage from the start
    stream, replay = _setup(blobs, "derpp", memory_size=64)
    pointers = (replay.memory.x.data_ptr(), replay.memory.logits.data_ptr())
    for e in stream.experiences:
        for start in range(0, len(e.train_x), 16):
            x, y = e.train_x[start : start + 16], e.train_y[start : start + 16]
            replay.observe(x, y, e.task_ids(len(x)))
    assert (replay.memory.x.data_ptr(), replay.memory.logits.data_ptr()) == pointers
    assert replay.memory.x.shape[0] == 64


def test_bad_settings_are_clear_errors(blobs):
    stream = build_stream("class_incremental", blobs, seed=0)
    model = build_model("mlp", stream.input_shape, 10, hidden=[8])
    with pytest.raises(ConfigError, match="memory_size = 0"):
        Replay(model, stream, OptimizerSpec(), memory_size=0)
    with pytest.raises(ConfigError, match="replay_batch_size = 0"):
        AGEM(model, stream, OptimizerSpec(), replay_batch_size=0)
    with pytest.raises(ConfigError, match="alpha = -1"):
        DERpp(model, stream, OptimizerSpec(), alpha=-1.0)
    with pytest.raises(ConfigError, match="strategies\\[0\\].memory = 'fifo'"):
        resolve_config({"strategy": {"name": "replay", "memory": "fifo"}})


@pytest.mark.parametrize("name", ["replay", "agem", "derpp"])
def test_regression_streams_are_refused(blobs, name):
    stream = dataclasses.replace(
        build_stream("class_incremental", blobs, seed=0), kind="regression"
    )
    model = build_model("mlp", stream.input_shape, 1, hidden=[8])
    with pytest.raises(ScenarioError, match="needs a classification stream"):
        build_strategy(name, model, stream, OptimizerSpec())


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "replay", "memory_size": 40, "replay_batch_size": 8},
        {"name": "replay", "memory": "class_balanced", "memory_size": 40},
        {"name": "agem", "memory_size": 40},
        {"name": "derpp", "memory_size": 40},
    ],
)
def test_resume_equals_uninterrupted(blobs, tmp_path, strategy):
    cfg = resolve_config(
        {
            "seeds": [0],
            "model": {"name": "mlp", "hidden": [16]},
            "strategy": strategy,
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


def test_replay_and_derpp_beat_naive_on_class_incremental_digits():
    digits = load_dataset("digits")
    metrics = {}
    for strategy in (
        {"name": "naive"},
        {"name": "replay", "memory_size": 200},
        {"name": "derpp", "memory_size": 200},
    ):
        cfg = resolve_config(
            {
                "seeds": [0],
                "dataset": {"name": "digits"},
                "scenario": {"name": "class_incremental", "n_experiences": 5},
                "model": {"name": "mlp", "hidden": [64, 64]},
                "strategy": strategy,
                "optimizer": {"name": "sgd", "lr": 0.05},
                "train": {"epochs": 3, "batch_size": 32},
            }
        )
        metrics[strategy["name"]] = run_single(cfg, 0, 0, dataset=digits).metrics
    assert metrics["replay"]["acc"] > metrics["naive"]["acc"] + 0.1, metrics
    assert metrics["derpp"]["acc"] > metrics["naive"]["acc"] + 0.05, metrics
