"""Tests of metacl.functional: the differentiable inner loop on parameter dictionaries."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

from metacl.errors import ConfigError
from metacl.functional import (
    PerParameterStep,
    SGDStep,
    adapt,
    as_step_rule,
    buffers_of,
    forward,
    params_of,
    per_task_buffers,
    second_order_vmap_hazards,
    select,
)

mse = nn.functional.mse_loss


class Tiny(nn.Module):
    """1-4-1 tanh network, float64: small enough for finite differences."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(1, 4), nn.Tanh())
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU())
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _task(seed: int, n: int = 6, features: int = 1):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(n, features, generator=g, dtype=torch.float64)
    qx = torch.randn(n + 2, features, generator=g, dtype=torch.float64)
    return sx, torch.sin(2 * sx), qx, torch.sin(2 * qx)


def _meta_loss(model, sx, sy, qx, qy, *, steps, lr, first_order=False):
    adapted, buffers = adapt(
        model,
        params_of(model),
        buffers_of(model),
        sx,
        sy,
        mse,
        steps=steps,
        inner_lr=lr,
        first_order=first_order,
    )
    return mse(forward(model, adapted, buffers, qx), qy)


def test_second_order_meta_gradient_matches_hand_derived_linear_regression():
    # linear model theta = (w, b), features phi(x) = [x, 1]:
    #   support gradient g_s = 2/n Phi_s^T (Phi_s theta - y_s), Hessian H_s = 2/n Phi_s^T Phi_s
    #   theta' = theta - alpha g_s;   meta-gradient = (I - alpha H_s) g_q(theta')
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    g = torch.Generator().manual_seed(1)
    sx, qx = (
        torch.randn(5, 3, generator=g).double(),
        torch.randn(7, 3, generator=g).double(),
    )
    sy, qy = (
        torch.randn(5, 1, generator=g).double(),
        torch.randn(7, 1, generator=g).double(),
    )
    alpha = 0.3

    loss = _meta_loss(model, sx, sy, qx, qy, steps=1, lr=alpha)
    w_grad, b_grad = torch.autograd.grad(loss, [model.weight, model.bias])
    got = torch.cat([w_grad.flatten(), b_grad])

    phi_s = torch.cat([sx, torch.ones(5, 1, dtype=torch.float64)], 1)
    phi_q = torch.cat([qx, torch.ones(7, 1, dtype=torch.float64)], 1)
    theta = torch.cat([model.weight.detach().flatten(), model.bias.detach()])
    g_s = 2 / 5 * phi_s.T @ (phi_s @ theta - sy[:, 0])
    h_s = 2 / 5 * phi_s.T @ phi_s
    adapted = theta - alpha * g_s
    g_q = 2 / 7 * phi_q.T @ (phi_q @ adapted - qy[:, 0])
    expected = (torch.eye(4, dtype=torch.float64) - alpha * h_s) @ g_q
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)

    # first order keeps g_q(theta') and drops exactly -alpha H_s g_q
    loss_fo = _meta_loss(model, sx, sy, qx, qy, steps=1, lr=alpha, first_order=True)
    fo = torch.cat(
        [t.flatten() for t in torch.autograd.grad(loss_fo, [model.weight, model.bias])]
    )
    torch.testing.assert_close(fo, g_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got - fo, -alpha * h_s @ g_q, rtol=1e-10, atol=1e-12)


def test_second_order_meta_gradient_matches_finite_differences_over_two_steps():
    torch.manual_seed(0)
    model = Tiny().double()
    sx, sy, qx, qy = _task(0)
    loss = _meta_loss(model, sx, sy, qx, qy, steps=2, lr=0.2)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    eps = 1e-6
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            for i in range(p.numel()):
                flat = p.view(-1)
                flat[i] += eps
                up = float(_meta_loss(model, sx, sy, qx, qy, steps=2, lr=0.2))
                flat[i] -= 2 * eps
                down = float(_meta_loss(model, sx, sy, qx, qy, steps=2, lr=0.2))
                flat[i] += eps
                assert g.view(-1)[i].item() == pytest.approx(
                    (up - down) / (2 * eps), rel=1e-6, abs=1e-8
                )

    # and the first-order gradient does not match them (the test can tell)
    fo = torch.autograd.grad(
        _meta_loss(model, sx, sy, qx, qy, steps=2, lr=0.2, first_order=True),
        list(model.parameters()),
    )
    assert (
        max(float((a - b).abs().max()) for a, b in zip(fo, grads, strict=True)) > 1e-3
    )


