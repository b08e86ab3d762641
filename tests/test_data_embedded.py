"""Tests of metacl.data.embedded: scikit-learn digits and generated MNIST-1D."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from metacl.data import embedded, load_dataset
from metacl.errors import ConfigError


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The MNIST-1D cache goes to a fresh folder for each test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "metacl" / "mnist1d"


# ------------------------------------------------------------------------ digits


def test_digits_shapes_range_and_split_sizes() -> None:
    ds = load_dataset("digits")

    assert ds.input_shape == (1, 8, 8) and ds.n_classes == 10
    assert (len(ds.train_x), len(ds.test_x)) == (1437, 360)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert float(ds.train_x.min()) == 0.0 and float(ds.train_x.max()) == 1.0
    assert set(ds.train_y.tolist()) == set(range(10)) == set(ds.test_y.tolist())


def test_digits_split_is_stratified() -> None:
    ds = load_dataset("digits", test_fraction=0.5)

    test = torch.bincount(ds.test_y, minlength=10)
    total = test + torch.bincount(ds.train_y, minlength=10)
    # every class keeps half of its images in the test set, up to rounding
    assert torch.all((test - total / 2).abs() <= 1)


def test_digits_split_depends_on_seed_only() -> None:
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)

    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.test_x, c.test_x)
    # the split partitions the 1797 images
    assert len(a.train_x) + len(a.test_x) == 1797


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.999, 1.0, 1.5])
def test_digits_bad_test_fraction_names_the_value(fraction: float) -> None:
    with pytest.raises(ConfigError, match=f"test_fraction = {fraction!r}"):
        load_dataset("digits", test_fraction=fraction)


# ----------------------------------------------------------------------- mnist1d


def test_mnist1d_shapes_and_dtypes() -> None:
    ds = load_dataset("mnist1d", n_samples=200)

    assert ds.train_x.shape == (160, 1, 40) and ds.test_x.shape == (40, 1, 40)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.n_classes == 10 and set(ds.train_y.tolist()) <= set(range(10))


def test_mnist1d_is_deterministic_by_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = load_dataset("mnist1d", n_samples=100, seed=1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))  # regenerate
    b = load_dataset("mnist1d", n_samples=100, seed=1)
    c = load_dataset("mnist1d", n_samples=100, seed=2)

    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_mnist1d_leaves_global_rng_state_alone() -> None:
    np.random.seed(123)
    random.seed(456)
    numpy_before = np.random.get_state()
    python_before = random.getstate()

    load_dataset("mnist1d", n_samples=100, seed=7)

    numpy_after = np.random.get_state()
    assert numpy_after[0] == numpy_before[0]
    np.testing.assert_array_equal(numpy_after[1], numpy_before[1])
    assert numpy_after[2:] == numpy_before[2:]
    assert random.getstate() == python_before


def test_mnist1d_cache_is_npz_and_reused(
    isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset("mnist1d", n_samples=100, seed=5)
    cached = list(isolated_cache.iterdir())
    assert [p.suffix for p in cached] == [".npz"]
    with np.load(cached[0], allow_pickle=False) as archive:
        assert sorted(archive.files) == ["test_x", "test_y", "train_x", "train_y"]

    def no_generation(n_samples: int, seed: int) -> dict:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(embedded, "_generate_mnist1d", no_generation)
    second = load_dataset("mnist1d", n_samples=100, seed=5)

    assert torch.equal(first.train_x, second.train_x)


def test_mnist1d_corrupt_cache_is_regenerated(isolated_cache: Path) -> None:
    first = load_dataset("mnist1d", n_samples=100, seed=5)
    (path,) = isolated_cache.iterdir()
    path.write_bytes(b"not a zip file")

    second = load_dataset("mnist1d", n_samples=100, seed=5)

    assert torch.equal(first.train_x, second.train_x)
    with np.load(path, allow_pickle=False) as archive:  # rewritten whole
        assert archive["train_x"].shape == (80, 1, 40)


def test_mnist1d_too_few_samples_is_refused() -> None:
    with pytest.raises(ConfigError, match="n_samples = 5"):
        load_dataset("mnist1d", n_samples=5)


# ------------------------------------------------------------------- sine waves


def test_sine_waves_follow_the_maml_ranges_and_the_seed():
    from metacl.data.embedded import SINE_AMPLITUDE, SINE_PHASE, SINE_X, sine

    ds = sine(n_functions=6, train_per_function=40, test_per_function=10, seed=3)
    assert ds.kind == "regression" and ds.n_groups == 6
    assert ds.train_x.shape == (240, 1) and ds.test_y.shape == (60, 1)
    assert torch.bincount(ds.train_groups).tolist() == [40] * 6
    assert SINE_X[0] <= float(ds.train_x.min()) and float(ds.train_x.max()) <= SINE_X[1]
    for group in range(6):
        # y = A sin(x - phase) = a sin x + c cos x: recover A and phase by least squares
        x = torch.cat([ds.train_x, ds.test_x])[
            torch.cat([ds.train_groups, ds.test_groups]) == group
        ].double()
        y = torch.cat([ds.train_y, ds.test_y])[
            torch.cat([ds.train_groups, ds.test_groups]) == group
        ].double()
        basis = torch.cat([torch.sin(x), torch.cos(x)], dim=1)
        a, c = torch.linalg.lstsq(basis, y).solution[:, 0]
        fit = (basis @ torch.stack([a, c]))[:, None]
        assert torch.allclose(fit, y, atol=1e-4)
        amplitude, phase = float(torch.hypot(a, c)), float(torch.atan2(-c, a))
        assert SINE_AMPLITUDE[0] <= amplitude <= SINE_AMPLITUDE[1]
        assert SINE_PHASE[0] - 1e-6 <= phase <= SINE_PHASE[1] + 1e-6
    again = sine(n_functions=6, train_per_function=40, test_per_function=10, seed=3)
    other = sine(n_functions=6, train_per_function=40, test_per_function=10, seed=4)
    assert torch.equal(ds.train_y, again.train_y)
    assert not torch.equal(ds.train_y, other.train_y)


def test_sine_rejects_empty_counts():
    from metacl.data.embedded import sine

    with pytest.raises(ConfigError, match="train_per_function = 0"):
        sine(train_per_function=0)
