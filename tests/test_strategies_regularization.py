import dataclasses
import math

import pytest
import torch
from torch import nn

from metacl.config import resolve_config
from metacl.data import load_dataset
from metacl.data.scenarios import build_stream
from metacl.errors import ConfigError, ScenarioError
from metacl.experiment import run_single
from metacl.models import MultiHead, build_model
from metacl.strategies import (
    EWC,
    SI,
    LwF,
    OnlineEWC,
    OptimizerSpec,
    build_strategy,
    regularization,
)


def _setup(blobs, name, scenario="class_incremental", multi_head=False, **settings):
    stream = build_stream(scenario, blobs, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, 10, hidden=[8])
    if multi_head:
        model = MultiHead(model, len(stream))
    return stream, build_strategy(
        name, model, stream, OptimizerSpec(lr=0.1), **settings
    )


def _train(strategy, experience, steps=5):
    strategy.begin_experience(experience)
    for i in range(steps):
        s = slice(16 * i, 16 * (i + 1))
        x, y = experience.train_x[s], experience.train_y[s]
        strategy.observe(x, y, experience.task_ids(len(x)))
    strategy.end_experience(experience)


def _move(model, scale):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_ewc_penalty_is_zero_at_anchor_and_fisher_weighted_away(blobs):
    stream, ewc = _setup(blobs, "ewc", lambda_=4.0)
    _train(ewc, stream.experiences[0])
    assert float(ewc.penalty().detach()) == pytest.approx(0.0, abs=1e-7)
    anchor = {n: p.detach().clone() for n, p in ewc.model.named_parameters()}
    _move(ewc.model, 0.1)
    expected = sum(
        (ewc.importance[n] * (p.detach() - anchor[n]) ** 2).sum()
        for n, p in ewc.model.named_parameters()
    )
    assert float(ewc.penalty().detach()) == pytest.approx(
        2.0 * float(expected), rel=1e-5
    )
    small = float(ewc.penalty().detach())
    _move(ewc.model, 0.1)
    assert float(ewc.penalty().detach()) > small
    assert all(bool((f >= 0).all()) for f in ewc.importance.values())


def test_ewc_sums_one_penalty_per_experience(blobs, monkeypatch):
    stream, ewc = _setup(blobs, "ewc", lambda_=2.0)
    g = torch.Generator().manual_seed(0)
    shapes = {n: p.shape for n, p in ewc.model.named_parameters()}
    fishers = [
        {n: torch.rand(s, generator=g) for n, s in shapes.items()} for _ in range(2)
    ]
    monkeypatch.setattr(ewc, "_fisher", lambda *a: fishers.pop(0))
    anchors = []
    for i in range(2):
        _train(ewc, stream.experiences[i], steps=2)
        anchors.append({n: p.detach().clone() for n, p in ewc.model.named_parameters()})
    _move(ewc.model, 0.05)
    g = torch.Generator().manual_seed(0)
    replay = [
        {n: torch.rand(s, generator=g) for n, s in shapes.items()} for _ in range(2)
    ]
    expected = sum(
        (replay[e][n] * (p.detach() - anchors[e][n]) ** 2).sum()
        for e in range(2)
        for n, p in ewc.model.named_parameters()
    )
    assert float(ewc.penalty().detach()) == pytest.approx(float(expected), rel=1e-4)


def test_ewc_step_follows_the_gradient_of_loss_plus_penalty(blobs):
    stream, ewc = _setup(blobs, "ewc", lambda_=50.0)
    _train(ewc, stream.experiences[0])
    _move(ewc.model, 0.05)
    e = stream.experiences[1]
    x, y, t = e.train_x[:16], e.train_y[:16], e.task_ids(16)
    reference = {
        n: p.detach().clone().requires_grad_() for n, p in ewc.model.named_parameters()
    }
    out = torch.func.functional_call(ewc.model, reference, (x,))
    total = nn.functional.cross_entropy(out, y) + ewc.scale * sum(
        (ewc.importance[n] * (reference[n] - ewc.anchor[n]) ** 2).sum()
        for n in reference
    )
    grads = torch.autograd.grad(total, list(reference.values()))
    ewc.observe(x, y, t)
    for (n, p), g in zip(reference.items(), grads, strict=True):
        assert torch.allclose(ewc.model.state_dict()[n], p - 0.1 * g, atol=1e-6)


