"""Functional views of a module: parameter dictionaries and a differentiable inner loop.

Everything that must be differentiated *through* an update (MAML and its family) works
on plain dictionaries of tensors rather than on a module's attributes. The module only
supplies its forward computation, called with ``torch.func.functional_call``; the
tensors come from the caller. This keeps a module and any number of adapted copies
apart, and lets ``torch.func.vmap`` run the same adaptation for many tasks at once.

Note [buffers of adapted copies]
    A module's buffers (BatchNorm's ``running_mean``, ``running_var`` and
    ``num_batches_tracked``) are handled explicitly:

    * :func:`adapt` clones the buffers it is given before its first step. The adapted
      copy runs the module in whatever mode the module is in: in train mode BatchNorm
      normalises with the statistics of the current batch and updates the running
      statistics *of the clones*; in eval mode it normalises with the running
      statistics it was given. The clones are returned beside the adapted parameters.
    * The module's own buffers, and the tensors in the dictionary passed in, are never
      written to. Nothing an adapted copy sees leaks back into the original.
    * Under ``torch.func.vmap`` each task needs its own buffers, because BatchNorm
      updates them in place: :func:`per_task_buffers` gives every task a clone, stacked
      along a leading task dimension.
    * Consequently meta-training never changes the module's running statistics. A
      model with BatchNorm meta-trained in train mode is also evaluated in train mode
      (each task normalised by its own batch statistics, as in Finn et al.'s code);
      switching it to eval mode would normalise with the never-updated initial
      statistics.

The inner update itself is pluggable: :func:`adapt` takes a float (plain SGD), a
dictionary of learned per-parameter step sizes (Meta-SGD), or any :class:`StepRule`,
a pure function ``(params, grads, state, loss) -> (params, state)`` such as a learned
optimiser.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1)
    >>> params, buffers = params_of(model), buffers_of(model)
    >>> x, y = torch.randn(5, 2), torch.randn(5, 1)
    >>> adapted, _ = adapt(model, params, buffers, x, y, nn.functional.mse_loss,
    ...                    steps=2, inner_lr=0.1)
    >>> sorted(adapted) == sorted(params)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Protocol, runtime_checkable

from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from metacl.errors import ConfigError

__all__ = [
    "Params",
    "Buffers",
    "LossFn",
    "StepRule",
    "SGDStep",
    "PerParameterStep",
    "as_step_rule",
    "params_of",
    "buffers_of",
    "per_task_buffers",
    "forward",
    "select",
    "split_adapted",
    "adapt",
    "second_order_vmap_hazards",
]

Params = dict[str, Tensor]
Buffers = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------------------
# step rules: how one inner step turns gradients into new parameters


@runtime_checkable
class StepRule(Protocol):
    """How one inner step turns the support gradient into new fast weights.

    A rule is a pure function of tensors, so that it runs unchanged under
    ``torch.func.vmap`` and can be differentiated through. It may carry per-task state
    across the steps of one adaptation (a learned optimiser's hidden state, say), held
    in a dictionary of tensors that :meth:`init` creates. A rule's own meta-parameters
    (learned step sizes, the weights of a learned optimiser) are tensors it closes over;
    the algorithm that owns it lists them among its meta-parameters.

    :func:`adapt` calls ``state = rule.init(fast)`` once, then for every step
    ``fast, state = rule(fast, grads, state, loss=loss)``.
    """

    def init(self, params: Params) -> Params:
        """Per-task state before the first step (an empty dictionary if none)."""
        ...

    def __call__(
        self, params: Params, grads: Params, state: Params, *, loss: Tensor
    ) -> tuple[Params, Params]:
        """New fast weights and state from the current ones, their support gradients
        (same keys as ``params``) and the support loss they were taken at."""
        ...


class SGDStep:
    """Plain gradient descent, ``theta <- theta - lr * grad``: MAML's inner step.

    Args:
        lr: The step size alpha, a finite float >= 0.
    """

    def __init__(self, lr: float) -> None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise ConfigError(f"inner_lr = {lr!r} is invalid; expected a float >= 0")
        if not (math.isfinite(lr) and lr >= 0.0):
            raise ConfigError(
                f"inner_lr = {lr!r} is invalid; expected a finite float >= 0"
            )
        self.lr = float(lr)

    def init(self, params: Params) -> Params:
        return {}

    def __call__(
        self, params: Params, grads: Params, state: Params, *, loss: Tensor
    ) -> tuple[Params, Params]:
        return {n: p - self.lr * grads[n] for n, p in params.items()}, state


class PerParameterStep:
    """Gradient descent with a learned step size per parameter entry (Meta-SGD).

    ``theta <- theta - alpha * grad`` with ``alpha`` a tensor of ``theta``'s shape (or
    broadcastable to it). The tensors may require gradients: the outer loss then
    reaches them, which is how Meta-SGD (and La-MAML, with clipping) learns them.

    Args:
        lrs: One step-size tensor per adapted parameter, by name.
        min_lr: Clamp the step sizes from below before use (None: no clamp). La-MAML
            clips learned rates at 0 so that a step never ascends; Meta-SGD does not.

    References:
        Zhenguo Li, Fengwei Zhou, Fei Chen, Hang Li. "Meta-SGD: Learning to Learn
        Quickly for Few-Shot Learning", arXiv:1707.09835, 2017.
    """

    def __init__(self, lrs: Params, *, min_lr: float | None = None) -> None:
        self.lrs = lrs
        self.min_lr = min_lr

    def init(self, params: Params) -> Params:
        missing = [n for n in params if n not in self.lrs]
        if missing:
            raise ConfigError(
                f"the learned inner_lr dictionary has no step size for {missing!r}; "
                f"it holds {sorted(self.lrs)!r}"
            )
        return {}

    def __call__(
        self, params: Params, grads: Params, state: Params, *, loss: Tensor
    ) -> tuple[Params, Params]:
        new = {}
        for n, p in params.items():
            lr = (
                self.lrs[n]
                if self.min_lr is None
                else self.lrs[n].clamp_min(self.min_lr)
            )
            new[n] = p - lr * grads[n]
        return new, state


def as_step_rule(inner_lr: float | Params | StepRule) -> StepRule:
    """The step rule meant by ``inner_lr``: a float is :class:`SGDStep`, a dictionary
    of tensors :class:`PerParameterStep`, and a :class:`StepRule` is itself.

    Raises:
        ConfigError: Anything else, or a negative or non-finite float.
    """
    if isinstance(inner_lr, dict):
        return PerParameterStep(inner_lr)
    if isinstance(inner_lr, StepRule):
        return inner_lr
    if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)):
        raise ConfigError(
            f"inner_lr = {inner_lr!r} is invalid; expected a float, a dictionary of "
            "step-size tensors, or a StepRule"
        )
    return SGDStep(inner_lr)


def params_of(module: nn.Module, *, detach: bool = False) -> Params:
    """The module's parameters as a name -> tensor dictionary.

    Args:
        module: Any module.
        detach: Return detached tensors that share storage with the parameters. By
            default the parameters themselves are returned, so that a loss computed
            from an adapted copy sends its gradients back into the module.
    """
    return {name: p.detach() if detach else p for name, p in module.named_parameters()}


def buffers_of(module: nn.Module) -> Buffers:
    """Clones of the module's buffers, as a name -> tensor dictionary.

    The clones may be changed (BatchNorm updates running statistics in place) without
    touching the module; see Note [buffers of adapted copies] in this module.
    """
    return {name: b.detach().clone() for name, b in module.named_buffers()}


def per_task_buffers(buffers: Buffers, tasks: int) -> Buffers:
    """One clone of every buffer per task, stacked along a new leading dimension.

    ``torch.func.vmap`` over tasks then maps dimension 0 of these tensors, so that
    BatchNorm's in-place update of running statistics writes into each task's own
    copy. (Unbatched buffers under ``vmap`` make BatchNorm raise an error.)
    """
    if tasks < 1:
        raise ValueError(f"tasks must be at least 1, got {tasks}")
    return {
        k: b.unsqueeze(0).expand(tasks, *b.shape).clone() for k, b in buffers.items()
    }


def forward(model: nn.Module, params: Params, buffers: Buffers, x: Tensor) -> Tensor:
    """Run ``model`` on ``x`` with the given parameters and buffers instead of its own.

    Entries missing from ``params`` or ``buffers`` fall back to the module's own
    tensors. In train mode, BatchNorm updates the running statistics of the tensors in
    ``buffers`` in place: pass clones (:func:`buffers_of`) to keep the module's intact.
    """
    return functional_call(model, (params, buffers), (x,))


def split_adapted(
    params: Params, names: Collection[str], *, first_order: bool
) -> tuple[Params, Params, Params]:
    """``params`` split into the adapted ones (``names``) and the fixed rest, and the
    fixed rest as the inner gradients see it.

    NOTE: a first-order inner gradient is a constant, so it is taken at detached
    fixed parameters; no graph of the inner gradients reaches the outer loss.
    """
    fast = {n: params[n] for n in names}
    fixed = {n: p for n, p in params.items() if n not in fast}
    if first_order:
        return fast, fixed, {n: p.detach() for n, p in fixed.items()}
    return fast, fixed, fixed


def select(params: Params, only: Collection[str] | None) -> list[str]:
    """The names in ``params`` picked by ``only``, in the dictionary's order.

    Args:
        params: Parameter dictionary.
        only: Names or module prefixes: ``"head"`` picks ``"head.weight"`` and
            ``"head.bias"``; ``None`` picks every parameter.

    Raises:
        ConfigError: An entry of ``only`` matches no parameter.
    """
    if only is None:
        return list(params)
    if isinstance(only, str):
        only = (only,)
    picked = [n for n in params if any(n == o or n.startswith(o + ".") for o in only)]
    unmatched = [
        o for o in only if not any(n == o or n.startswith(o + ".") for n in params)
    ]
    if unmatched:
        raise ConfigError(
            f"only = {list(only)!r}: {unmatched!r} match no parameter; parameter names "
            f"are {list(params)!r}"
        )
    return picked


def adapt(
    model: nn.Module,
    params: Params,
    buffers: Buffers,
    support_x: Tensor,
    support_y: Tensor,
    loss_fn: LossFn,
    *,
    steps: int = 1,
    inner_lr: float | Params | StepRule = 0.01,
    first_order: bool = False,
    only: Collection[str] | None = None,
) -> tuple[Params, Buffers]:
    """Take ``steps`` gradient steps on the support set, differentiably.

    With the default rule each step is ``theta <- theta - inner_lr *
    grad(loss_fn(model(support_x), support_y))`` for the selected parameters. The
    gradient is taken with ``torch.func.grad_and_value``, so the function runs
    unchanged under ``torch.func.vmap`` (one task per mapped slice) and its result can
    be differentiated again by ``torch.autograd``.

    Args:
        model: Supplies the forward computation only; its own tensors are not used
            except for entries missing from ``params`` / ``buffers``.
        params: Starting parameters (usually :func:`params_of`, so that the outer
            gradient reaches the module).
        buffers: Starting buffers. They are cloned first, and the clones are what the
            adapted copy updates; see Note [buffers of adapted copies].
        support_x: Support inputs of one task, ``(shots, *input_shape)``.
        support_y: Support targets of one task.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        steps: Number of inner steps, 0 or more (0 returns ``params`` unchanged).
        inner_lr: The update rule (see :func:`as_step_rule`): a float alpha for plain
            SGD; a dictionary holding one tensor per adapted parameter, of that
            parameter's shape or broadcastable to it, for learned per-parameter step
            sizes (Meta-SGD), whose tensors may require gradients; or any
            :class:`StepRule`, such as a learned optimiser.
        first_order: Treat each inner gradient as a constant (first-order MAML). This
            drops the second-order term ``-inner_lr * Hessian(support loss) @ v`` of
            the meta-gradient and keeps no graph of the inner gradients. When False
            (second order), the graph of every inner step is kept alive until the outer
            backward: memory grows linearly with ``steps`` (about one forward and one
            backward graph of the support batch per step), and the outer backward
            costs Hessian-vector products, roughly two to three times a first-order
            one.
        only: Adapt only these parameters (names or module prefixes, see
            :func:`select`), as ANIL adapts only ``"head"``; the others keep their
            values and still receive outer gradients.

    Returns:
        ``(adapted_params, adapted_buffers)``: a dictionary with every entry of
        ``params`` (adapted ones replaced) and the updated clones of ``buffers``.

    Raises:
        ConfigError: Bad ``steps``, a negative or non-finite ``inner_lr``, a learned
            step-size dictionary that misses an adapted parameter, or an ``only`` entry
            that matches nothing.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps = {steps!r} is invalid; expected an integer >= 0")
    rule = as_step_rule(inner_lr)
    names = select(params, only)

    buffers = {k: b.clone() for k, b in buffers.items()}
    fast, fixed, fixed_for_grad = split_adapted(params, names, first_order=first_order)

    def support_loss(fast: Params, buffers: Buffers) -> Tensor:
        out = functional_call(
            model, ({**fixed_for_grad, **fast}, buffers), (support_x,)
        )
        return loss_fn(out, support_y)

    state = rule.init(fast)
    for _ in range(steps):
        # gradient of the support loss at the current fast weights
        at = {n: p.detach() for n, p in fast.items()} if first_order else fast
        grads, loss = grad_and_value(support_loss)(at, buffers)

        # one step of the update rule
        fast, state = rule(fast, grads, state, loss=loss)

    return {n: fast.get(n, p) for n, p in params.items()}, buffers


