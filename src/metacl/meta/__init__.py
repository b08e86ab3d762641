"""Meta-learning: the MAML family on ``torch.func``, task distributions, meta-training.

The algorithms (:mod:`metacl.meta.algorithms`) adapt a learner differentiably with
:func:`metacl.functional.adapt` and learn from how it adapts; task families
(:mod:`metacl.meta.tasks`) draw batches of tasks as tensors; :func:`meta_train`
(:mod:`metacl.meta.train`) runs the outer loop with checkpoints and held-out evaluation.
"""

from metacl.meta.algorithms import (
    ANIL,
    MAML,
    META_ALGORITHMS,
    MetaAlgorithm,
    MetaSGD,
    Reptile,
)
from metacl.meta.tasks import TASK_FAMILIES, EpisodeTasks, SineTasks, TaskBatch
from metacl.meta.train import MetaTrainConfig, MetaTrainResult, meta_train

__all__ = [
    "META_ALGORITHMS",
    "MetaAlgorithm",
    "MAML",
    "Reptile",
    "MetaSGD",
    "ANIL",
    "TASK_FAMILIES",
    "TaskBatch",
    "SineTasks",
    "EpisodeTasks",
    "MetaTrainConfig",
    "MetaTrainResult",
    "meta_train",
]