def test_online_ewc_accumulates_fisher_with_gamma(blobs, monkeypatch):
    stream, online = _setup(blobs, "online_ewc", lambda_=1.0, gamma=0.5)
    shapes = {n: p.shape for n, p in online.model.named_parameters()}
    f1 = {n: torch.full(s, 2.0) for n, s in shapes.items()}
    f2 = {n: torch.full(s, 1.0) for n, s in shapes.items()}
    fishers = [f1, f2]
    monkeypatch.setattr(online, "_fisher", lambda *a: fishers.pop(0))
    _train(online, stream.experiences[0], steps=2)
    _train(online, stream.experiences[1], steps=2)
    for n, p in online.model.named_parameters():
        assert torch.allclose(
            online.importance[n], torch.full(p.shape, 0.5 * 2.0 + 1.0)
        )
        assert torch.equal(online.anchor[n], p.detach())


def test_si_path_integral_on_a_quadratic(blobs):
    # the loss 0.5 * sum h * theta^2 has a known path integral: the loss decrease
    # of each parameter, 0.5 * h * (theta_0^2 - theta_T^2); with plain gradient steps
    # of size lr, each step's -g * dtheta = lr * g^2 exceeds its loss decrease by the
    # factor 1 / (1 - h * lr / 2)
    stream = build_stream("class_incremental", blobs, seed=0)
    h = torch.tensor([1.0, 4.0, 0.25])

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.tensor([1.0, -0.5, 2.0]))

        def forward(self, x):
            return self.theta.expand(len(x), 3)

    si = SI(Quadratic(), stream, OptimizerSpec(lr=0.01), strength=1.0, xi=0.01)
    si.criterion = lambda out, y: 0.5 * (h * out[0] ** 2).sum()
    start = si.model.theta.detach().clone()
    x, y, t = blobs.train_x[:2], blobs.train_y[:2], torch.zeros(2, dtype=torch.long)
    for _ in range(300):
        si.observe(x, y, t)
    end = si.model.theta.detach().clone()
    expected_path = 0.5 * h * (start**2 - end**2) / (1 - h * 0.01 / 2)
    assert torch.allclose(si.path["theta"], expected_path, rtol=1e-4)
    si.end_experience(stream.experiences[0])
    expected_omega = expected_path / ((end - start) ** 2 + 0.01)
    assert torch.allclose(si.omega["theta"], expected_omega, rtol=1e-4)
    assert (
        torch.equal(si.anchor["theta"], end)
        and float(si.path["theta"].abs().sum()) == 0
    )


def test_lwf_distillation_is_zero_when_the_model_equals_its_old_copy(blobs):
    for scenario, multi_head in (
        ("class_incremental", False),
        ("task_incremental", True),
    ):
        stream, lwf = _setup(blobs, "lwf", scenario=scenario, multi_head=multi_head)
        _train(lwf, stream.experiences[0])
        x = stream.experiences[1].train_x[:16]
        t = stream.experiences[1].task_ids(16)
        raw = lwf.model(x, t) if multi_head else lwf.model(x)
        assert float(lwf._distillation(x, raw).detach()) == 0.0
        for _ in range(3):  # train on, without taking a new snapshot
            lwf.observe(x, stream.experiences[1].train_y[:16], t)
        raw = lwf.model(x, t) if multi_head else lwf.model(x)
        assert float(lwf._distillation(x, raw).detach()) > 0.0
        assert lwf.old_classes == ({-1: [0, 1]} if not multi_head else {0: [0, 1]})


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="strategies\\[0\\].fisher"):
        resolve_config({"strategy": {"name": "ewc", "fisher": "exact"}})
    with pytest.raises(ConfigError, match="unknown key.*'lamda'"):
        resolve_config({"strategy": {"name": "ewc", "lamda": 1.0}})


