"""Optimisation-based meta-learning: MAML (second and first order), Reptile, Meta-SGD,
ANIL.

Each algorithm is a thin class that holds a model, a loss and its inner-loop settings;
the math is in pure functions over parameter dictionaries (:func:`maml_task_loss`,
:func:`reptile_task_update`, :func:`evaluate_task`) that act on one task and that
``torch.func.vmap`` maps over a batch of tasks.

The outer loop is not here: :meth:`MetaAlgorithm.meta_gradient` returns the
meta-gradient of a batch of tasks, and whoever owns the optimiser applies it
(:mod:`metacl.meta.train`). A new inner-loop rule (clipped learned rates as in La-MAML,
a learned optimiser as in Meta-LSTM) is a :class:`~metacl.functional.StepRule` returned
by :meth:`MetaAlgorithm.step_sizes`, its own tensors listed by
:meth:`MetaAlgorithm.meta_parameters`; the rest of the machinery is unchanged.

Note [vmap or loop]
    Every per-task function runs either under ``torch.func.vmap`` (all tasks at once)
    or in a Python loop over tasks, and both give the same numbers up to float
    rounding. An algorithm's ``vectorize`` setting chooses: ``"vmap"`` or ``"loop"``
    force one path; ``"auto"`` (the default) tries ``vmap`` on the first call and falls
    back to the loop, with a warning, if the model cannot run under it (a forward with
    data-dependent Python control flow such as ``.item()`` or ``if x.sum() > 0``).
    Under ``"auto"``, models with convolutions on the CPU also take the loop: once
    each task has its own weights, ``vmap`` runs a convolution as a grouped one, which
    CPU kernels compute slower than one plain convolution per task (measured here on
    5-way 1-shot episodes of 28x28 images, a two-block CNN and 16 tasks: 1.5 s per
    meta-iteration under ``vmap``, 0.7 s in the loop). On a GPU ``"auto"`` keeps
    ``vmap``; that it is faster there was not measured here.
    A stack of linear layers (an MLP) takes a third path under ``"auto"``: all tasks
    at once with their weights stacked and batched matrix products, no ``vmap`` (Note
    [stacked tasks] in :mod:`metacl.meta.stacked`); it gives the loop's numbers too.
    BatchNorm runs under ``vmap`` because every task gets its own copy of the buffers
    (see Note [buffers of adapted copies] in :mod:`metacl.functional`), but its
    second-order gradients are wrong there (Note [second order under vmap] in the same
    module): with such layers, second-order meta-gradients take the loop under
    ``"auto"``, and ``"vmap"`` refuses them with an error. Random layers such as
    dropout draw different numbers for each task under ``vmap``
    (``randomness="different"``), so with them the two paths agree in distribution
    only.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from metacl.meta.tasks import SineTasks
    >>> model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 1))
    >>> maml = MAML(model, nn.functional.mse_loss, inner_lr=0.01)
    >>> batch = SineTasks().sample(4, generator=torch.Generator().manual_seed(0))
    >>> loss, grads = maml.meta_gradient(batch)
    >>> sorted(grads) == sorted(name for name, _ in model.named_parameters())
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn
from torch.func import vmap

from metacl.errors import ConfigError
from metacl.functional import (
    Buffers,
    LossFn,
    Params,
    StepRule,
    adapt,
    buffers_of,
    forward,
    per_task_buffers,
    second_order_vmap_hazards,
)
from metacl.meta.stacked import LinearStack, stacked_maml_losses, stacked_rule
from metacl.meta.tasks import TaskBatch
from metacl.registry import Registry

__all__ = [
    "Vectorize",
    "VECTORIZE_MODES",
    "check_vectorize",
    "META_ALGORITHMS",
    "MetaAlgorithm",
    "MAML",
    "Reptile",
    "MetaSGD",
    "ANIL",
    "maml_task_loss",
    "reptile_task_update",
    "evaluate_task",
    "map_tasks",
]

logger = logging.getLogger(__name__)

META_ALGORITHMS = Registry("meta algorithm")

Vectorize = Literal["auto", "vmap", "loop"]
VECTORIZE_MODES: tuple[Vectorize, ...] = ("auto", "vmap", "loop")
_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------
# the math, one task at a time


def maml_task_loss(
    model: nn.Module,
    params: Params,
    inner_lr: float | Params | StepRule,
    buffers: Buffers,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    *,
    loss_fn: LossFn,
    steps: int,
    first_order: bool,
    only: Collection[str] | None = None,
) -> Tensor:
    """Query loss of one task after adapting ``params`` on its support set.

    Its gradient with respect to ``params`` (and ``inner_lr``, when learned) is the
    MAML meta-gradient of the task: second order by default, first order with
    ``first_order=True``. Arguments are as in :func:`metacl.functional.adapt`.
    """
    adapted, adapted_buffers = adapt(
        model,
        params,
        buffers,
        support_x,
        support_y,
        loss_fn,
        steps=steps,
        inner_lr=inner_lr,
        first_order=first_order,
        only=only,
    )
    return loss_fn(forward(model, adapted, adapted_buffers, query_x), query_y)


def reptile_task_update(
    model: nn.Module,
    params: Params,
    inner_lr: float | Params | StepRule,
    buffers: Buffers,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    *,
    loss_fn: LossFn,
    steps: int,
) -> tuple[Params, Tensor]:
    """Reptile's per-task result: the adapted parameters and their query loss.

    The parameters are adapted by ``steps`` plain SGD steps on the support set with no
    graph kept; Reptile's meta-gradient is ``params`` minus the mean of the adapted
    parameters over tasks. The query loss is returned for monitoring only.
    """
    detached = {n: p.detach() for n, p in params.items()}
    adapted, adapted_buffers = adapt(
        model,
        detached,
        buffers,
        support_x,
        support_y,
        loss_fn,
        steps=steps,
        inner_lr=inner_lr,
        first_order=True,
    )
    adapted = {n: p.detach() for n, p in adapted.items()}
    loss = loss_fn(forward(model, adapted, adapted_buffers, query_x), query_y)
    return adapted, loss.detach()


def evaluate_task(
    model: nn.Module,
    params: Params,
    inner_lr: float | Params | StepRule,
    buffers: Buffers,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    *,
    loss_fn: LossFn,
    steps: int,
    only: Collection[str] | None = None,
    classification: bool,
) -> dict[str, Tensor]:
    """Query loss (and accuracy) of one task before and after adaptation.

    Returns:
        ``loss_before``, ``loss``; for classification also ``accuracy_before`` and
        ``accuracy`` (fraction of query examples whose arg-max output is the label).
    """
    params = {n: p.detach() for n, p in params.items()}
    if isinstance(inner_lr, dict):
        inner_lr = {n: v.detach() for n, v in inner_lr.items()}
    before = forward(model, params, {k: b.clone() for k, b in buffers.items()}, query_x)
    adapted, adapted_buffers = adapt(
        model,
        params,
        buffers,
        support_x,
        support_y,
        loss_fn,
        steps=steps,
        inner_lr=inner_lr,
        first_order=True,
        only=only,
    )
    after = forward(model, adapted, adapted_buffers, query_x)
    out = {
        "loss_before": loss_fn(before, query_y).detach(),
        "loss": loss_fn(after, query_y).detach(),
    }
    if classification:
        out["accuracy_before"] = (before.argmax(-1) == query_y).float().mean()
        out["accuracy"] = (after.argmax(-1) == query_y).float().mean()
    return out


def map_tasks(
    fn: Callable[..., object],
    shared: tuple[object, ...],
    buffers: Buffers,
    batch: TaskBatch,
    *,
    vectorize: bool,
) -> object:
    """Apply ``fn(*shared, buffers, support_x, support_y, query_x, query_y)`` per task.

    With ``vectorize`` the tasks run together under ``torch.func.vmap`` (each with its
    own copy of ``buffers``); otherwise one after the other in a loop. The outputs (a
    tensor, or a tuple or dictionary of tensors and parameter dictionaries) are
    stacked along a new leading task dimension either way.
    """
    tasks = len(batch)
    if vectorize:
        in_dims = (None,) * len(shared) + (0, 0, 0, 0, 0)
        mapped = vmap(fn, in_dims=in_dims, randomness="different")
        return mapped(
            *shared,
            per_task_buffers(buffers, tasks),
            batch.support_x,
            batch.support_y,
            batch.query_x,
            batch.query_y,
        )
    outputs = [fn(*shared, buffers, *batch.task(i)) for i in range(tasks)]
    return _stack(outputs)


def _stack(outputs: list) -> object:
    first = outputs[0]
    if isinstance(first, Tensor):
        return torch.stack(outputs)
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outputs]) for k in first}
    if isinstance(first, tuple):
        return tuple(_stack(list(parts)) for parts in zip(*outputs, strict=True))
    raise TypeError(f"cannot stack per-task outputs of type {type(first).__name__}")


# ---------------------------------------------------------------------------------------
# the algorithms


def _check_settings(inner_lr: float, inner_steps: int) -> None:
    if (
        isinstance(inner_steps, bool)
        or not isinstance(inner_steps, int)
        or inner_steps < 0
    ):
        raise ConfigError(
            f"inner_steps = {inner_steps!r} is invalid; expected an integer >= 0"
        )
    if (
        isinstance(inner_lr, bool)
        or not isinstance(inner_lr, (int, float))
        or not math.isfinite(inner_lr)
        or inner_lr < 0
    ):
        raise ConfigError(
            f"inner_lr = {inner_lr!r} is invalid; expected a finite float >= 0"
        )


def check_vectorize(vectorize: object) -> Vectorize:
    """``vectorize`` if it is one of ``"auto"``, ``"vmap"``, ``"loop"``.

    Raises:
        ConfigError: Any other value.
    """
    if vectorize not in VECTORIZE_MODES:
        raise ConfigError(
            f"vectorize = {vectorize!r} is invalid; expected one of {VECTORIZE_MODES}"
        )
    return vectorize  # type: ignore[return-value]


class MetaAlgorithm:
    """Base class: a model, a loss and the settings of the inner loop.

    Subclasses define the meta-gradient; the base class provides evaluation on held-out
    tasks, the list of meta-parameters the outer optimiser updates, and the choice
    between ``vmap`` and a loop over tasks (Note [vmap or loop]).

    Args:
        model: The learner. Its parameters are the meta-learned initialisation.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (mean over examples).
        inner_lr: Step size alpha of the inner SGD steps.
        inner_steps: Number of inner steps per task during meta-training.
        vectorize: ``"auto"``, ``"vmap"`` or ``"loop"``, see Note [vmap or loop].
    """

    name = "base"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        inner_lr: float,
        inner_steps: int,
        vectorize: Vectorize = "auto",
    ) -> None:
        _check_settings(inner_lr, inner_steps)
        self.model = model
        self.loss_fn = loss_fn
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.only: Collection[str] | None = None
        self.vectorize: Vectorize = check_vectorize(vectorize)
        self.vmap_works: bool | None = None
        """Whether ``vmap`` ran the model: None until ``"auto"`` has tried it."""
        self.stacked_used = False
        """Whether a meta-gradient ran with stacked weights (Note [stacked tasks])."""

    @property
    def second_order(self) -> bool:
        """Whether the meta-gradient differentiates through the inner gradients."""
        return False

    def meta_parameters(self) -> dict[str, Tensor]:
        """The tensors the outer optimiser updates, by name (the model's parameters)."""
        return dict(self.model.named_parameters())

    def step_sizes(self) -> float | Params | StepRule:
        """The inner update handed to :func:`~metacl.functional.adapt` as ``inner_lr``:
        a float, a dictionary of learned step sizes, or a step rule."""
        return self.inner_lr

    def meta_gradient(
        self, batch: TaskBatch, *, vectorize: bool | None = None
    ) -> tuple[Tensor, Params]:
        """Mean post-adaptation query loss of ``batch`` and the meta-gradient.

        Args:
            batch: The tasks of one meta-batch.
            vectorize: Run the tasks under ``vmap`` (True) or in a loop (False); None
                follows the algorithm's ``vectorize`` setting.

        Returns:
            ``(loss, grads)``: the detached mean query loss and one gradient per entry
            of :meth:`meta_parameters`, of the same shape.

        Raises:
            ConfigError: ``vmap`` was forced for a second-order meta-gradient through
                a layer whose second-order gradients ``vmap`` gets wrong.
        """
        raise NotImplementedError

    def _dispatch(
        self, fn: Callable[[bool], _T], vectorize: bool | None, *, second_order: bool
    ) -> _T:
        """Run ``fn(use_vmap)`` on the path chosen by ``vectorize`` / the setting."""
        forced = {"vmap": True, "loop": False}.get(self.vectorize)
        use = vectorize if vectorize is not None else forced
        hazards = self._hazards() if second_order else []

        # a forced vmap that would give wrong gradients is refused
        if use is True and hazards:
            raise ConfigError(
                f"vectorize = 'vmap' with {type(self).__name__} (second order): "
                f"torch.func.vmap gives wrong second-order gradients through "
                f"{', '.join(hazards)}; use vectorize='auto' or 'loop', or first_order"
            )
        if use is not None:
            return fn(use)

        # "auto": the loop where vmap is known to be wrong or slow, else vmap if it runs
        if hazards:
            self._tell_once(
                "second-order meta-gradients through %s run in a loop over tasks "
                "(vmap gets them wrong)",
                ", ".join(hazards),
            )
            return fn(False)
        if self._convolutions_on_cpu():
            self._tell_once(
                "%s convolves on the CPU: tasks run in a loop, faster there than vmap's "
                "grouped convolutions (set vectorize='vmap' to override)",
                type(self.model).__name__,
            )
            return fn(False)
        if self.vmap_works is not None:
            return fn(self.vmap_works)
        try:
            out = fn(True)
        except (RuntimeError, NotImplementedError) as error:
            logger.warning(
                "%s cannot run under torch.func.vmap (%s: %s); falling back to a loop "
                "over tasks, which gives the same results more slowly. Set "
                "vectorize='loop' to skip this attempt",
                type(self.model).__name__,
                type(error).__name__,
                str(error).split("\n")[0],
            )
            self.vmap_works = False
            return fn(False)
        self.vmap_works = True
        return out

    def _tell_once(self, message: str, *args: object) -> None:
        told = self.__dict__.setdefault("_told", set())
        if message not in told:
            told.add(message)
            logger.info(message, *args)

    def _convolutions_on_cpu(self) -> bool:
        # NOTE: see Note [vmap or loop]: per-task weights turn a convolution into a
        # grouped one under vmap, which CPU kernels run slower than a loop of plain ones
        parameter = next(self.model.parameters(), None)
        on_cpu = parameter is None or parameter.device.type == "cpu"
        return on_cpu and any(
            isinstance(m, nn.modules.conv._ConvNd) for m in self.model.modules()
        )

    def _hazards(self) -> list[str]:
        # NOTE: cached per training mode; the module structure is taken as fixed
        key = tuple(m.training for m in self.model.modules())
        if getattr(self, "_hazard_cache", (None,))[0] != key:
            self._hazard_cache = (key, second_order_vmap_hazards(self.model))
        return self._hazard_cache[1]

    @torch.no_grad()
    def evaluate(
        self,
        batch: TaskBatch,
        *,
        vectorize: bool | None = None,
        steps: int | None = None,
    ) -> dict[str, Tensor]:
        """Adapt to each task of ``batch`` and measure its query set.

        The module is left as it was: adaptation works on copies of its parameters and
        buffers. Inner gradients are taken even though this runs under
        ``torch.no_grad`` (``torch.func.grad`` ignores an outer ``no_grad``).

        Args:
            batch: Held-out tasks.
            vectorize: As in :meth:`meta_gradient`.
            steps: Inner steps; the training value when None.

        Returns:
            Per-task tensors ``(tasks,)``: ``loss_before`` and ``loss``, and for
            classification ``accuracy_before`` and ``accuracy``.
        """
        steps = self.inner_steps if steps is None else steps
        classification = not torch.is_floating_point(batch.query_y)

        def one_task(params, inner_lr, buffers, sx, sy, qx, qy):
            return evaluate_task(
                self.model,
                params,
                inner_lr,
                buffers,
                sx,
                sy,
                qx,
                qy,
                loss_fn=self.loss_fn,
                steps=steps,
                only=self.only,
                classification=classification,
            )

        shared = (dict(self.model.named_parameters()), self.step_sizes())
        buffers = buffers_of(self.model)
        return self._dispatch(
            lambda use: map_tasks(one_task, shared, buffers, batch, vectorize=use),
            vectorize,
            second_order=False,
        )

    def _maml_gradient(
        self, batch: TaskBatch, *, vectorize: bool | None, first_order: bool
    ) -> tuple[Tensor, Params]:
        meta = self.meta_parameters()

        def one_task(params, inner_lr, buffers, sx, sy, qx, qy):
            return maml_task_loss(
                self.model,
                params,
                inner_lr,
                buffers,
                sx,
                sy,
                qx,
                qy,
                loss_fn=self.loss_fn,
                steps=self.inner_steps,
                first_order=first_order,
                only=self.only,
            )

        def run(path: bool | str) -> tuple[Tensor, Params]:
            # adapt every task and measure its query loss, keeping the graph
            params = dict(self.model.named_parameters())
            if path == "stacked":
                losses = stacked_maml_losses(
                    self._stacked[0],
                    params,
                    self._stacked[1],
                    batch.support_x,
                    batch.support_y,
                    batch.query_x,
                    batch.query_y,
                    loss_fn=self.loss_fn,
                    steps=self.inner_steps,
                    first_order=first_order,
                    only=self.only,
                )
            else:
                shared = (params, self.step_sizes())
                buffers = buffers_of(self.model)
                losses = map_tasks(one_task, shared, buffers, batch, vectorize=path)
            loss = losses.mean()  # losses: (tasks,)

            # one backward through all tasks
            grads = torch.autograd.grad(loss, list(meta.values()), allow_unused=True)
            return loss.detach(), {
                name: torch.zeros_like(p) if g is None else g
                for (name, p), g in zip(meta.items(), grads, strict=True)
            }

        if vectorize is None and self.vectorize == "auto" and self._stackable():
            return run("stacked")
        return self._dispatch(run, vectorize, second_order=not first_order)

    def _stackable(self) -> bool:
        """Whether the tasks can run stacked (Note [stacked tasks]); the model's
        structure is taken as fixed, the inner rule is checked on every call."""
        if not hasattr(self, "_stack"):
            self._stack = LinearStack.of(self.model)
        rule = stacked_rule(self.step_sizes()) if self._stack is not None else None
        if rule is None:
            return False
        self._stacked = (self._stack, rule)
        self.stacked_used = True
        self._tell_once(
            "%s is a stack of linear layers: the tasks of a meta-batch run as batched "
            "matrix products (Note [stacked tasks])",
            type(self.model).__name__,
        )
        return True


class MAML(MetaAlgorithm):
    """Model-Agnostic Meta-Learning: learn an initialisation that adapts in a few steps.

    The meta-objective is the mean over tasks of the query loss after ``inner_steps``
    SGD steps on the support set; its gradient flows back through the inner steps.

    Args:
        model: The learner.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        inner_lr: Step size alpha of the inner loop.
        inner_steps: Inner SGD steps per task.
        first_order: First-order MAML (FOMAML): drop the second-order term
            ``-alpha * Hessian(support loss) @ grad(query loss)`` of each inner step and
            keep no graph of the inner loop. Second order (the default) keeps the graph
            of every inner step until the outer backward, so its memory grows linearly
            with ``inner_steps``, and the outer backward costs Hessian-vector products
            (about two to three times a first-order one).

    References:
        Chelsea Finn, Pieter Abbeel, Sergey Levine. "Model-Agnostic Meta-Learning for
        Fast Adaptation of Deep Networks", ICML 2017.
    """

    name = "maml"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        vectorize: Vectorize = "auto",
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            vectorize=vectorize,
        )
        self.first_order = bool(first_order)

    @property
    def second_order(self) -> bool:
        return not self.first_order and self.inner_steps > 0

    def meta_gradient(
        self, batch: TaskBatch, *, vectorize: bool | None = None
    ) -> tuple[Tensor, Params]:
        return self._maml_gradient(
            batch, vectorize=vectorize, first_order=self.first_order
        )


