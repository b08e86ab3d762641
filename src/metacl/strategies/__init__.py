"""Continual-learning strategies, classic and meta-learned."""

from metacl.strategies.base import (
    STRATEGIES,
    Joint,
    Naive,
    OptimizerSpec,
    Strategy,
    build_strategy,
    register_strategy,
)
from metacl.strategies.memory import (
    ClassBalancedMemory,
    Memory,
    MemoryBatch,
    ReservoirMemory,
    build_memory,
)
from metacl.strategies.progressive import PNN
from metacl.strategies.regularization import EWC, SI, LwF, OnlineEWC
from metacl.strategies.replay import AGEM, DERpp, Replay

__all__ = [
    "STRATEGIES",
    "Joint",
    "Naive",
    "OptimizerSpec",
    "Strategy",
    "build_strategy",
    "register_strategy",
    "EWC",
    "OnlineEWC",
    "SI",
    "LwF",
    "Replay",
    "AGEM",
    "DERpp",
    "PNN",
    "Memory",
    "MemoryBatch",
    "ReservoirMemory",
    "ClassBalancedMemory",
    "build_memory",
]