# Note [second order under vmap]
#     In torch 2.x the batching rules of the BatchNorm and LayerNorm backward kernels
#     are not right for double differentiation: under ``vmap``, the meta-gradient of a
#     second-order inner loop through such a layer differs from the per-task loop (and
#     from finite differences), while first-order gradients and the losses agree. See
#     https://github.com/pytorch/functorch/issues/534. The meta-learning algorithms
#     therefore run such models in a loop when second order is asked for, and refuse to
#     be forced onto ``vmap`` there. Normalisation written by hand from elementwise
#     operations, or called functionally inside a custom module, is not detected.

_VMAP_UNSAFE_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
)


def second_order_vmap_hazards(model: nn.Module) -> list[str]:
    """Modules of ``model`` whose second-order gradients ``vmap`` gets wrong.

    These are normalisation layers that normalise with statistics of their input:
    BatchNorm in training mode (or without running statistics), InstanceNorm and
    LayerNorm; see Note [second order under vmap]. BatchNorm in eval mode is an affine
    map of its input and is safe.

    Returns:
        ``"name (Type)"`` for each such module, in module order; empty if none.
    """
    hazards = []
    for name, module in model.named_modules():
        if not isinstance(module, _VMAP_UNSAFE_NORMS):
            continue
        if (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and not module.training
            and module.running_mean is not None
        ):
            continue
        hazards.append(f"{name or '<model>'} ({type(module).__name__})")
    return hazards