class ANIL(MAML):
    """Almost No Inner Loop: MAML that adapts only the head in the inner loop.

    The body (``model.features``) is meta-learned by the outer loop only; the inner
    loop adapts the parameters under ``head``. This is cheaper than MAML and, as the
    paper shows, about as accurate, since MAML's inner loop mostly reuses features.

    Args:
        model: The learner; it must have parameters under the ``head`` prefix.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        inner_lr: Step size alpha of the inner loop.
        inner_steps: Inner SGD steps per task.
        first_order: As in :class:`MAML` (the second-order term here involves only the
            head's Hessian and the body's mixed derivatives).
        head: Name or module prefix of the parameters adapted in the inner loop.

    References:
        Aniruddh Raghu, Maithra Raghu, Samy Bengio, Oriol Vinyals. "Rapid Learning or
        Feature Reuse? Towards Understanding the Effectiveness of MAML", ICLR 2020.
    """

    name = "anil"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        head: str = "head",
        vectorize: Vectorize = "auto",
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            first_order=first_order,
            vectorize=vectorize,
        )
        names = [n for n, _ in model.named_parameters()]
        if not any(n == head or n.startswith(head + ".") for n in names):
            raise ConfigError(
                f"ANIL adapts the parameters under head = {head!r}, but "
                f"{type(model).__name__} has none; its parameters are {names}"
            )
        self.only = (head,)


