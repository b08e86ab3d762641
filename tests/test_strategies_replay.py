import copy
import dataclasses
import math

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


def _memory_state(memory):
    return {
        k: (v.clone() if torch.is_tensor(v) else v)
        for k, v in memory.state_dict().items()
    }


@pytest.mark.parametrize("scenario", ["class_incremental", "task_incremental"])
def test_derpp_step_follows_the_gradient_of_its_three_terms(blobs, scenario):
    # Buzzega et al. 2020, "Dark Experience for General Continual Learning: a Strong,
    # Simple Baseline", eq. 6: CE on the batch + alpha * MSE between the current and
    # the stored logits on one memory batch + beta * CE on a second memory batch
    alpha, beta = 0.3, 0.7
    stream, der = _setup(
        blobs,
        "derpp",
        scenario=scenario,
        memory_size=40,
        replay_batch_size=6,
        alpha=alpha,
        beta=beta,
    )
    # fill the memory from two experiences, with logits from several model states
    for e in stream.experiences[:2]:
        for start in range(0, 32, 8):
            x, y = e.train_x[start : start + 8], e.train_y[start : start + 8]
            der.observe(x, y, e.task_ids(8))
    assert len(der.memory) == 40
    assert set(der.memory.task.tolist()) == {0, 1}

    e = stream.experiences[2]
    x, y, task = e.train_x[:8], e.train_y[:8], e.task_ids(8)
    reference = copy.deepcopy(der.model)
    state = _memory_state(der.memory)
    der.observe(x, y, task)

    # the same memory draws, in the same order: the logit batch, then the label batch
    der.memory.load_state_dict(state)
    first = der.memory.sample(6)
    second = der.memory.sample(6)
    assert not torch.equal(first.x, second.x)

    # the task mask, built from the experiences' classes (task-incremental only)
    mask = torch.ones(len(stream), 10, dtype=torch.bool)
    if scenario == "task_incremental":
        mask[:] = False
        for other in stream.experiences:
            mask[other.task_id, list(other.classes)] = True

    def masked(out, t):
        return out.masked_fill(~mask[t], float("-inf"))

    ce = torch.nn.functional.cross_entropy
    loss = (
        ce(masked(reference(x), task), y)
        + alpha * torch.nn.functional.mse_loss(reference(first.x), first.logits)
        + beta * ce(masked(reference(second.x), second.task), second.y)
    )
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    for (name, p), g in zip(reference.named_parameters(), grads, strict=True):
        torch.testing.assert_close(der.model.state_dict()[name], p - 0.1 * g)

    # the logits matched are those stored, not the current model's: the term matters
    assert not torch.allclose(reference(first.x), first.logits, atol=1e-3)


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "replay", "memory_size": 50, "replay_batch_size": 8},
        {"name": "agem", "memory_size": 50, "replay_batch_size": 8},
        {"name": "derpp", "memory_size": 50, "replay_batch_size": 8},
    ],
)
def test_online_stream_is_seen_once_in_small_batches(blobs, monkeypatch, strategy):
    cls = {"replay": Replay, "agem": AGEM, "derpp": DERpp}[strategy["name"]]
    batches: list[list[torch.Tensor]] = []
    held = {}
    real_begin, real_observe = cls.begin_experience, cls.observe

    def begin_experience(self, experience):
        batches.append([])
        return real_begin(self, experience)

    def observe(self, x, y, task):
        batches[-1].append(x.clone())
        held["strategy"] = self
        return real_observe(self, x, y, task)

    monkeypatch.setattr(cls, "begin_experience", begin_experience)
    monkeypatch.setattr(cls, "observe", observe)
    cfg = resolve_config(
        {
            "seeds": [0],
            "scenario": {
                "name": "class_incremental",
                "n_experiences": 5,
                "online": True,
            },
            "model": {"name": "mlp", "hidden": [16]},
            "strategy": strategy,
            "optimizer": {"name": "sgd", "lr": 0.05},
            # epochs and batch_size are for offline streams: an online one ignores them
            "train": {"epochs": 3, "batch_size": 32, "online_batch_size": 10},
        }
    )
    result = run_single(cfg, 0, 0, dataset=blobs)

    # every training example of each experience once, in batches of 10
    stream = build_stream("class_incremental", blobs, seed=0, online=True)
    assert stream.online and len(batches) == len(stream) == 5
    for seen, e in zip(batches, stream.experiences, strict=True):
        assert [len(b) for b in seen] == [10] * (len(e.train_x) // 10)
        x = torch.cat(seen).flatten(1)
        match = (x[:, None] == e.train_x.flatten(1)[None]).all(-1)
        assert (match.sum(1) == 1).all()
        assert sorted(match.int().argmax(1).tolist()) == list(range(len(e.train_x)))
    assert result.timings["train_samples"] == sum(
        len(e.train_x) for e in stream.experiences
    )

    # the memory was filled, and every experience was evaluated after every other
    assert len(held["strategy"].memory) == 50
    assert set(held["strategy"].memory.task.tolist()) == set(range(5))
    assert len(result.R) == 5 and all(len(row) == 5 for row in result.R)
    assert all(0.0 <= a <= 1.0 for row in result.R for a in row)


@pytest.mark.parametrize("name", ["replay", "derpp"])
def test_update_per_experience_replays_only_past_experiences(blobs, name):
    """With update='experience' the memory stays empty during the first experience
    and holds only earlier experiences' examples while a later one trains; with the
    default it takes each batch right after its step."""
    stream = build_stream("class_incremental", blobs, seed=0, n_experiences=5)
    model = build_model("mlp", stream.input_shape, 10, hidden=[8])
    per_experience = build_strategy(
        name, model, stream, OptimizerSpec(lr=0.05), memory_size=60, update="experience"
    )
    first, second = stream.experiences[:2]
    per_experience.begin_experience(first)
    per_experience.observe(first.train_x[:16], first.train_y[:16], first.task_ids(16))
    assert len(per_experience.memory) == 0
    per_experience.end_experience(first)
    assert len(per_experience.memory) == 60
    per_experience.begin_experience(second)
    per_experience.observe(
        second.train_x[:16], second.train_y[:16], second.task_ids(16)
    )
    held = set(per_experience.memory.y[: len(per_experience.memory)].tolist())
    assert held <= set(first.classes)
    if name == "derpp":  # the logits of the model at the end of the experience
        stored = per_experience.memory.logits[:60]
        assert torch.isfinite(stored).all() and stored.abs().sum() > 0

    by_batch = build_strategy(
        name, build_model("mlp", stream.input_shape, 10, hidden=[8]), stream,
        OptimizerSpec(lr=0.05), memory_size=60,
    )  # fmt: skip
    by_batch.begin_experience(first)
    by_batch.observe(first.train_x[:16], first.train_y[:16], first.task_ids(16))
    assert len(by_batch.memory) == 16

    with pytest.raises(ConfigError, match="update = 'epoch' is invalid"):
        build_strategy(name, model, stream, OptimizerSpec(lr=0.05), update="epoch")


def test_derpp_keeps_separate_passes_when_a_layer_mixes_the_batch(blobs):
    # one forward over the batch and both memory batches is exact only when no layer
    # mixes samples; with batch normalisation each pass keeps its own statistics
    stream = build_stream("class_incremental", blobs, seed=0)
    torch.manual_seed(0)
    features = math.prod(stream.input_shape)
    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(features, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 10),
    )
    der = build_strategy(
        "derpp", model, stream, OptimizerSpec(lr=0.1), memory_size=40,
        replay_batch_size=6, alpha=0.3, beta=0.7,
    )  # fmt: skip
    assert not der.fused
    assert _setup(blobs, "derpp")[1].fused  # the MLP has no such layer
    for start in range(0, 48, 8):
        e = stream.experiences[0]
        x, y = e.train_x[start : start + 8], e.train_y[start : start + 8]
        der.observe(x, y, e.task_ids(8))
    e = stream.experiences[1]
    x, y = e.train_x[:8], e.train_y[:8]
    reference = copy.deepcopy(der.model)
    state = _memory_state(der.memory)
    der.observe(x, y, e.task_ids(8))

    der.memory.load_state_dict(state)
    first, second = der.memory.sample(6), der.memory.sample(6)
    ce = torch.nn.functional.cross_entropy
    loss = (
        ce(reference(x), y)
        + 0.3 * torch.nn.functional.mse_loss(reference(first.x), first.logits)
        + 0.7 * ce(reference(second.x), second.y)
    )
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    for (name, p), g in zip(reference.named_parameters(), grads, strict=True):
        torch.testing.assert_close(der.model.state_dict()[name], p - 0.1 * g)
