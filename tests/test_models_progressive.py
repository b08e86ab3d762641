import pytest
import torch

from metacl.errors import ConfigError, ScenarioError
from metacl.models import ProgressiveNet, build_model, progressive_from


def test_mlp_columns_route_each_sample_to_its_task():
    torch.manual_seed(0)
    net = ProgressiveNet.mlp((1, 4, 4), 5, hidden=[8, 8], columns=3)
    x = torch.randn(6, 1, 4, 4)
    task = torch.tensor([0, 1, 2, 0, 1, 2])
    out = net(x, task)
    assert out.shape == (6, 5)
    for t in range(3):
        alone = net(x, torch.full((6,), t))
        rows = task == t
        assert torch.allclose(out[rows], alone[rows])
    # column 0 has no adapters; later columns get one per layer after the first
    assert len(net.columns[0].adapters) == 0 and len(net.columns[2].adapters) == 2
    assert net.columns[2].adapters[0].alpha.shape == (2,)


def test_lateral_connections_feed_later_columns():
    torch.manual_seed(0)
    net = ProgressiveNet.mlp((4,), 3, hidden=[6], columns=2)
    x = torch.randn(5, 4)
    t1 = torch.ones(5, dtype=torch.long)
    before = net(x, t1)
    with torch.no_grad():
        net.columns[0].layers[0].weight.add_(1.0)  # change column 0 only
    assert not torch.allclose(net(x, t1), before)


def test_cnn_columns_and_gradients():
    torch.manual_seed(0)
    net = ProgressiveNet.cnn((1, 8, 8), 4, channels=[4, 6], hidden=10, columns=2)
    x = torch.randn(3, 1, 8, 8)
    out = net(x, torch.tensor([1, 1, 1]))
    out.sum().backward()
    assert out.shape == (3, 4)
    # the conv adapter reads the earlier column's feature maps
    assert net.columns[1].adapters[0].project.weight.grad is not None


def test_progressive_from_copies_architecture_and_initial_weights():
    torch.manual_seed(0)
    mlp = build_model("mlp", (1, 4, 4), 10, hidden=[8, 6])
    net = progressive_from(mlp, 3, (1, 4, 4))
    x = torch.randn(4, 1, 4, 4)
    assert torch.allclose(net(x, torch.zeros(4, dtype=torch.long)), mlp(x))
    cnn = build_model("cnn", (1, 8, 8), 10, channels=[4], hidden=12)
    net = progressive_from(cnn, 2, (1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(net(x, torch.zeros(2, dtype=torch.long)), cnn(x), atol=1e-6)


def test_registered_and_clear_errors():
    net = build_model("progressive", (1, 4, 4), 10, hidden=[8], columns=2)
    assert isinstance(net, ProgressiveNet) and len(net.columns) == 2
    with pytest.raises(ScenarioError, match=r"task ids must lie in \[0, 2\)"):
        net(torch.randn(2, 1, 4, 4), torch.tensor([0, 2]))
    with pytest.raises(ConfigError, match="do not support BatchNorm"):
        progressive_from(
            build_model("cnn", (1, 8, 8), 10, batch_norm=True), 2, (1, 8, 8)
        )
    with pytest.raises(
        ConfigError, match="valid choices: mlp, cnn|expected 'mlp' | 'cnn'"
    ):
        build_model("progressive", (1, 4, 4), 10, base="rnn")
    with pytest.raises(ConfigError, match="columns = 0"):
        ProgressiveNet.mlp((4,), 2, hidden=[3], columns=0)


def test_without_task_ids_it_says_what_to_use():
    net = ProgressiveNet.mlp((4,), 2, hidden=[3], columns=2)
    with pytest.raises(ScenarioError, match="strategy 'pnn' on a task_incremental"):
        net(torch.randn(2, 4))
