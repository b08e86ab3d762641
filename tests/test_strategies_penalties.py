import pytest
import torch
from torch import nn
from torch.func import functional_call

from metacl.errors import ConfigError
from metacl.strategies.penalties import (
    agem_project,
    distillation_loss,
    fisher_diagonal,
    quadratic_penalty,
    quadratic_penalty_grad,
    si_importance,
)


def _tiny():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}

    def logits_fn(p, x, task):
        return functional_call(model, p, (x,))

    x = torch.tensor([[1.0, -2.0], [0.5, 0.3], [-1.0, 1.5], [2.0, 0.0]])
    y = torch.tensor([0, 2, 1, 2])
    return model, params, logits_fn, x, y


def _hand_gradients(params, x, y):
    # d CE / d logits = softmax - onehot; d logits / d W = x
    probs = torch.softmax(x @ params["weight"].T + params["bias"], dim=1)
    delta = probs - nn.functional.one_hot(y, 3).float()  # (n, 3)
    return delta[:, :, None] * x[:, None, :], delta  # (n, 3, 2), (n, 3)


def test_quadratic_penalty_is_zero_at_anchor_and_weighted_away_from_it():
    anchor = {"w": torch.tensor([1.0, -1.0, 0.5])}
    importance = {"w": torch.tensor([2.0, 0.0, 10.0])}
    assert float(quadratic_penalty(anchor, anchor, importance)) == 0.0
    moved = {"w": anchor["w"] + torch.tensor([0.5, 3.0, 0.1])}
    assert float(quadratic_penalty(moved, anchor, importance)) == pytest.approx(
        2.0 * 0.25 + 0.0 * 9.0 + 10.0 * 0.01
    )
    farther = {"w": anchor["w"] + torch.tensor([1.0, 3.0, 0.2])}
    assert quadratic_penalty(farther, anchor, importance) > quadratic_penalty(
        moved, anchor, importance
    )
    # the closed-form gradient equals autograd's
    p = {"w": moved["w"].clone().requires_grad_()}
    quadratic_penalty(p, anchor, importance).backward()
    assert torch.allclose(
        p["w"].grad, quadratic_penalty_grad(moved, anchor, importance)["w"]
    )


def test_empirical_fisher_matches_hand_computation():
    _, params, logits_fn, x, y = _tiny()
    gw, gb = _hand_gradients(params, x, y)
    fisher = fisher_diagonal(logits_fn, params, x, y, 0)
    assert torch.allclose(fisher["weight"], (gw**2).mean(0), atol=1e-6)
    assert torch.allclose(fisher["bias"], (gb**2).mean(0), atol=1e-6)


def test_minibatch_fisher_squares_mean_gradients():
    _, params, logits_fn, x, y = _tiny()
    gw, gb = _hand_gradients(params, x, y)
    fisher = fisher_diagonal(logits_fn, params, x, y, 0, batch_size=3)
    # groups {0, 1, 2} and {3}; the mean gradient of each, squared, averaged
    expected = (gw[:3].mean(0) ** 2 + gw[3] ** 2) / 2
    assert torch.allclose(fisher["weight"], expected, atol=1e-6)


def test_true_fisher_draws_labels_from_the_model():
    _, params, logits_fn, x, _ = _tiny()
    x1 = x[:1].repeat(20000, 1)
    fisher = fisher_diagonal(
        logits_fn,
        params,
        x1,
        None,
        0,
        kind="true",
        generator=torch.Generator().manual_seed(0),
    )
    # E_{y ~ p}[(p - e_y)^2] per bias entry
    p = torch.softmax(logits_fn(params, x[:1], None), dim=1)[0]
    eye = torch.eye(3)
    expected = sum(p[c] * (p - eye[c]) ** 2 for c in range(3))
    assert torch.allclose(fisher["bias"], expected, rtol=0.05, atol=1e-3)


def test_fisher_rejects_bad_settings():
    _, params, logits_fn, x, y = _tiny()
    with pytest.raises(ConfigError, match="valid choices: empirical, true"):
        fisher_diagonal(logits_fn, params, x, y, 0, kind="exact")
    with pytest.raises(ConfigError, match="fisher_batch_size = 0"):
        fisher_diagonal(logits_fn, params, x, y, 0, batch_size=0)


def test_si_importance_divides_path_by_damped_displacement():
    path = torch.tensor([1.0, -0.5, 0.2])
    delta = torch.tensor([1.0, 1.0, 0.0])
    assert torch.allclose(
        si_importance(path, delta, xi=0.1), torch.tensor([1 / 1.1, 0.0, 2.0])
    )
    assert float(si_importance(path, delta, xi=0.1, clamp_negative=False)[1]) < 0


def test_distillation_is_zero_for_identical_outputs_and_positive_otherwise():
    logits = torch.randn(5, 4)
    assert float(distillation_loss(logits, logits.clone(), temperature=2.0)) == 0.0
    assert float(distillation_loss(logits, logits.flip(1), temperature=2.0)) > 0.0


def test_agem_projection():
    g_ref = torch.tensor([1.0, 0.0, 1.0])
    g = torch.tensor([-2.0, 1.0, 0.5])  # g . g_ref = -1.5 < 0
    projected = agem_project(g, g_ref)
    assert float(torch.dot(projected, g_ref)) >= -1e-6
    assert torch.allclose(projected, torch.tensor([-1.25, 1.0, 1.25]))
    # already non-negative: unchanged
    ok = torch.tensor([2.0, -1.0, 0.0])
    assert agem_project(ok, g_ref) is ok
    g = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    r = -g + 0.1 * torch.randn(1000, generator=torch.Generator().manual_seed(2))
    assert float(torch.dot(agem_project(g, r), r)) >= -1e-3