class MetaSGD(MAML):
    """Meta-SGD: meta-learn one inner step size per parameter entry, with the
    initialisation. It is MAML with learned step sizes as the inner rule.

    The inner step is ``theta - alpha * grad`` with ``alpha`` a tensor of the shape of
    ``theta``, initialised to ``inner_lr`` and updated by the outer optimiser together
    with the model. The learned step sizes are the meta-parameters named
    ``"inner_lr.<parameter name>"``.

    Args:
        model: The learner.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        inner_lr: Initial value of every learned step size.
        inner_steps: Inner steps per task (the paper uses one).
        first_order: As in :class:`MAML`; the step sizes still receive their gradient
            (``-grad(support loss) * grad(query loss)``), which is first order.

    References:
        Zhenguo Li, Fengwei Zhou, Fei Chen, Hang Li. "Meta-SGD: Learning to Learn
        Quickly for Few-Shot Learning", arXiv:1707.09835, 2017.
    """

    name = "metasgd"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        vectorize: Vectorize = "auto",
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            first_order=first_order,
            vectorize=vectorize,
        )
        self.learned_lr: Params = {
            name: torch.full_like(p, float(inner_lr)).requires_grad_(True)
            for name, p in model.named_parameters()
        }

    def meta_parameters(self) -> dict[str, Tensor]:
        meta = dict(self.model.named_parameters())
        meta.update({f"inner_lr.{n}": lr for n, lr in self.learned_lr.items()})
        return meta

    def step_sizes(self) -> Params:
        return self.learned_lr


