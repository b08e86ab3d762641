import pytest
import torch

from metacl.errors import ConfigError
from metacl.strategies.memory import (
    ClassBalancedMemory,
    Memory,
    ReservoirMemory,
    build_memory,
)


def _stream_ids(n):
    # inputs carry their position in the stream, so the memory's contents can be read
    ids = torch.arange(n, dtype=torch.float32)
    return (
        ids.reshape(n, 1),
        torch.zeros(n, dtype=torch.long),
        torch.zeros(n, dtype=torch.long),
    )


def test_reservoir_fills_then_keeps_capacity():
    memory = ReservoirMemory(50, (1,), seed=0)
    x, y, t = _stream_ids(120)
    memory.add(x[:30], y[:30], t[:30])
    assert len(memory) == 30 and memory.x[:30, 0].tolist() == list(range(30))
    memory.add(x[30:], y[30:], t[30:])
    assert len(memory) == 50 and memory.seen == 120
    kept = memory.x[:, 0].long()
    assert len(kept.unique()) == 50 and int(kept.max()) < 120


class _FirstComeMemory(Memory):
    """A biased memory: keeps the first examples offered and ignores the rest."""

    def add(self, x, y, task, logits=None):
        free = min(self.capacity - self.size, len(x))
        if free > 0:
            slots = torch.arange(self.size, self.size + free)
            self._write(slots, x[:free], y[:free], task[:free], None)
            self.size += free
        self.seen += len(x)


def _inclusion_chi2(make_memory, *, n=2000, capacity=100, runs=300):
    """Chi-square statistic of where a memory's contents come from in the stream.

    ``runs`` independent memories see a stream of ``n`` examples in batches of 64;
    every example should end up in a memory with probability ``capacity / n``, so the
    inclusions counted per tenth of the stream should be equal (9 degrees of freedom;
    27.9 is p = 0.001).
    """
    x, y, t = _stream_ids(n)
    per_tenth = torch.zeros(10)
    for run in range(runs):
        memory = make_memory(capacity, run)
        for start in range(0, n, 64):
            memory.add(
                x[start : start + 64], y[start : start + 64], t[start : start + 64]
            )
        ids = memory.x[:, 0].long()
        assert len(memory) == capacity and len(ids.unique()) == capacity
        per_tenth += torch.bincount(ids // (n // 10), minlength=10).float()
    expected = runs * capacity / 10
    return float(((per_tenth - expected) ** 2 / expected).sum()), per_tenth


def test_reservoir_holds_a_uniform_sample_of_the_stream():
    chi2, per_tenth = _inclusion_chi2(
        lambda capacity, run: ReservoirMemory(capacity, (1,), seed=run)
    )
    assert chi2 < 27.9, (per_tenth.tolist(), chi2)


def test_a_memory_keeping_the_first_examples_fails_the_uniformity_test():
    # the statistic has power: a full memory of distinct examples, all from the
    # start of the stream, is rejected by the same test the reservoir passes
    chi2, per_tenth = _inclusion_chi2(
        lambda capacity, run: _FirstComeMemory(capacity, (1,), seed=run)
    )
    assert per_tenth[1:].sum() == 0
    assert chi2 > 27.9, (per_tenth.tolist(), chi2)


def test_class_balanced_memory_is_equal_per_class():
    memory = ClassBalancedMemory(60, (2,), n_classes=10, seed=0)
    g = torch.Generator().manual_seed(0)
    for first in range(0, 10, 2):  # class-incremental: two new classes at a time
        y = torch.tensor([first, first + 1]).repeat(200)
        x = torch.randn(len(y), 2, generator=g)
        for start in range(0, len(y), 32):
            memory.add(
                x[start : start + 32],
                y[start : start + 32],
                torch.zeros(32, dtype=torch.long)[: len(y[start : start + 32])],
            )
        counts = memory.counts()[: first + 2]
        assert int(counts.sum()) == 60
        assert int(counts.max() - counts.min()) <= 1, counts.tolist()
    # each stored example's label matches its class slot
    held = memory.owner >= 0
    assert torch.equal(memory.y[held], memory.owner[held])


def test_sampling_is_reproducible_and_respects_below_task():
    memory = ReservoirMemory(20, (1,), seed=3)
    x, y, _ = _stream_ids(20)
    memory.add(x, y, torch.arange(20) % 4)
    batch = memory.sample(200, below_task=2)
    assert set(batch.task.tolist()) <= {0, 1}
    state = memory.state_dict()
    a = memory.sample(10).x
    memory.load_state_dict(state)
    assert torch.equal(memory.sample(10).x, a)


def test_logits_are_stored_with_their_examples():
    memory = build_memory("reservoir", 10, (1,), n_classes=3, store_logits=True)
    x, y, t = _stream_ids(5)
    logits = torch.arange(15.0).reshape(5, 3)
    memory.add(x, y, t, logits=logits)
    batch = memory.sample(50)
    rows = batch.x[:, 0].long()
    assert torch.equal(batch.logits, logits[rows])
    with pytest.raises(ConfigError, match="pass logits="):
        memory.add(x, y, t)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="memory_size = 0"):
        ReservoirMemory(0, (1,))
    with pytest.raises(ConfigError, match="valid choices: reservoir, class_balanced"):
        build_memory("fifo", 10, (1,), n_classes=2)
    with pytest.raises(ConfigError, match="empty memory"):
        ReservoirMemory(5, (1,)).sample(1)
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 2\)"):
        ClassBalancedMemory(5, (1,), n_classes=2).add(
            torch.zeros(1, 1), torch.tensor([5]), torch.zeros(1, dtype=torch.long)
        )