def test_first_order_drops_exactly_the_hessian_vector_term_on_a_network():
    torch.manual_seed(0)
    model = Tiny().double()
    sx, sy, qx, qy = _task(3)
    alpha = 0.1
    names = [n for n, _ in model.named_parameters()]
    so = torch.autograd.grad(
        _meta_loss(model, sx, sy, qx, qy, steps=1, lr=alpha), list(model.parameters())
    )
    fo = torch.autograd.grad(
        _meta_loss(model, sx, sy, qx, qy, steps=1, lr=alpha, first_order=True),
        list(model.parameters()),
    )

    # the second-order term is -alpha * H_s(theta) @ g_q(theta'), g_q = first order
    theta = {
        n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()
    }
    support = mse(functional_call(model, theta, (sx,)), sy)
    g_s = torch.autograd.grad(support, list(theta.values()), create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(g_s, fo, strict=True))
    hvp = torch.autograd.grad(dot, list(theta.values()))
    for name, s, f, h in zip(names, so, fo, hvp, strict=True):
        torch.testing.assert_close(s - f, -alpha * h, rtol=1e-9, atol=1e-12, msg=name)


def test_adapt_never_writes_to_the_module_or_the_given_buffers():
    torch.manual_seed(0)
    model = WithBatchNorm().double().train()
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before_buffers = {n: b.clone() for n, b in model.named_buffers()}
    given = buffers_of(model)
    x = torch.randn(8, 2, dtype=torch.float64) * 3 + 1
    y = torch.randn(8, 1, dtype=torch.float64)

    adapted, adapted_buffers = adapt(
        model, params_of(model), given, x, y, mse, steps=3, inner_lr=0.1
    )
    forward(model, adapted, adapted_buffers, x)

    for name, b in model.named_buffers():
        assert torch.equal(b, before_buffers[name]), name
        assert torch.equal(given[name], before_buffers[name]), name
    for name, p in model.named_parameters():
        assert torch.equal(p, before_params[name]), name
    # the adapted copy did update its own statistics: 3 support steps, 1 query pass
    assert int(adapted_buffers["features.1.num_batches_tracked"]) == 4
    assert not torch.allclose(
        adapted_buffers["features.1.running_mean"],
        before_buffers["features.1.running_mean"],
    )
    assert not torch.equal(adapted["head.weight"], before_params["head.weight"])


def test_zero_steps_return_the_parameters_and_only_adapts_selected_ones():
    model = Tiny().double()
    sx, sy, _, _ = _task(1)
    params = params_of(model)
    same, _ = adapt(model, params, {}, sx, sy, mse, steps=0)
    assert all(same[n] is params[n] for n in params)

    adapted, _ = adapt(
        model, params, {}, sx, sy, mse, steps=2, inner_lr=0.5, only="head"
    )
    assert torch.equal(adapted["features.0.weight"], params["features.0.weight"])
    assert not torch.equal(adapted["head.weight"], params["head.weight"])
    assert select(params, ["features"]) == ["features.0.weight", "features.0.bias"]


def test_learned_step_sizes_receive_their_gradient():
    # one step: d(query loss)/d(alpha) = -g_s * g_q(theta'), entry by entry
    torch.manual_seed(0)
    model = Tiny().double()
    sx, sy, qx, qy = _task(2)
    lrs = {
        n: torch.full_like(p, 0.1, requires_grad=True)
        for n, p in model.named_parameters()
    }
    adapted, _ = adapt(model, params_of(model), {}, sx, sy, mse, inner_lr=lrs)
    loss = mse(forward(model, adapted, {}, qx), qy)
    lr_grads = torch.autograd.grad(loss, list(lrs.values()), retain_graph=True)

    theta = params_of(model, detach=True)
    g_s = grad(lambda p: mse(functional_call(model, p, (sx,)), sy))(theta)
    new = {n: theta[n] - 0.1 * g_s[n] for n in theta}
    g_q = grad(lambda p: mse(functional_call(model, p, (qx,)), qy))(new)
    for name, got in zip(lrs, lr_grads, strict=True):
        torch.testing.assert_close(got, -g_s[name] * g_q[name], rtol=1e-9, atol=1e-12)


