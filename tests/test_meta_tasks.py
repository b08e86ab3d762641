"""Tests of metacl.meta.tasks: sine regression, class splits and few-shot episodes."""

from __future__ import annotations

import math

import pytest
import torch

from metacl.data.base import Dataset
from metacl.errors import ConfigError, ScenarioError
from metacl.meta.tasks import TASK_FAMILIES, EpisodeTasks, SineTasks, split_classes


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sine_tasks_follow_the_maml_protocol():
    family = SineTasks(shots=10, query_shots=10, eval_query_shots=50)
    batch = family.sample(200, generator=_gen())
    assert batch.support_x.shape == (200, 10, 1) and batch.query_x.shape == (200, 10, 1)
    assert family.sample(3, generator=_gen(), split="test").query_x.shape == (3, 50, 1)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert float(x.min()) >= -5 and float(x.max()) <= 5
    peak = y.abs().amax(1)  # close to the amplitude, in [0.1, 5]
    assert float(peak.max()) <= 5 and float(peak.max()) > 4

    # each task is one wave: y = a sin(x - b) for a single (a, b) per task
    a_sin_b = -(y[:, :2, 0] / 1)  # solve the 2x2 system from the first two points
    s, c = torch.sin(x[:, :2, 0]), torch.cos(x[:, :2, 0])
    det = s[:, 0] * c[:, 1] - s[:, 1] * c[:, 0]
    keep = det.abs() > 0.1
    p = (-a_sin_b[:, 0] * c[:, 1] + a_sin_b[:, 1] * c[:, 0]) / det  # a cos b
    q = (s[:, 0] * -a_sin_b[:, 1] - s[:, 1] * -a_sin_b[:, 0]) / det  # -a sin b
    predicted = p[:, None] * torch.sin(x[..., 0]) + q[:, None] * torch.cos(x[..., 0])
    torch.testing.assert_close(predicted[keep], y[keep][..., 0], rtol=1e-3, atol=1e-3)

    again = family.sample(200, generator=_gen())
    assert torch.equal(again.support_y, batch.support_y)
    assert not torch.equal(
        family.sample(200, generator=_gen(1)).support_y, batch.support_y
    )


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_class_splits_never_overlap_cover_everything_and_are_fixed_by_seed(seed):
    classes = torch.arange(100, 150)
    parts = split_classes(classes, (0.6, 0.2, 0.2), seed)
    sets = {k: set(v.tolist()) for k, v in parts.items()}
    assert [len(sets[k]) for k in ("train", "val", "test")] == [30, 10, 10]
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(classes.tolist())
    again = split_classes(classes, (0.6, 0.2, 0.2), seed)
    assert all(torch.equal(again[k], parts[k]) for k in parts)
    other = split_classes(classes, (0.6, 0.2, 0.2), seed + 100)
    assert not torch.equal(other["train"], parts["train"])
    counts = split_classes(classes, (40, 0, 10), seed)
    assert [len(counts[k]) for k in ("train", "val", "test")] == [40, 0, 10]


@pytest.mark.parametrize(
    "bad", [(0.5, 0.5), (0.6, 0.6, 0.2), (-0.2, 0.6, 0.6), (3, 3, 3)]
)
def test_bad_splits_are_named(bad):
    with pytest.raises(ConfigError, match=r"splits = \["):
        split_classes(torch.arange(10), bad, 0)


def _labelled_images(n_classes: int = 12, per_class: int = 8) -> Dataset:
    """Every image is filled with 1000 * label + its index, so an episode's images
    tell which class and which example they are."""
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    index = torch.arange(len(labels))
    x = (1000.0 * labels + index).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    half = len(labels) // 2
    order = torch.randperm(len(labels), generator=_gen(3))  # train/test mixed
    x, labels = x[order], labels[order]
    return Dataset("toy", x[:half], labels[:half], x[half:], labels[half:], n_classes)


