import math

import pytest
import torch

from metacl import metrics

R = torch.tensor(
    [
        [0.90, 0.20, 0.10],
        [0.60, 0.80, 0.30],
        [0.50, 0.70, 0.95],
    ]
)
b = torch.tensor([0.10, 0.15, 0.05])


def test_definitions_match_design_by_hand():
    m = metrics.derived_metrics(R, b)
    assert m["acc"] == pytest.approx((0.50 + 0.70 + 0.95) / 3)
    assert m["la"] == pytest.approx((0.90 + 0.80 + 0.95) / 3)
    assert m["bwt"] == pytest.approx(((0.50 - 0.90) + (0.70 - 0.80)) / 2)
    assert m["fwt"] == pytest.approx(((0.20 - 0.15) + (0.30 - 0.05)) / 2)
    # forgetting: best of rows 0..T-2 minus final, for j < T-1
    assert m["forgetting"] == pytest.approx(((0.90 - 0.50) + (0.80 - 0.70)) / 2)


def test_forgetting_uses_best_earlier_not_diagonal():
    R2 = torch.tensor([[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.4, 0.8, 0.9]])
    assert metrics.forgetting(R2) == pytest.approx(((0.9 - 0.4) + (0.8 - 0.8)) / 2)
    assert metrics.bwt(R2) == pytest.approx(((0.4 - 0.5) + (0.8 - 0.8)) / 2)


def test_single_row_defines_acc_only():
    m = metrics.derived_metrics(torch.tensor([[0.9, 0.8]]), torch.zeros(2))
    assert m["acc"] == pytest.approx(0.85)
    assert all(math.isnan(m[k]) for k in ("la", "bwt", "fwt", "forgetting"))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="accuracy matrix"):
        metrics.acc(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="b must have shape"):
        metrics.fwt(R, torch.zeros(2))


def test_mean_ci_matches_t_interval():
    mean, half = metrics.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    # t(0.975, 3) = 3.182446, sd = 1.290994
    assert half == pytest.approx(3.182446 * 1.290994 / 2, rel=1e-5)
    assert math.isnan(metrics.mean_ci([0.7])[1])


def test_forgetting_of_losses_is_the_rise_from_the_best_earlier_loss():
    # losses: experience 0 went 0.5 -> 0.2 -> 0.9; experience 1 went 0.3 -> 0.4
    R = torch.tensor([[0.5, 2.0, 2.0], [0.2, 0.3, 2.0], [0.9, 0.4, 0.1]])
    b = torch.tensor([1.0, 1.0, 1.0])
    m = metrics.derived_metrics(R, b, higher_is_better=False)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.2) + (0.4 - 0.3)) / 2)
    assert m["bwt"] == pytest.approx(((0.9 - 0.5) + (0.4 - 0.3)) / 2)
    # read as accuracies, the same matrix has its best earlier score at the maximum
    assert metrics.derived_metrics(R, b)["forgetting"] == pytest.approx(
        ((0.5 - 0.9) + (2.0 - 0.4)) / 2
    )