def test_a_custom_step_rule_with_state_plugs_in():
    class Momentum:
        """Heavy-ball steps: v <- beta v + g; theta <- theta - lr v."""

        def __init__(self) -> None:
            self.calls = 0

        def init(self, params):
            return {n: torch.zeros_like(p) for n, p in params.items()}

        def __call__(self, params, grads, state, *, loss):
            self.calls += 1
            assert loss.ndim == 0
            velocity = {n: 0.9 * state[n] + grads[n] for n in params}
            return {n: p - 0.1 * velocity[n] for n, p in params.items()}, velocity

    model = Tiny().double()
    sx, sy, _, _ = _task(4)
    rule = Momentum()
    adapted, _ = adapt(model, params_of(model), {}, sx, sy, mse, steps=2, inner_lr=rule)
    assert rule.calls == 2

    # the same two steps by hand
    theta = params_of(model, detach=True)
    support_grad = grad(lambda p: mse(functional_call(model, p, (sx,)), sy))
    g1 = support_grad(theta)
    v1 = g1
    theta1 = {n: theta[n] - 0.1 * v1[n] for n in theta}
    g2 = support_grad(theta1)
    theta2 = {n: theta1[n] - 0.1 * (0.9 * v1[n] + g2[n]) for n in theta}
    for n in theta:
        torch.testing.assert_close(adapted[n].detach(), theta2[n])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"steps": -1}, "steps = -1"),
        ({"steps": 1.5}, "steps = 1.5"),
        ({"inner_lr": -0.1}, "inner_lr = -0.1"),
        ({"inner_lr": float("nan")}, "inner_lr = nan"),
        ({"inner_lr": "fast"}, "inner_lr = 'fast'"),
        ({"only": ["body"]}, "'body'"),
        ({"inner_lr": {"head.weight": torch.tensor(0.1)}}, "no step size"),
    ],
)
def test_bad_inner_loop_settings_are_named(kwargs, fragment):
    model = Tiny().double()
    sx, sy, _, _ = _task(0)
    with pytest.raises(ConfigError) as error:
        adapt(model, params_of(model), {}, sx, sy, mse, **kwargs)
    assert fragment in str(error.value)


def test_step_rules_from_floats_and_dicts():
    assert isinstance(as_step_rule(0.5), SGDStep)
    assert isinstance(as_step_rule({"w": torch.ones(1)}), PerParameterStep)
    rule = PerParameterStep({"w": torch.tensor([-1.0, 2.0])}, min_lr=0.0)
    new, _ = rule(
        {"w": torch.zeros(2)}, {"w": torch.ones(2)}, {}, loss=torch.tensor(0.0)
    )
    assert new["w"].tolist() == [0.0, -2.0]  # the negative rate was clamped at 0


def test_second_order_vmap_hazards_names_batch_statistics_layers():
    model = WithBatchNorm()
    assert second_order_vmap_hazards(model.train()) == ["features.1 (BatchNorm1d)"]
    assert second_order_vmap_hazards(model.eval()) == []
    assert second_order_vmap_hazards(
        nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    ) == ["1 (LayerNorm)"]
    assert second_order_vmap_hazards(Tiny()) == []


def test_per_task_buffers_are_independent_copies():
    buffers = buffers_of(WithBatchNorm())
    stacked = per_task_buffers(buffers, 3)
    assert stacked["features.1.running_mean"].shape == (3, 3)
    stacked["features.1.running_mean"][0] += 1
    assert float(stacked["features.1.running_mean"][1].abs().sum()) == 0.0
    assert float(buffers["features.1.running_mean"].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="tasks must be at least 1, got 0"):
        per_task_buffers(buffers, 0)
