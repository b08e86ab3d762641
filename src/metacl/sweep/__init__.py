"""Many runs: sweeps over a grid, hyperparameter search, a results store, comparisons.

- :mod:`metacl.sweep.spec`: the sweep file and its grid of runs.
- :mod:`metacl.sweep.runner`: local processes or Ray; :func:`run_sweep`.
- :mod:`metacl.sweep.search`: choosing hyperparameters on validation data.
- :mod:`metacl.sweep.store`: the SQLite results store.
- :mod:`metacl.sweep.compare`: tables and plots from the store.

The names below are imported on first use, so that reading or writing the store does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "LocalRunner",
    "RayRunner",
    "SweepReport",
    "run_sweep",
    "SearchChoice",
    "choose_configurations",
    "validation_score",
    "PlannedRun",
    "SweepSpec",
    "expand",
    "load_sweep",
    "sweep_from_dict",
    "ResultStore",
    "RunRecord",
    "StoreError",
]

_HOME = {
    "LocalRunner": "runner",
    "RayRunner": "runner",
    "SweepReport": "runner",
    "run_sweep": "runner",
    "SearchChoice": "search",
    "choose_configurations": "search",
    "validation_score": "search",
    "PlannedRun": "spec",
    "SweepSpec": "spec",
    "expand": "spec",
    "load_sweep": "spec",
    "sweep_from_dict": "spec",
    "ResultStore": "store",
    "RunRecord": "store",
    "StoreError": "store",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'metacl.sweep' has no attribute {name!r}")
    return getattr(importlib.import_module(f"metacl.sweep.{_HOME[name]}"), name)