class Reptile(MetaAlgorithm):
    """Reptile: move the initialisation towards the parameters each task adapts to.

    Each task is adapted by ``inner_steps`` SGD steps on its support set, without any
    graph; the meta-gradient is ``theta - mean over tasks of theta_adapted``. Fed to
    plain SGD with step 1 this sets ``theta`` to the mean of the adapted parameters;
    fed to Adam (as here and in the paper's few-shot experiments) it is a direction.
    The loss it reports is the mean post-adaptation query loss, for monitoring; the
    query sets play no part in the update.

    Args:
        model: The learner.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        inner_lr: Step size of the inner SGD steps.
        inner_steps: Inner steps per task; Reptile needs more than one (with one step
            its update is the joint-training gradient).

    References:
        Alex Nichol, Joshua Achiam, John Schulman. "On First-Order Meta-Learning
        Algorithms", arXiv:1803.02999, 2018.
    """

    name = "reptile"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 5,
        vectorize: Vectorize = "auto",
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            vectorize=vectorize,
        )

    def meta_gradient(
        self, batch: TaskBatch, *, vectorize: bool | None = None
    ) -> tuple[Tensor, Params]:
        def one_task(params, inner_lr, buffers, sx, sy, qx, qy):
            return reptile_task_update(
                self.model,
                params,
                inner_lr,
                buffers,
                sx,
                sy,
                qx,
                qy,
                loss_fn=self.loss_fn,
                steps=self.inner_steps,
            )

        def run(use_vmap: bool) -> tuple[Tensor, Params]:
            params = {n: p.detach() for n, p in self.model.named_parameters()}
            adapted, losses = map_tasks(
                one_task,
                (params, self.inner_lr),
                buffers_of(self.model),
                batch,
                vectorize=use_vmap,
            )  # adapted[name]: (tasks, *shape)
            grads = {n: p - adapted[n].mean(0) for n, p in params.items()}
            return losses.mean(), grads

        return self._dispatch(run, vectorize, second_order=False)


