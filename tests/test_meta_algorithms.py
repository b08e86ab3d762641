"""Tests of metacl.meta.algorithms: MAML, FOMAML, Reptile, Meta-SGD, ANIL."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from metacl.errors import ConfigError
from metacl.meta import algorithms
from metacl.meta.algorithms import ANIL, MAML, META_ALGORITHMS, MetaSGD, Reptile
from metacl.meta.tasks import SineTasks, TaskBatch

mse = nn.functional.mse_loss


class Net(nn.Module):
    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        norm = [nn.BatchNorm1d(8)] if batch_norm else []
        self.features = nn.Sequential(nn.Linear(1, 8), *norm, nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _batch(tasks: int = 4, seed: int = 0) -> TaskBatch:
    b = SineTasks(shots=5, query_shots=7).sample(
        tasks, generator=torch.Generator().manual_seed(seed)
    )
    return TaskBatch(
        *(t.double() for t in (b.support_x, b.support_y, b.query_x, b.query_y))
    )


def _model(batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return Net(batch_norm).double()


ALGORITHMS = {
    "maml": lambda m: MAML(m, mse, inner_lr=0.1, inner_steps=2),
    "fomaml": lambda m: MAML(m, mse, inner_lr=0.1, inner_steps=2, first_order=True),
    "metasgd": lambda m: MetaSGD(m, mse, inner_lr=0.1),
    "anil": lambda m: ANIL(m, mse, inner_lr=0.1, inner_steps=2),
    "reptile": lambda m: Reptile(m, mse, inner_lr=0.1, inner_steps=3),
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_vmap_and_loop_give_the_same_meta_gradient(name):
    algorithm = ALGORITHMS[name](_model())
    batch = _batch()
    loss_v, grads_v = algorithm.meta_gradient(batch, vectorize=True)
    loss_l, grads_l = algorithm.meta_gradient(batch, vectorize=False)
    torch.testing.assert_close(loss_v, loss_l, rtol=1e-12, atol=1e-12)
    assert sorted(grads_v) == sorted(algorithm.meta_parameters())
    for key in grads_v:
        torch.testing.assert_close(grads_v[key], grads_l[key], rtol=1e-10, atol=1e-12)
    assert any(float(g.abs().max()) > 1e-6 for g in grads_v.values())


def test_meta_gradient_is_the_mean_of_per_task_gradients():
    algorithm = MAML(_model(), mse, inner_lr=0.1)
    batch = _batch(3)
    _, together = algorithm.meta_gradient(batch, vectorize=True)
    singles = [
        algorithm.meta_gradient(batch.slice(i, i + 1), vectorize=False)[1]
        for i in range(3)
    ]
    for key in together:
        mean = sum(s[key] for s in singles) / 3
        torch.testing.assert_close(together[key], mean, rtol=1e-10, atol=1e-12)


def test_batch_norm_second_order_takes_the_loop_and_forced_vmap_refuses():
    batch = _batch()
    algorithm = MAML(_model(batch_norm=True).train(), mse, inner_lr=0.1)
    _, loop = algorithm.meta_gradient(batch, vectorize=False)
    _, auto = algorithm.meta_gradient(batch)  # "auto" must not use vmap here
    for key in loop:
        torch.testing.assert_close(auto[key], loop[key], rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match=r"features\.1 \(BatchNorm1d\).*'loop'"):
        algorithm.meta_gradient(batch, vectorize=True)
    algorithm.vectorize = "vmap"
    with pytest.raises(ConfigError, match="second-order gradients"):
        algorithm.meta_gradient(batch)

    # first order through BatchNorm agrees under vmap
    fomaml = MAML(_model(batch_norm=True).train(), mse, inner_lr=0.1, first_order=True)
    _, v = fomaml.meta_gradient(batch, vectorize=True)
    _, lo = fomaml.meta_gradient(batch, vectorize=False)
    for key in v:
        torch.testing.assert_close(v[key], lo[key], rtol=1e-10, atol=1e-12)


def test_batch_norm_buffers_of_adapted_copies_never_leak_into_the_model():
    model = _model(batch_norm=True).train()
    before = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = _batch()
    algorithm = MAML(model, mse, inner_lr=0.1, inner_steps=3, first_order=True)
    algorithm.meta_gradient(batch, vectorize=True)
    algorithm.meta_gradient(batch, vectorize=False)
    result_v = algorithm.evaluate(batch, vectorize=True)
    result_l = algorithm.evaluate(batch, vectorize=False)
    for name, b in model.named_buffers():
        assert torch.equal(b, before[name]), name
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
    for key in result_v:
        torch.testing.assert_close(result_v[key], result_l[key])


def test_evaluate_reports_before_and_after_and_adaptation_helps():
    algorithm = MAML(_model(), mse, inner_lr=0.05, inner_steps=5)
    result = algorithm.evaluate(_batch(6))
    assert sorted(result) == ["loss", "loss_before"]
    assert result["loss"].shape == (6,)
    assert float(result["loss"].mean()) < float(result["loss_before"].mean())
    assert torch.equal(
        algorithm.evaluate(_batch(6), steps=0)["loss"], result["loss_before"]
    )


def test_reptile_moves_towards_the_mean_of_adapted_parameters():
    model = _model()
    batch = _batch(2)
    _, grads = Reptile(model, mse, inner_lr=0.1, inner_steps=3).meta_gradient(batch)

    adapted = []
    for i in range(2):
        sx, sy, _, _ = batch.task(i)
        copy = _model()
        opt = torch.optim.SGD(copy.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            mse(copy(sx), sy).backward()
            opt.step()
        adapted.append(dict(copy.named_parameters()))
    for name, p in model.named_parameters():
        mean = (adapted[0][name] + adapted[1][name]).detach() / 2
        torch.testing.assert_close(
            grads[name], p.detach() - mean, rtol=1e-10, atol=1e-12
        )


def test_metasgd_learns_step_sizes_and_anil_adapts_only_the_head():
    model = _model()
    metasgd = MetaSGD(model, mse, inner_lr=0.1)
    _, grads = metasgd.meta_gradient(_batch())
    assert "inner_lr.head.weight" in grads
    assert grads["inner_lr.head.weight"].shape == model.head.weight.shape
    assert float(grads["inner_lr.features.0.weight"].abs().sum()) > 0

    anil = ANIL(_model(), mse, inner_lr=0.1)
    assert anil.only == ("head",)
    with pytest.raises(ConfigError, match="head = 'classifier'"):
        ANIL(_model(), mse, head="classifier")


def test_anil_inner_loop_changes_only_the_head(monkeypatch):
    model = _model()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapted = []
    real_adapt = algorithms.adapt

    def recording_adapt(*args, **kwargs):
        params, buffers = real_adapt(*args, **kwargs)
        adapted.append({n: p.detach().clone() for n, p in params.items()})
        return params, buffers

    monkeypatch.setattr(algorithms, "adapt", recording_adapt)
    ANIL(model, mse, inner_lr=0.1, inner_steps=2).meta_gradient(
        _batch(), vectorize=False
    )
    assert len(adapted) == 4  # one inner loop per task
    for params in adapted:
        assert sorted(params) == sorted(initial)
        for name, p in params.items():
            if name.startswith("head."):
                assert not torch.equal(p, initial[name]), name
            else:
                assert torch.equal(p, initial[name]), name


def _anil_meta_gradient_by_hand(model, batch, *, inner_lr, steps, second_order):
    """ANIL's meta-gradient written out: per task, ``steps`` SGD steps on the head
    alone (the body fixed), then the query loss; the mean over tasks is
    differentiated with respect to the initial body and head."""
    w1, b1 = model.features[0].weight, model.features[0].bias
    w2, b2 = model.head.weight, model.head.bias
    start = [t.detach().clone().requires_grad_() for t in (w1, b1, w2, b2)]
    body_w, body_b, head_w, head_b = start

    def net(x, w, b):
        return torch.tanh(x @ body_w.T + body_b) @ w.T + b

    losses = []
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.task(i)
        w, b = head_w, head_b
        for _ in range(steps):
            gw, gb = torch.autograd.grad(
                mse(net(sx, w, b), sy), (w, b), create_graph=second_order
            )
            w, b = w - inner_lr * gw, b - inner_lr * gb
        losses.append(mse(net(qx, w, b), qy))
    grads = torch.autograd.grad(torch.stack(losses).mean(), start)
    names = ["features.0.weight", "features.0.bias", "head.weight", "head.bias"]
    return dict(zip(names, grads, strict=True))


@pytest.mark.parametrize("vectorize", [True, False])
def test_anil_meta_gradient_equals_a_hand_computation(vectorize):
    model = _model()
    batch = _batch()
    _, grads = ANIL(model, mse, inner_lr=0.1, inner_steps=2).meta_gradient(
        batch, vectorize=vectorize
    )
    second = _anil_meta_gradient_by_hand(
        model, batch, inner_lr=0.1, steps=2, second_order=True
    )
    assert sorted(grads) == sorted(second)
    for name in grads:
        torch.testing.assert_close(grads[name], second[name], rtol=1e-10, atol=1e-12)

    # the body gets a meta-gradient, and part of it flows through the head's
    # adaptation (the derivative of the inner head gradients w.r.t. the body):
    # treating those gradients as constants gives another body gradient
    first = _anil_meta_gradient_by_hand(
        model, batch, inner_lr=0.1, steps=2, second_order=False
    )
    for name in ("features.0.weight", "features.0.bias"):
        assert float(grads[name].abs().max()) > 1e-6
        assert not torch.allclose(grads[name], first[name], rtol=1e-6, atol=1e-9)
    _, first_order = ANIL(
        model, mse, inner_lr=0.1, inner_steps=2, first_order=True
    ).meta_gradient(batch, vectorize=vectorize)
    for name in grads:
        torch.testing.assert_close(
            first_order[name], first[name], rtol=1e-10, atol=1e-12
        )


class DataDependent(nn.Module):
    """A forward with Python control flow on tensor values: vmap cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > 1e9:
            return x
        return self.head(x)


