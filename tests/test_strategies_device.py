"""Strategies keep their tensors on the model's device.

No GPU is at hand here, so the model and the data go to PyTorch's ``meta`` device.
It computes shapes only, but it checks devices the way CUDA does: a tensor the
strategy made on the CPU that meets the model's outputs or parameters fails there as
it would on a GPU. Only what can run without values runs there; A-GEM (its
projection reads a dot product's sign) and the multi-head model (it reads the task
ids) cannot.
"""

import pytest
import torch

from metacl.data import load_dataset
from metacl.data.scenarios import build_stream
from metacl.models import build_model
from metacl.strategies import OptimizerSpec, build_strategy

META = torch.device("meta")


def _strategy(name, scenario, device):
    stream = build_stream(scenario, load_dataset("digits"), seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, 10, hidden=[8]).to(device)
    return stream, build_strategy(name, model, stream, OptimizerSpec(lr=0.1))


@pytest.mark.parametrize("scenario", ["class_incremental", "task_incremental"])
@pytest.mark.parametrize(
    "name", ["naive", "ewc", "online_ewc", "si", "lwf", "replay", "derpp"]
)
def test_strategies_run_beside_a_model_on_another_device(name, scenario):
    stream, strategy = _strategy(name, scenario, META)
    for e in stream.experiences[:3]:  # the third is penalised by two before it
        x, y, task = e.train_x[:64].to(META), e.train_y[:64].to(META), e.task_ids(64)
        task = task.to(META)
        strategy.begin_experience(e)
        for start in (0, 32):
            index = torch.arange(start, start + 32)
            rows = (x[index], y[index], task[index])
            if strategy.takes_index:
                strategy.observe(*rows, index=index)
            else:
                strategy.observe(*rows)
        strategy.end_experience(e)
        assert strategy.predict(x[:8], task[:8]).device == META
    if strategy.class_mask is not None:
        assert strategy.class_mask.device == META


@pytest.mark.parametrize("name", ["ewc", "online_ewc", "si"])
def test_restored_state_is_moved_to_the_models_device(name):
    """A checkpoint is read onto the CPU; the penalties' state it restores must
    join the parameters on their device."""
    stream, on_cpu = _strategy(name, "class_incremental", "cpu")
    first = stream.experiences[0]
    on_cpu.begin_experience(first)
    on_cpu.observe(first.train_x[:32], first.train_y[:32], first.task_ids(32))
    on_cpu.end_experience(first)
    state = on_cpu.state_dict()
    state.pop("optimizer")  # the optimizer moves its own state (torch does)

    _, elsewhere = _strategy(name, "class_incremental", META)
    assert elsewhere.offset.device == META
    elsewhere.load_state_dict({**elsewhere.state_dict(), **state})
    restored = [*elsewhere.importance.values(), *elsewhere.anchor.values()]
    if name == "si":
        for part in (elsewhere.start, elsewhere.path, elsewhere.omega):
            restored += part.values()
    assert len(restored) >= 2 * 4  # importance and anchor of the MLP's 4 tensors
    assert all(t.device == META for t in restored)
    assert elsewhere.offset.device == META