# ---------------------------------------------------------------------------------------
# registry: the context is (model, loss_fn); the settings are keyword-only


@META_ALGORITHMS.register("maml", summary="MAML, second order (Finn et al. 2017)")
def _maml(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
) -> MAML:
    return MAML(
        model,
        loss_fn,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=first_order,
    )


@META_ALGORITHMS.register("fomaml", summary="first-order MAML (Finn et al. 2017)")
def _fomaml(
    model: nn.Module, loss_fn: LossFn, *, inner_lr: float = 0.01, inner_steps: int = 1
) -> MAML:
    return MAML(
        model, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps, first_order=True
    )


@META_ALGORITHMS.register("reptile", summary="Reptile (Nichol et al. 2018)")
def _reptile(
    model: nn.Module, loss_fn: LossFn, *, inner_lr: float = 0.01, inner_steps: int = 5
) -> Reptile:
    return Reptile(model, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps)


@META_ALGORITHMS.register(
    "metasgd", summary="Meta-SGD, learned step sizes (Li et al. 2017)"
)
def _metasgd(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
) -> MetaSGD:
    return MetaSGD(
        model,
        loss_fn,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=first_order,
    )


@META_ALGORITHMS.register(
    "anil", summary="ANIL, head-only inner loop (Raghu et al. 2020)"
)
def _anil(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    head: str = "head",
) -> ANIL:
    return ANIL(
        model,
        loss_fn,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=first_order,
        head=head,
    )