def test_bad_values_name_the_setting(blobs):
    stream = build_stream("class_incremental", blobs, seed=0)
    model = build_model("mlp", stream.input_shape, 10, hidden=[8])
    with pytest.raises(ConfigError, match="gamma = 1.5"):
        OnlineEWC(model, stream, OptimizerSpec(), gamma=1.5)
    with pytest.raises(ConfigError, match="xi = 0"):
        SI(model, stream, OptimizerSpec(), xi=0.0)
    with pytest.raises(ConfigError, match="temperature = 0"):
        LwF(model, stream, OptimizerSpec(), temperature=0.0)
    with pytest.raises(ConfigError, match="lambda_ = -1"):
        EWC(model, stream, OptimizerSpec(), lambda_=-1.0)
    with pytest.raises(ConfigError, match="fisher_samples = 0"):
        EWC(model, stream, OptimizerSpec(), fisher_samples=0)


@pytest.mark.parametrize("name", ["ewc", "online_ewc", "si", "lwf"])
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
        {"name": "ewc", "lambda_": 10.0, "fisher": "true", "fisher_samples": 50},
        {"name": "si", "strength": 0.5},
        {"name": "lwf"},
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


def test_ewc_beats_naive_on_permuted_digits():
    digits = load_dataset("digits")
    accs = {}
    for strategy in ({"name": "naive"}, {"name": "ewc", "lambda_": 100.0}):
        cfg = resolve_config(
            {
                "seeds": [0],
                "dataset": {"name": "digits"},
                "scenario": {"name": "permuted", "n_experiences": 4},
                "model": {"name": "mlp", "hidden": [64, 64]},
                "strategy": strategy,
                "optimizer": {"name": "sgd", "lr": 0.05},
                "train": {"epochs": 3, "batch_size": 32},
            }
        )
        accs[strategy["name"]] = run_single(cfg, 0, 0, dataset=digits).metrics
    assert accs["ewc"]["acc"] > accs["naive"]["acc"] + 0.02, accs
    assert accs["ewc"]["bwt"] > accs["naive"]["bwt"], accs


