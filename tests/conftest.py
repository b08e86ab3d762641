"""Shared fixtures. Each test process uses one torch thread: the suite runs in
parallel workers on small machines, and two threads per worker on two cores slow
everything down many times over."""

from __future__ import annotations

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
