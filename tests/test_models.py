import pytest
import torch

from metacl.errors import ConfigError, ScenarioError
from metacl.models import MultiHead, build_model


def test_mlp_and_cnn_shapes():
    x = torch.randn(5, 1, 28, 28)
    assert build_model("mlp", (1, 28, 28), 10).forward(x).shape == (5, 10)
    assert build_model("cnn", (1, 28, 28), 7, batch_norm=True).forward(x).shape == (
        5,
        7,
    )


def test_cnn_refuses_flat_or_tiny_inputs():
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model("cnn", (40,), 10)
    with pytest.raises(ConfigError, match="too small"):
        build_model("cnn", (1, 2, 2), 10)


def test_multihead_routes_each_sample_to_its_task_head():
    torch.manual_seed(0)
    base = build_model("mlp", (4,), 3, hidden=[8])
    model = MultiHead(base, n_tasks=2)
    with torch.no_grad():
        model.heads[1].weight.add_(1.0)
    x = torch.randn(6, 4)
    task = torch.tensor([0, 1, 0, 1, 1, 0])
    out = model(x, task)
    z = model.features(x)
    assert torch.allclose(out[0], model.heads[0](z[0]))
    assert torch.allclose(out[1], model.heads[1](z[1]))
    same = model(x, torch.ones(6, dtype=torch.long))
    assert torch.allclose(same, model.heads[1](z))


def test_multihead_needs_features_and_head():
    with pytest.raises(ScenarioError, match="no 'features' body"):
        MultiHead(torch.nn.Linear(3, 3), 2)