def _fisher_by_hand(model, x, y, group=1):
    """Mean over groups of ``group`` consecutive samples (the last one may be smaller)
    of the squared gradient of the group's mean log-likelihood."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    starts = range(0, len(x), group)
    for i in starts:
        loss = nn.functional.cross_entropy(model(x[i : i + group]), y[i : i + group])
        for t, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            t += g**2
    names = [n for n, _ in model.named_parameters()]
    return {n: t / len(starts) for n, t in zip(names, total, strict=True)}


@pytest.mark.parametrize("name", ["ewc", "online_ewc"])
def test_minibatch_fisher_at_experience_end(blobs, name):
    # fisher_batch_size > 1 (Avalanche's estimate): the squared gradients of the
    # mean loss of consecutive mini-batches, 80 samples in groups of 24 (the last 8)
    stream, strategy = _setup(blobs, name, fisher_batch_size=24)
    e = stream.experiences[0]
    strategy.end_experience(e)  # called under no_grad, as the runner does
    by_hand = _fisher_by_hand(strategy.model, e.train_x, e.train_y, group=24)
    for key, f in by_hand.items():
        torch.testing.assert_close(strategy.importance[key], f)


@pytest.mark.parametrize(("samples", "expected"), [(20, 20), (None, 80), (500, 80)])
def test_ewc_fisher_uses_fisher_samples_examples_of_the_experience(
    blobs, monkeypatch, samples, expected
):
    stream, ewc = _setup(blobs, "ewc", fisher_samples=samples)
    e = stream.experiences[0]
    assert len(e.train_x) == 80
    seen = []
    real = regularization.fisher_diagonal

    def recording(logits_fn, params, x, y, task, **kw):
        seen.append((x.clone(), y.clone()))
        return real(logits_fn, params, x, y, task, **kw)

    monkeypatch.setattr(regularization, "fisher_diagonal", recording)
    torch.manual_seed(0)
    ewc.end_experience(e)

    # the Fisher saw `expected` distinct examples of the experience, with their labels
    ((x, y),) = seen
    assert len(x) == len(y) == expected
    match = (x.flatten(1)[:, None] == e.train_x.flatten(1)[None]).all(-1)
    assert (match.sum(1) == 1).all()
    rows = match.int().argmax(1)
    assert len(rows.unique()) == expected
    assert torch.equal(y, e.train_y[rows])
    if samples == 20:
        # a random subset, not the first examples
        assert not torch.equal(rows.sort().values, torch.arange(20))

    # and the stored Fisher is the one of exactly those examples
    by_hand = _fisher_by_hand(ewc.model, x, y)
    assert sorted(ewc.importance) == sorted(by_hand)
    for name, f in by_hand.items():
        torch.testing.assert_close(ewc.importance[name], f)


def _two_group_classifier(n):
    """A linear classifier and ``n`` inputs in two groups with known predictions.

    Inputs of group A are the first basis vector, inputs of group B the second; the
    model predicts classes 0, 1 and 2 with probabilities ``p_a`` for group A, classes
    2 and 3 with ``p_b`` for group B, and never any other class (their probability
    underflows to exactly 0).
    """
    p_a = torch.tensor([0.6, 0.3, 0.1] + [0.0] * 7)
    p_b = torch.tensor([0.0, 0.0, 0.5, 0.5] + [0.0] * 6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[:, 0] = torch.where(p_a > 0, p_a.log(), -200.0)
        model[1].weight[:, 1] = torch.where(p_b > 0, p_b.log(), -200.0)
    x = torch.zeros(n, 16)
    x[: n // 2, 0] = 1.0  # group A
    x[n // 2 :, 1] = 1.0  # group B
    return model, x.reshape(n, 1, 4, 4), p_a, p_b


@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_ewc_true_fisher_draws_labels_from_the_model(blobs, kind):
    # the experience's labels are all class 9, which the model never predicts: the
    # true Fisher must not see them, the empirical one must
    n = 2000
    model, x, p_a, p_b = _two_group_classifier(n)
    stream = build_stream("class_incremental", blobs, seed=0)
    experience = dataclasses.replace(
        stream.experiences[0], train_x=x, train_y=torch.full((n,), 9)
    )
    ewc = EWC(model, stream, OptimizerSpec(), fisher=kind)
    torch.manual_seed(0)
    ewc.end_experience(experience)
    weight, bias = ewc.importance["1.weight"], ewc.importance["1.bias"]

    # per sample, d log p(y|x) / d logits = onehot(y) - p(x), and the weight's
    # gradient is that times the input, which is 1 in the sample's group column
    if kind == "empirical":
        onehot = torch.eye(10)[9]
        expected_a = (onehot - p_a) ** 2 / 2  # half the samples are in group A
        expected_b = (onehot - p_b) ** 2 / 2
        torch.testing.assert_close(weight[:, 0], expected_a)
        torch.testing.assert_close(weight[:, 1], expected_b)
        torch.testing.assert_close(bias, expected_a + expected_b)
        assert float(bias[9]) == pytest.approx(1.0)
    else:
        # a label drawn from the model is never 9, nor a class of the other group:
        # these entries are exactly zero
        assert float(bias[9]) == 0.0
        assert (weight[p_a == 0, 0] == 0).all() and (weight[p_b == 0, 1] == 0).all()
        # the expectation over y ~ p of (onehot(y) - p)^2 is p (1 - p); each entry's
        # standard error is at most 0.25 / sqrt(n / 2) = 0.008 (0.011 for the bias)
        expected_a = p_a * (1 - p_a) / 2
        expected_b = p_b * (1 - p_b) / 2
        torch.testing.assert_close(weight[:, 0], expected_a, atol=0.03, rtol=0)
        torch.testing.assert_close(weight[:, 1], expected_b, atol=0.03, rtol=0)
        torch.testing.assert_close(bias, expected_a + expected_b, atol=0.03, rtol=0)
        # labels drawn as the arg max (0 in group A) would give (1 - 0.6)^2 / 2
        # = 0.08 at weight[0, 0] instead of 0.12
        assert float(weight[0, 0]) > 0.1
    assert (weight[:, 2:] == 0).all()  # those inputs are always 0


def test_lwf_distils_exactly_the_old_classes_consecutive_or_not(blobs):
    from metacl.strategies.penalties import distillation_loss

    stream, lwf = _setup(blobs, "lwf")
    _train(lwf, stream.experiences[0])
    x = stream.experiences[1].train_x[:16]
    for _ in range(3):  # move away from the snapshot
        lwf.observe(
            x, stream.experiences[1].train_y[:16], stream.experiences[1].task_ids(16)
        )
    raw = lwf.model(x)
    with torch.no_grad():
        old = lwf.old_model(x)
    for classes in ([0, 1], [1, 2, 3], [0, 2, 5]):
        lwf.old_classes = {-1: classes}
        index = torch.tensor(classes)
        expected = distillation_loss(
            raw[:, index], old[:, index], temperature=lwf.temperature
        )
        assert torch.allclose(lwf._distillation(x, raw), expected)
    assert regularization._columns([1, 2, 3]) == slice(1, 4)
    assert regularization._columns([0, 2, 5]) == [0, 2, 5]


def test_si_path_from_plain_sgd_gradients_equals_the_measured_displacement(
    blobs, monkeypatch
):
    # plain SGD takes the closed-form path (lr * g * grad); the general path measures
    # theta(t) - theta(t+1). Both must accumulate the same path, penalty included.
    def run():
        stream, si = _setup(blobs, "si", strength=5.0)
        _train(si, stream.experiences[0], steps=6)  # ends it: importance from path
        second = stream.experiences[1]
        si.begin_experience(second)
        for i in range(6):  # the path of an experience under the penalty
            x, y = (
                second.train_x[16 * i : 16 * (i + 1)],
                second.train_y[16 * i : 16 * (i + 1)],
            )
            si.observe(x, y, second.task_ids(len(x)))
        return si

    fast = run()
    assert regularization._plain_sgd_lr(fast.optimizer) == 0.1
    assert float(fast.importance["features.1.weight"].abs().sum()) > 0  # penalty on
    monkeypatch.setattr(regularization, "_plain_sgd_lr", lambda optimizer: None)
    general = run()
    assert sum(float(path.abs().sum()) for path in fast.path.values()) > 0
    for n, path in fast.path.items():
        assert torch.allclose(path, general.path[n], rtol=1e-3, atol=1e-9)
        assert torch.allclose(fast.omega[n], general.omega[n], rtol=1e-3, atol=1e-9)


def test_plain_sgd_is_recognised_only_without_momentum_or_weight_decay():
    p = [nn.Parameter(torch.zeros(2))]
    assert regularization._plain_sgd_lr(torch.optim.SGD(p, lr=0.3)) == 0.3
    assert (
        regularization._plain_sgd_lr(torch.optim.SGD(p, lr=0.3, momentum=0.9)) is None
    )
    assert (
        regularization._plain_sgd_lr(torch.optim.SGD(p, lr=0.3, weight_decay=1e-4))
        is None
    )
    assert regularization._plain_sgd_lr(torch.optim.Adam(p, lr=0.3)) is None


@pytest.mark.parametrize("name", ["ewc", "si"])
def test_consecutive_penalised_steps_follow_loss_plus_penalty(blobs, name):
    # the penalty's terms live in scratch buffers reused from batch to batch (and
    # SI's full gradient in one of them): each step must still be the SGD step of
    # loss + penalty at the current parameters, and report that loss
    settings = {"lambda_": 50.0} if name == "ewc" else {"strength": 5.0}
    stream, strategy = _setup(blobs, name, **settings)
    _train(strategy, stream.experiences[0])
    _move(strategy.model, 0.05)
    e = stream.experiences[1]
    strategy.begin_experience(e)
    for i in range(3):
        x, y = e.train_x[16 * i : 16 * (i + 1)], e.train_y[16 * i : 16 * (i + 1)]
        reference = {
            n: p.detach().clone().requires_grad_()
            for n, p in strategy.model.named_parameters()
        }
        out = torch.func.functional_call(strategy.model, reference, (x,))
        total = nn.functional.cross_entropy(out, y) + strategy.scale * (
            sum(
                (
                    strategy.importance[n] * (reference[n] - strategy.anchor[n]) ** 2
                ).sum()
                for n in reference
            )
            + strategy.offset
        )
        grads = torch.autograd.grad(total, list(reference.values()))
        reported = strategy.observe(x, y, e.task_ids(len(x)))
        assert float(reported) == pytest.approx(float(total.detach()), rel=1e-5)
        for (n, p), g in zip(reference.items(), grads, strict=True):
            assert torch.allclose(
                strategy.model.state_dict()[n], p - 0.1 * g, atol=1e-6
            ), (i, n)


@pytest.mark.parametrize(
    "scenario, multi_head",
    [
        ("class_incremental", False),
        ("task_incremental", False),
        ("task_incremental", True),
    ],
)
def test_lwf_recorded_old_outputs_train_as_the_per_batch_ones(
    blobs, scenario, multi_head
):
    """With ``index`` the old model's outputs come from the record made when the
    experience begins (the old model is not run per batch) and the training is the
    one that runs the old model on every batch."""

    def run(with_index):
        stream, lwf = _setup(blobs, "lwf", scenario, multi_head, alpha=2.0)
        _train(lwf, stream.experiences[0])
        _train(lwf, stream.experiences[1])
        calls = []
        lwf.old_model.register_forward_hook(lambda *_: calls.append(1))
        e = stream.experiences[2]
        lwf.begin_experience(e)
        recorded_calls = len(calls)
        order = torch.randperm(
            len(e.train_x), generator=torch.Generator().manual_seed(3)
        )
        losses = []
        for start in range(0, 64, 16):
            index = order[start : start + 16]
            x, y, t = e.train_x[index], e.train_y[index], e.task_ids(16)
            extra = {"index": index} if with_index else {}
            losses.append(float(lwf.observe(x, y, t, **extra)))
        return lwf, losses, recorded_calls, len(calls) - recorded_calls

    cached, cached_losses, recorded, per_batch = run(True)
    plain, plain_losses, _, plain_per_batch = run(False)
    heads = 2 if multi_head else 1  # two old tasks: one record per old head
    chunks = math.ceil(len(cached.stream.experiences[2].train_x) / 1024)
    assert recorded == heads * chunks
    assert per_batch == 0
    assert plain_per_batch == 4 * heads
    assert cached_losses == pytest.approx(plain_losses, rel=1e-5)
    for a, b in zip(cached.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    cached.end_experience(cached.stream.experiences[2])
    assert cached._recorded == {}


def test_the_runner_gives_lwf_the_batch_rows(blobs, monkeypatch):
    """Through the runner LwF runs its old model once per later experience (the
    record), never per batch: 80 samples per experience, batches of 16."""
    sizes = []
    real = LwF._old_outputs

    def counted(self, x, task_id):
        sizes.append(len(x))
        return real(self, x, task_id)

    monkeypatch.setattr(LwF, "_old_outputs", counted)
    cfg = resolve_config(
        {
            "seeds": [0],
            "model": {"name": "mlp", "hidden": [16]},
            "strategy": {"name": "lwf"},
            "train": {"epochs": 2, "batch_size": 16},
        }
    )
    result = run_single(cfg, 0, 0, dataset=blobs)
    assert len(result.R) == 5
    assert sizes == [80] * 4


@pytest.mark.parametrize("name", ["ewc", "online_ewc"])
def test_no_fisher_after_the_last_experience(blobs, monkeypatch, name):
    """The last experience's Fisher penalises nothing: it is skipped (one Fisher
    per experience but the last), the accuracy matrix is the one computed with it,
    and ``consolidate`` still adds it on demand."""
    cfg = resolve_config(
        {
            "seeds": [0],
            "model": {"name": "mlp", "hidden": [16]},
            "strategy": {"name": name, "lambda_": 50.0},
            "train": {"epochs": 1, "batch_size": 16},
        }
    )
    experiences = []
    real = regularization._QuadraticPenalty._fisher

    def counted(self, experience, *args):
        experiences.append(experience.index)
        return real(self, experience, *args)

    monkeypatch.setattr(regularization._QuadraticPenalty, "_fisher", counted)
    skipping = run_single(cfg, 0, 0, dataset=blobs)
    assert experiences == [0, 1, 2, 3]
    monkeypatch.setattr(regularization, "_is_last", lambda strategy, experience: False)
    every = run_single(cfg, 0, 0, dataset=blobs)
    assert experiences[4:] == [0, 1, 2, 3, 4]
    assert skipping.R == every.R

    stream, strategy = _setup(blobs, name, lambda_=50.0)
    monkeypatch.undo()
    for e in stream.experiences:
        _train(strategy, e, steps=2)
    before = {n: f.clone() for n, f in strategy.importance.items()}
    strategy.consolidate(stream.experiences[-1])
    assert any(not torch.equal(before[n], f) for n, f in strategy.importance.items())