def test_episodes_are_n_way_k_shot_from_their_split_only():
    data = _labelled_images()
    family = EpisodeTasks(
        data, seed=5, ways=3, shots=2, query_shots=4, splits=(6, 3, 3)
    )
    for split in ("train", "val", "test"):
        batch = family.sample(10, generator=_gen(), split=split)
        assert batch.support_x.shape == (10, 6, 1, 2, 2)
        assert batch.query_x.shape == (10, 12, 1, 2, 2)
        allowed = set(family.classes[split].tolist())
        for t in range(10):
            sx, sy, qx, qy = batch.task(t)
            original_s = (sx[:, 0, 0, 0] // 1000).long()
            original_q = (qx[:, 0, 0, 0] // 1000).long()
            assert set(original_s.tolist()) <= allowed
            assert len(set(original_s.tolist())) == 3
            # labels 0..ways-1, each naming one original class in support and query
            for label in range(3):
                assert (sy == label).sum() == 2 and (qy == label).sum() == 4
                assert len(set(original_s[sy == label].tolist())) == 1
                assert set(original_q[qy == label].tolist()) == set(
                    original_s[sy == label].tolist()
                )
            # every example appears at most once in an episode
            ids = torch.cat([sx[:, 0, 0, 0], qx[:, 0, 0, 0]]).tolist()
            assert len(set(ids)) == len(ids)
    again = family.sample(10, generator=_gen())
    assert torch.equal(again.support_x, family.sample(10, generator=_gen()).support_x)


def test_episode_class_split_is_fixed_by_the_seed():
    data = _labelled_images()
    a = EpisodeTasks(data, seed=1, ways=2, splits=(6, 3, 3), shots=1, query_shots=1)
    b = EpisodeTasks(data, seed=1, ways=2, splits=(6, 3, 3), shots=1, query_shots=1)
    c = EpisodeTasks(data, seed=2, ways=2, splits=(6, 3, 3), shots=1, query_shots=1)
    assert all(torch.equal(a.classes[k], b.classes[k]) for k in a.classes)
    assert any(not torch.equal(a.classes[k], c.classes[k]) for k in a.classes)


def test_bad_episode_settings_give_clear_errors():
    data = _labelled_images(per_class=8)
    with pytest.raises(ScenarioError, match=r"shots \+ query_shots = 9 examples"):
        EpisodeTasks(data, ways=2, shots=5, query_shots=4, splits=(6, 3, 3))
    with pytest.raises(
        ScenarioError, match="meta-val split .* holds 2, fewer than ways = 3"
    ):
        EpisodeTasks(data, ways=3, splits=(8, 2, 2), shots=1, query_shots=1)
    with pytest.raises(ConfigError, match="ways = 0"):
        EpisodeTasks(data, ways=0)
    regression = Dataset(
        "r",
        torch.zeros(4, 1),
        torch.zeros(4, 1),
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        0,
        kind="regression",
    )
    with pytest.raises(ScenarioError, match="regression dataset"):
        EpisodeTasks(regression)

    # an empty validation split is allowed, and drawing from it is refused
    family = EpisodeTasks(data, ways=3, splits=(6, 0, 6), shots=1, query_shots=1)
    with pytest.raises(ScenarioError, match="meta-val split .* 0 classes"):
        family.sample(2, generator=_gen(), split="val")
    with pytest.raises(ConfigError, match="split = 'dev'"):
        family.sample(2, generator=_gen(), split="dev")


def test_registered_families_build_from_settings():
    sine = TASK_FAMILIES.build("sine", 0, shots=5)
    assert isinstance(sine, SineTasks) and sine.shots == 5
    episodes = TASK_FAMILIES.build(
        "episodes",
        3,
        dataset="digits",
        ways=2,
        shots=1,
        query_shots=3,
        splits=[6, 2, 2],
    )
    assert episodes.input_shape == (1, 8, 8) and episodes.n_outputs == 2
    assert sum(len(v) for v in episodes.classes.values()) == 10
    with pytest.raises(ConfigError, match="dataset is required"):
        TASK_FAMILIES.build("episodes", 0)
    assert math.isclose(sine.phase[1], math.pi)
