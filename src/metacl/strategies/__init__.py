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

__all__ = [
    "STRATEGIES",
    "Joint",
    "Naive",
    "OptimizerSpec",
    "Strategy",
    "build_strategy",
    "register_strategy",
]