def test_auto_falls_back_to_the_loop_with_a_warning(caplog):
    torch.manual_seed(0)
    model = DataDependent().double()
    algorithm = MAML(model, mse, inner_lr=0.1)
    batch = _batch()
    with caplog.at_level(logging.WARNING, logger="metacl.meta.algorithms"):
        loss, grads = algorithm.meta_gradient(batch)
    assert algorithm.vmap_works is False
    assert "falling back to a loop" in caplog.text
    loss_l, grads_l = algorithm.meta_gradient(batch, vectorize=False)
    assert torch.equal(loss, loss_l)
    with pytest.raises(RuntimeError):
        algorithm.meta_gradient(batch, vectorize=True)

    plain = MAML(_model(), mse)
    plain.meta_gradient(batch)
    assert plain.vmap_works is True


def test_registry_and_settings_errors_name_the_value():
    with pytest.raises(ConfigError, match="unknown meta algorithm 'mamll'.*maml"):
        META_ALGORITHMS.build("mamll", _model(), mse)
    with pytest.raises(ConfigError, match="inner_lr = -1"):
        MAML(_model(), mse, inner_lr=-1)
    with pytest.raises(ConfigError, match="inner_steps = 'two'"):
        MAML(_model(), mse, inner_steps="two")
    with pytest.raises(ConfigError, match="vectorize = 'gpu'"):
        MAML(_model(), mse, vectorize="gpu")
    built = META_ALGORITHMS.build("fomaml", _model(), mse, inner_lr=0.2)
    assert isinstance(built, MAML) and built.first_order and built.inner_lr == 0.2
    assert sorted(META_ALGORITHMS.names()) == [
        "anil",
        "fomaml",
        "maml",
        "metasgd",
        "reptile",
    ]


def test_convolutions_on_the_cpu_take_the_loop_under_auto_and_agree_with_vmap():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    ).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4, 9), generator=g)
    batch = TaskBatch(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:])
    algorithm = MAML(model, nn.functional.cross_entropy, inner_lr=0.3, inner_steps=2)

    _, auto = algorithm.meta_gradient(batch)
    assert algorithm.vmap_works is None  # vmap was not even tried
    _, loop = algorithm.meta_gradient(batch, vectorize=False)
    algorithm.vectorize = "vmap"
    _, forced = algorithm.meta_gradient(batch)
    for key in loop:
        assert torch.equal(auto[key], loop[key])
        torch.testing.assert_close(forced[key], loop[key], rtol=1e-10, atol=1e-12)
