"""The pieces regularisation strategies are made of, as pure functions.

Each function here takes tensors (or dictionaries of them) and returns tensors; the
strategies in :mod:`metacl.strategies.regularization` and
:mod:`metacl.strategies.replay` only hold state and call them. A meta-learned
regulariser replaces one of these functions, not a strategy.

- :func:`quadratic_penalty` / :func:`quadratic_penalty_grad`: ``sum importance *
  (theta - anchor)^2`` and its gradient (EWC, online EWC, SI).
- :func:`fisher_diagonal`: the diagonal of the empirical or true Fisher information.
- :func:`si_importance`: SI's per-parameter importance from its path integral.
- :func:`distillation_loss`: LwF's knowledge-distillation term (and its two halves,
  :func:`distillation_targets` and :func:`distillation_from_targets`).
- :func:`agem_project`: A-GEM's projection of a gradient that would raise the
  memory's loss.

Example:
    >>> import torch
    >>> p = {"w": torch.tensor([1.0, 2.0])}
    >>> anchor = {"w": torch.tensor([1.0, 0.0])}
    >>> float(quadratic_penalty(p, anchor, {"w": torch.tensor([5.0, 0.5])}))
    2.0

References:
    Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017.
    Zenke, Poole & Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017.
    Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017.
    Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019.
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad, vmap

from metacl.errors import ConfigError

__all__ = [
    "Params",
    "LogitsFn",
    "quadratic_penalty",
    "quadratic_penalty_grad",
    "fisher_diagonal",
    "si_importance",
    "distillation_loss",
    "distillation_targets",
    "distillation_from_targets",
    "agem_project",
]

Params = dict[str, Tensor]
#: ``logits_fn(params, x, task) -> logits``: a model's forward with its parameters
#: given as a dictionary (``torch.func.functional_call``)
LogitsFn = Callable[[Params, Tensor, Tensor], Tensor]


def quadratic_penalty(params: Params, anchor: Params, importance: Params) -> Tensor:
    """``sum_k importance_k * (params_k - anchor_k)^2`` over every named tensor.

    EWC multiplies this by ``lambda_ / 2`` (Kirkpatrick et al. 2017, eq. 3), SI by
    its strength ``c`` (Zenke et al. 2017, eq. 4). Zero at the anchor; grows with the
    importance-weighted squared distance.
    """
    total = next(iter(params.values())).new_zeros(())
    for name, p in params.items():
        total = total + (importance[name] * (p - anchor[name]) ** 2).sum()
    return total


def quadratic_penalty_grad(
    params: Params, anchor: Params, importance: Params
) -> Params:
    """The gradient of :func:`quadratic_penalty` w.r.t. ``params``:
    ``2 * importance * (params - anchor)``, without building an autograd graph."""
    return {
        name: 2 * importance[name] * (p.detach() - anchor[name])
        for name, p in params.items()
    }


def fisher_diagonal(
    logits_fn: LogitsFn,
    params: Params,
    x: Tensor,
    y: Tensor,
    task: int,
    *,
    kind: Literal["empirical", "true"] = "empirical",
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    max_floats: int = 2**24,
) -> Params:
    """The diagonal of the Fisher information of a classifier, per parameter.

    The Fisher is the mean over samples of the squared gradient of the log-likelihood:
    ``F_k = E_x E_{y ~ p} [(d log p(y | x) / d theta_k)^2]``. Two choices of ``y``:

    - ``"empirical"``: the dataset's label (the *empirical* Fisher, which most EWC
      implementations use).
    - ``"true"``: a label drawn from the model's own predictive distribution ``p(y|x)``
      for each sample (the Fisher of Kirkpatrick et al.'s derivation).

    Args:
        logits_fn: The model's forward with parameters given as a dictionary.
        params: The parameters at which the Fisher is taken (detached tensors).
        x: Inputs, ``(n, ...)``.
        y: Labels, ``(n,)``; ignored for ``kind="true"``.
        task: The task id of every sample (one experience at a time).
        kind: ``"empirical"`` or ``"true"``.
        batch_size: Samples per gradient. ``1`` (default) squares each sample's own
            gradient: the diagonal Fisher as defined. A larger value squares the
            gradient of the *mean* loss of each mini-batch and averages over
            mini-batches (the approximation some libraries use, Avalanche among
            them). NOTE: that estimate is smaller by roughly the batch size once the
            gradient noise dominates, so an EWC ``lambda_`` tuned for one batch size
            does not carry over to another.
        generator: Random generator for the labels of the true Fisher.
        max_floats: Bound on the per-gradient tensors materialised at once
            (``chunk * n_parameters``); lower it to save memory.

    Returns:
        A dictionary like ``params`` holding the Fisher diagonal (non-negative).

    Raises:
        ConfigError: An unknown ``kind`` or a ``batch_size`` below 1.
    """
    if kind not in ("empirical", "true"):
        raise ConfigError(f"fisher = {kind!r}; valid choices: empirical, true")
    if batch_size < 1:
        raise ConfigError(f"fisher_batch_size = {batch_size} must be >= 1")
    n = len(x)
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    if n == 0:
        return fisher
    params = {name: p.detach() for name, p in params.items()}

    # labels: the data's, or drawn from the model's predictive distribution
    if kind == "true":
        with torch.no_grad():
            drawn = []
            for start in range(0, n, 1024):
                xb = x[start : start + 1024]
                tb = torch.full((len(xb),), task, dtype=torch.int64, device=x.device)
                probs = torch.softmax(logits_fn(params, xb, tb), dim=1)
                drawn.append(torch.multinomial(probs.cpu(), 1, generator=generator))
            y = torch.cat(drawn).squeeze(1).to(x.device)

    def group_loss(p: Params, xg: Tensor, yg: Tensor) -> Tensor:
        tg = torch.full((len(xg),), task, dtype=torch.int64, device=xg.device)
        return F.cross_entropy(logits_fn(p, xg, tg), yg)

    # groups of `batch_size` samples; a last, smaller group counts as one
    n_groups = -(-n // batch_size)
    if batch_size > 1:
        # NOTE: mini-batch groups go one at a time through plain autograd: their
        # matrix products are large enough to run at full speed, where a vmap over
        # groups would materialise every group's gradient of a chunk at once (memory
        # bound) and costs about a second of setup on its first call in a process.
        # Per-sample groups (batch_size 1) are what vmap is for.
        leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        names = list(leaves)
        for start in range(0, n, batch_size):
            with torch.enable_grad():  # callers may hold no_grad
                loss = group_loss(
                    leaves, x[start : start + batch_size], y[start : start + batch_size]
                )
                grads = torch.autograd.grad(
                    loss, [leaves[k] for k in names], allow_unused=True
                )
            for name, g in zip(names, grads, strict=True):
                if g is not None:
                    fisher[name].addcmul_(g, g)
        for name in fisher:
            fisher[name] /= n_groups
        return fisher

    # one sample per group: every sample's own gradient, in chunks of samples
    per_sample = vmap(grad(group_loss), in_dims=(None, 0, 0))
    n_params = sum(p.numel() for p in params.values())
    chunk = max(1, max_floats // max(n_params, 1))
    for start in range(0, n, chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        grads = per_sample(params, xs.unsqueeze(1), ys.unsqueeze(1))
        for name in fisher:
            fisher[name] += (grads[name] ** 2).sum(0)
    for name in fisher:
        fisher[name] /= n
    return fisher


def si_importance(
    path_integral: Tensor, delta: Tensor, *, xi: float, clamp_negative: bool = True
) -> Tensor:
    """SI's importance of each parameter for the task just learned.

    ``omega_k = path_integral_k / (delta_k^2 + xi)`` (Zenke et al. 2017, eq. 5), where
    ``path_integral_k = sum_t -g_k(t) * (theta_k(t+1) - theta_k(t))`` is the part of the
    loss decrease credited to parameter ``k`` along the training trajectory, and
    ``delta_k`` its total displacement over the task.

    Args:
        path_integral: The accumulated ``-g * d theta``.
        delta: The displacement over the task.
        xi: Damping that keeps the ratio bounded where ``delta`` is tiny.
        clamp_negative: Clamp negative importances to 0. A negative path integral
            (the loss rose along a parameter, possible with momentum or noisy
            gradients) would make the penalty *reward* moving that parameter; the
            paper leaves this case open.
    """
    omega = path_integral / (delta**2 + xi)
    return omega.clamp_min(0.0) if clamp_negative else omega


def distillation_loss(
    logits: Tensor, old_logits: Tensor, *, temperature: float
) -> Tensor:
    """Knowledge distillation: ``KL(softmax(old / T) || softmax(new / T))``, mean over
    the batch.

    Li & Hoiem (2016) write it as a cross-entropy with the old outputs as soft
    targets; the KL form differs by the old outputs' entropy, a constant, so the
    gradient is the same, and it is exactly zero when the model equals its old copy.

    Args:
        logits: The current model's outputs for the old classes, ``(batch, k)``.
        old_logits: The old model's outputs for the same classes.
        temperature: ``T`` (Li & Hoiem use 2).
    """
    return distillation_from_targets(
        logits,
        distillation_targets(old_logits, temperature=temperature),
        temperature=temperature,
    )


def distillation_targets(old_logits: Tensor, *, temperature: float) -> Tensor:
    """The soft targets of :func:`distillation_loss` as log-probabilities,
    ``log_softmax(old / T)``: what a strategy can record once per experience."""
    return F.log_softmax(old_logits / temperature, dim=1)


def distillation_from_targets(
    logits: Tensor, log_targets: Tensor, *, temperature: float
) -> Tensor:
    """:func:`distillation_loss` from targets made by :func:`distillation_targets`."""
    log_p = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(log_p, log_targets, reduction="batchmean", log_target=True)


def agem_project(g: Tensor, g_ref: Tensor) -> Tensor:
    """A-GEM's projection (Chaudhry et al. 2019, eq. 11).

    If ``g . g_ref >= 0`` the step does not raise the memory's loss (to first
    order) and ``g`` is returned unchanged; otherwise ``g`` minus its component along
    ``g_ref``: ``g - (g . g_ref) / (g_ref . g_ref) * g_ref``, whose dot product with
    ``g_ref`` is zero.

    Args:
        g: The flattened gradient of the current batch.
        g_ref: The flattened gradient of a batch drawn from the memory.
    """
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    norm = torch.dot(g_ref, g_ref)
    if not math.isfinite(float(norm)) or float(norm) == 0.0:
        return g
    return g - (dot / norm) * g_ref
