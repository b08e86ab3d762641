"""Tests of the ``normalize`` setting every dataset takes."""

from __future__ import annotations

import pytest
import torch

from metacl.config import resolve_config
from metacl.data import load_dataset
from metacl.data.base import Dataset, normalize_inputs
from metacl.errors import ConfigError, DataError


def _two_channel() -> Dataset:
    g = torch.Generator().manual_seed(0)
    train = torch.rand(50, 2, 3, 3, generator=g)
    train[:, 1] = train[:, 1] * 4 + 10  # the second channel: other scale and offset
    test = torch.rand(20, 2, 3, 3, generator=g)
    y = torch.zeros(50, dtype=torch.int64)
    return Dataset("toy", train, y, test, torch.zeros(20, dtype=torch.int64), 2)


def test_train_statistics_standardise_each_channel_of_the_training_inputs() -> None:
    ds = _two_channel()
    out = normalize_inputs(ds, "train")

    for c in range(2):
        channel = out.train_x[:, c]
        assert abs(float(channel.mean())) < 1e-5
        assert float(channel.std()) == pytest.approx(1.0, abs=1e-5)
    # the test inputs use the training statistics, not their own
    c1 = ds.train_x[:, 1]
    expected = (ds.test_x[:, 1] - c1.mean()) / c1.std()
    assert torch.allclose(out.test_x[:, 1], expected, atol=1e-5)
    assert torch.equal(out.train_y, ds.train_y)


def test_given_constants_are_applied_per_channel_or_to_all() -> None:
    ds = _two_channel()
    per_channel = normalize_inputs(ds, {"mean": [0.5, 10.0], "std": [0.25, 2.0]})
    assert torch.allclose(per_channel.train_x[:, 0], (ds.train_x[:, 0] - 0.5) / 0.25)
    assert torch.allclose(per_channel.test_x[:, 1], (ds.test_x[:, 1] - 10.0) / 2.0)

    shared = normalize_inputs(ds, {"mean": 1.0, "std": 2.0})
    assert torch.allclose(shared.train_x, (ds.train_x - 1.0) / 2.0)


def test_load_dataset_takes_normalize() -> None:
    plain = load_dataset("digits")
    normalized = load_dataset("digits", normalize={"mean": [0.3], "std": [0.5]})

    assert torch.allclose(normalized.train_x, (plain.train_x - 0.3) / 0.5)
    assert torch.allclose(normalized.test_x, (plain.test_x - 0.3) / 0.5)
    # it normalises its own copy in place: a later plain load is unchanged
    assert torch.equal(load_dataset("digits").train_x, plain.train_x)


def test_in_place_overwrites_the_given_tensors() -> None:
    ds = _two_channel()
    expected = normalize_inputs(ds, {"mean": 1.0, "std": 2.0})
    original = ds.train_x
    out = normalize_inputs(ds, {"mean": 1.0, "std": 2.0}, in_place=True)
    assert out.train_x is original
    assert torch.equal(out.train_x, expected.train_x)
    assert torch.equal(out.test_x, expected.test_x)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("standard", "'standard' is not understood"),
        ({"mean": [0.1]}, "is not understood"),
        ({"mean": [0.1], "std": [0.0]}, "must be positive"),
        ({"mean": [0.1, 0.2], "std": [1.0]}, "differ in length"),
        ({"mean": ["a"], "std": [1.0]}, r"normalize.mean = \['a'\]"),
    ],
)
def test_bad_settings_name_the_value(spec, message) -> None:
    with pytest.raises(DataError, match=message):
        normalize_inputs(_two_channel(), spec)
    # the configuration refuses them before any data is loaded
    with pytest.raises(ConfigError, match=message):
        resolve_config({"dataset": {"name": "digits", "normalize": spec}})


def test_channel_count_mismatch_and_constant_channel_are_refused() -> None:
    ds = _two_channel()
    with pytest.raises(DataError, match="2 input channels but normalize gives 3"):
        normalize_inputs(ds, {"mean": [0, 0, 0], "std": [1, 1, 1]})
    ds.train_x[:, 0] = 0.5
    with pytest.raises(DataError, match="channel 0 of the training inputs is constant"):
        normalize_inputs(ds, "train")


def test_configuration_keeps_normalize() -> None:
    config = resolve_config(
        {"dataset": {"name": "digits", "normalize": {"mean": 0.3, "std": 0.5}}}
    )
    assert config.dataset["normalize"] == {"mean": [0.3], "std": [0.5]}
    assert "normalize" not in resolve_config({}).dataset
