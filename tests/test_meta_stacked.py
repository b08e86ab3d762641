"""Tests of metacl.meta.stacked: linear stacks run with every task's weights stacked
give the meta-gradients of the per-task loop, and "auto" takes them only where they
apply."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.func import vmap

from metacl.functional import SGDStep
from metacl.meta.algorithms import ANIL, MAML, MetaSGD
from metacl.meta.stacked import LinearStack, per_task_loss
from metacl.meta.tasks import SineTasks, TaskBatch
from metacl.models import build_model

mse = nn.functional.mse_loss
cross_entropy = nn.functional.cross_entropy


def sine_batch(tasks: int = 5) -> TaskBatch:
    b = SineTasks(shots=6, query_shots=9).sample(
        tasks, generator=torch.Generator().manual_seed(1)
    )
    return TaskBatch(
        *(t.double() for t in (b.support_x, b.support_y, b.query_x, b.query_y))
    )


def episode_batch(tasks: int = 4, ways: int = 3, shots: int = 2) -> TaskBatch:
    """Random 1x4x4 'images' with labels in [0, ways), one batch of episodes."""
    g = torch.Generator().manual_seed(2)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(ways).repeat_interleave(n).expand(tasks, -1)
        x = torch.randn(tasks, ways * n, 1, 4, 4, generator=g, dtype=torch.float64)
        return x + y[..., None, None, None], y.contiguous()

    sx, sy = draw(shots)
    qx, qy = draw(shots + 1)
    return TaskBatch(sx, sy, qx, qy)


def sequential() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(1, 16),
        nn.Tanh(),
        nn.Sequential(nn.Linear(16, 8), nn.ReLU()),
        nn.Linear(8, 1),
    ).double()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", (1, 4, 4), 3, hidden=[12, 10]).double()


CASES = {
    "maml-2nd-order-3-steps": (sequential, sine_batch, mse, lambda m, f: MAML(m, f, inner_lr=0.1, inner_steps=3)),
    "fomaml": (sequential, sine_batch, mse, lambda m, f: MAML(m, f, inner_lr=0.1, inner_steps=2, first_order=True)),
    "metasgd": (sequential, sine_batch, mse, lambda m, f: MetaSGD(m, f, inner_lr=0.1)),
    "maml-episodes": (mlp, episode_batch, cross_entropy, lambda m, f: MAML(m, f, inner_lr=0.4, inner_steps=2)),
    "anil-episodes": (mlp, episode_batch, cross_entropy, lambda m, f: ANIL(m, f, inner_lr=0.4, inner_steps=2)),
    "metasgd-first-order-episodes": (mlp, episode_batch, cross_entropy, lambda m, f: MetaSGD(m, f, inner_lr=0.4, first_order=True)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_stacked_tasks_give_the_loops_meta_gradient(case, caplog):
    make_model, make_batch, loss_fn, make_algorithm = CASES[case]
    algorithm = make_algorithm(make_model(), loss_fn)
    batch = make_batch()
    with caplog.at_level(logging.INFO, logger="metacl"):
        loss_s, grads_s = algorithm.meta_gradient(batch)  # "auto": stacked
    assert "batched matrix products" in caplog.text
    loss_l, grads_l = algorithm.meta_gradient(batch, vectorize=False)
    torch.testing.assert_close(loss_s, loss_l, rtol=1e-12, atol=1e-12)
    assert sorted(grads_s) == sorted(algorithm.meta_parameters())
    for name in grads_l:
        torch.testing.assert_close(grads_s[name], grads_l[name], rtol=1e-9, atol=1e-12)
    # the meta-gradient is not trivially zero anywhere it should not be
    assert all(float(g.abs().sum()) > 0 for g in grads_s.values())


def test_anil_stacked_adapts_only_the_head():
    """Stacked ANIL's body gradient is the second-order one: it differs from what
    treating the head's inner gradients as constants gives."""
    batch = episode_batch()
    second = ANIL(mlp(), cross_entropy, inner_lr=0.4, inner_steps=2)
    first = ANIL(mlp(), cross_entropy, inner_lr=0.4, inner_steps=2, first_order=True)
    _, g2 = second.meta_gradient(batch)
    _, g1 = first.meta_gradient(batch)
    body = [n for n in g2 if n.startswith("features")]
    assert body and any(not torch.allclose(g2[n], g1[n]) for n in body)


def test_linear_stack_runs_each_task_with_its_own_weights():
    model = sequential()
    stack = LinearStack.of(model)
    assert stack is not None
    params = {
        n: torch.randn(3, *p.shape, dtype=p.dtype) for n, p in model.named_parameters()
    }
    x = torch.randn(3, 7, 1, dtype=torch.float64)
    out = stack(params, x)  # (tasks, examples, outputs)
    for t in range(3):
        own = {n: p[t] for n, p in params.items()}
        torch.testing.assert_close(
            out[t], torch.func.functional_call(model, own, (x[t],))
        )


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)),  # buffers
        nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5), nn.Linear(3, 1)),  # random
        nn.Sequential(nn.Linear(2, 3), nn.Softmax(dim=-1)),  # not elementwise
        nn.Sequential(nn.Flatten(0), nn.Linear(2, 1)),  # flattens the batch
        nn.Sequential(nn.ReLU()),  # no linear layer
        nn.Linear(2, 1),  # not a stack
    ],
)
def test_other_models_are_not_stacks(model):
    assert LinearStack.of(model) is None


def test_auto_takes_vmap_where_stacking_does_not_apply(caplog):
    """A rule other than plain or per-parameter SGD may use the per-task loss, and a
    convolution is no linear stack: both keep the usual paths."""

    class Halving(SGDStep):
        """Not one of the two known rules, though it acts like SGD."""

    batch = episode_batch()
    maml = MAML(mlp(), cross_entropy, inner_lr=0.4)
    maml.step_sizes = lambda: Halving(0.2)  # type: ignore[method-assign]
    cnn = MAML(
        build_model("cnn", (1, 4, 4), 3, channels=[4], hidden=0).double(), cross_entropy
    )
    with caplog.at_level(logging.INFO, logger="metacl"):
        loss, _ = maml.meta_gradient(batch)
        cnn.meta_gradient(batch)
    assert "batched matrix products" not in caplog.text
    torch.testing.assert_close(loss, maml.meta_gradient(batch, vectorize=False)[0])


def test_per_task_loss_is_the_loss_of_each_task_alone():
    g = torch.Generator().manual_seed(3)
    outputs = torch.randn(4, 6, 5, generator=g)
    labels = torch.randint(0, 5, (4, 6), generator=g)
    targets = torch.randn(4, 6, 5, generator=g)
    for loss_fn, y in (
        (cross_entropy, labels),
        (mse, targets),
        (nn.functional.l1_loss, targets),
    ):
        expected = torch.stack([loss_fn(outputs[t], y[t]) for t in range(4)])
        torch.testing.assert_close(per_task_loss(loss_fn)(outputs, y), expected)
    torch.testing.assert_close(
        per_task_loss(mse)(outputs, targets), vmap(mse)(outputs, targets)
    )
