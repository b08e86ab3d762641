"""Shared fixtures. Each test process uses one torch thread: the suite runs in
parallel workers on small machines, and two threads per worker on two cores slow
everything down many times over."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from metacl.data.base import Dataset

torch.set_num_threads(1)


@pytest.fixture
def blobs() -> Dataset:
    """A small 10-class dataset of separable Gaussian blobs, shaped like images
    (1, 4, 4), for testing mechanics (not for claiming results)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 16, generator=g) * 3

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 10
        x = centres[y] + torch.randn(n, 16, generator=g)
        return x.reshape(n, 1, 4, 4), y

    train_x, train_y = draw(400)
    test_x, test_y = draw(200)
    return Dataset("blobs", train_x, train_y, test_x, test_y, n_classes=10)


@pytest.fixture
def lock_holder():
    """``lock_holder(directory)``: a context manager, see :func:`_lock_holder`."""
    return _lock_holder


@contextmanager
def _lock_holder(directory: Path) -> Iterator[subprocess.Popen]:
    """Another process holding ``directory``'s lock (:mod:`metacl.locking`) until
    the block ends, when it is killed (-9)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib\n"
            "from metacl.locking import directory_lock\n"
            "with directory_lock(pathlib.Path(sys.argv[1])):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(120)\n",
            str(directory),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
