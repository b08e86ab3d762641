import pytest
import torch

from metacl.data.scenarios import build_stream, rotate_images
from metacl.errors import ScenarioError


def test_class_incremental_splits_classes_and_samples(blobs):
    stream = build_stream("class_incremental", blobs, seed=0, n_experiences=5)
    assert [e.classes for e in stream.experiences] == [
        (0, 1),
        (2, 3),
        (4, 5),
        (6, 7),
        (8, 9),
    ]
    for e in stream.experiences:
        assert set(e.train_y.tolist()) == set(e.classes)
        assert set(e.test_y.tolist()) == set(e.classes)
    assert sum(len(e.train_x) for e in stream.experiences) == len(blobs.train_x)
    assert not stream.task_ids_at_test
    assert "5 experiences" in stream.describe() and "[0, 1]" in stream.describe()


def test_task_incremental_gives_task_ids_and_mask(blobs):
    stream = build_stream(
        "task_incremental", blobs, seed=0, classes_per_experience=[4, 3, 3]
    )
    assert stream.task_ids_at_test
    mask = stream.class_mask()
    assert mask.shape == (3, 10)
    assert mask[0].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert mask[2].nonzero().flatten().tolist() == [7, 8, 9]


def test_class_order_and_shuffle_are_seeded(blobs):
    a = build_stream("class_incremental", blobs, seed=3, shuffle_classes=True)
    b = build_stream("class_incremental", blobs, seed=3, shuffle_classes=True)
    c = build_stream("class_incremental", blobs, seed=4, shuffle_classes=True)
    order = lambda s: [e.classes for e in s.experiences]  # noqa: E731
    assert order(a) == order(b) and order(a) != order(c)
    explicit = build_stream(
        "class_incremental", blobs, seed=0, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    )
    assert explicit.experiences[0].classes == (9, 8)


def test_samples_and_validation_split(blobs):
    stream = build_stream(
        "class_incremental",
        blobs,
        seed=0,
        samples_per_experience=30,
        validation_fraction=0.25,
    )
    for e in stream.experiences:
        assert len(e.train_x) == 30
        assert (
            len(e.valid_x) == 20
        )  # a quarter of the 80 training samples per 2 classes
        # validation samples are never training samples
        train_rows = {tuple(r.tolist()) for r in e.train_x.flatten(1)}
        assert not any(tuple(r.tolist()) in train_rows for r in e.valid_x.flatten(1))


def test_permuted_is_a_fixed_permutation_per_experience(blobs):
    stream = build_stream(
        "permuted", blobs, seed=0, n_experiences=3, first_unpermuted=True
    )
    e0, e1, e2 = stream.experiences
    assert torch.equal(e0.test_x, blobs.test_x)
    assert not torch.equal(e1.test_x, e2.test_x)
    # same multiset of values per sample: a permutation of features
    assert torch.equal(
        e1.test_x.flatten(1).sort().values, blobs.test_x.flatten(1).sort().values
    )
    # the same permutation for train and test
    perm_from_test = e1.test_x.flatten(1)[0]
    src = blobs.test_x.flatten(1)[0]
    positions = [int((src == v).nonzero()[0]) for v in perm_from_test]
    assert torch.equal(e1.train_x.flatten(1), blobs.train_x.flatten(1)[:, positions])
    assert stream.scenario == "domain_incremental" and len(stream) == 3


def test_rotation_by_90_degrees_moves_pixels():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 1] = 1.0
    out = rotate_images(x, 90.0)
    assert out.shape == x.shape
    assert torch.allclose(
        out, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5
    ) or torch.allclose(out, torch.rot90(x, k=-1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(rotate_images(x, 0.0), x, atol=1e-6)


def test_rotated_stream_angles(blobs):
    stream = build_stream("rotated", blobs, seed=0, n_experiences=4)
    assert torch.allclose(stream.experiences[0].test_x, blobs.test_x, atol=1e-6)
    assert not torch.allclose(stream.experiences[1].test_x, blobs.test_x)


def test_bad_settings_are_clear_errors(blobs):
    with pytest.raises(
        ScenarioError, match="cannot be split evenly into n_experiences = 3"
    ):
        build_stream("class_incremental", blobs, seed=0, n_experiences=3)
    with pytest.raises(
        ScenarioError, match="samples_per_experience = 1000 but only 80"
    ):
        build_stream("class_incremental", blobs, seed=0, samples_per_experience=1000)
    with pytest.raises(ScenarioError, match="validation_fraction = 1.5"):
        build_stream("class_incremental", blobs, seed=0, validation_fraction=1.5)
    with pytest.raises(ScenarioError, match="distinct classes"):
        build_stream("class_incremental", blobs, seed=0, class_order=[0, 0, 1])
    with pytest.raises(ScenarioError, match="one angle per experience"):
        build_stream("rotated", blobs, seed=0, n_experiences=2, angles=[0.0])


def test_grouped_makes_one_experience_per_group():
    from metacl.data.embedded import sine

    ds = sine(n_functions=4, train_per_function=30, test_per_function=7, seed=0)
    stream = build_stream("grouped", ds, seed=1, validation_fraction=0.2)
    assert len(stream) == 4 and stream.kind == "regression"
    assert stream.scenario == "domain_incremental" and not stream.task_ids_at_test
    assert "regression" in stream.describe()
    for i, e in enumerate(stream.experiences):
        assert (len(e.train_x), len(e.valid_x), len(e.test_x)) == (24, 6, 7)
        # every sample of experience i comes from function i
        assert torch.equal(e.test_x, ds.test_x[ds.test_groups == i])
        member = (ds.train_x[ds.train_groups == i] == e.train_x[0]).all(1)
        assert member.any()
    first_two = build_stream(
        "grouped", ds, seed=1, n_experiences=2, task_ids_at_test=True
    )
    assert len(first_two) == 2 and first_two.scenario == "task_incremental"


def test_grouped_refuses_a_dataset_without_groups_and_bad_counts(blobs):
    from metacl.data.embedded import sine

    with pytest.raises(ScenarioError, match="'blobs' has none.*sine"):
        build_stream("grouped", blobs, seed=0)
    ds = sine(n_functions=3, train_per_function=5, test_per_function=5)
    with pytest.raises(ScenarioError, match="n_experiences = 4.*choose 1..3"):
        build_stream("grouped", ds, seed=0, n_experiences=4)
    with pytest.raises(ScenarioError, match="samples_per_experience = 9"):
        build_stream("grouped", ds, seed=0, samples_per_experience=9)


def test_class_splits_refuse_a_regression_dataset():
    from metacl.data.embedded import sine

    with pytest.raises(ScenarioError, match="needs a classification dataset"):
        build_stream("class_incremental", sine(), seed=0)
