"""The meta-training loop: outer optimiser, validation, checkpoints, held-out test.

:func:`meta_train` draws meta-batches of tasks from a task family, asks a meta-learning
algorithm for the meta-gradient and applies it with Adam. It validates on a fixed set of
meta-validation tasks, writes checkpoints that :func:`meta_train` can resume from, and
ends with an evaluation on meta-test tasks: the mean and 95% confidence interval of the
post-adaptation loss (and accuracy, for classification).

Note [determinism and resume]
    One seed fixes everything: the class split of an episode family, the model's
    initialisation, the stream of training tasks, the validation tasks and the test
    tasks, each from its own generator derived from the seed. A checkpoint holds the
    meta-parameters, the optimiser state, the training generator's state and the
    history, so a resumed run continues exactly where the interrupted one stopped and
    ends with the same numbers as an uninterrupted run on the same machine.

Example:
    >>> result = meta_train(MetaTrainConfig(iterations=5, meta_batch=4, val_tasks=4,
    ...                                     test_tasks=8, eval_every=0))
    >>> sorted(result.test)
    ['loss', 'loss_before']
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from metacl.errors import CheckpointError, ConfigError, TrainingError
from metacl.locking import directory_lock
from metacl.meta.algorithms import (
    META_ALGORITHMS,
    MetaAlgorithm,
    Vectorize,
    check_vectorize,
)
from metacl.meta.tasks import TASK_FAMILIES, Split, TaskFamily
from metacl.models.base import MODELS, build_model

__all__ = [
    "MetaTrainConfig",
    "MetaTrainResult",
    "Progress",
    "meta_train",
    "load_checkpoint",
    "summarise",
    "CHECKPOINT_NAME",
    "RESULTS_NAME",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, float]], None]
"""``progress(iteration, total, metrics)``, called after every meta-iteration."""

CHECKPOINT_NAME = "checkpoint.pt"
RESULTS_NAME = "results.json"
_CHECKPOINT_FORMAT = 1

# settings that may change between a checkpoint and the run that resumes it: none of
# them changes the training that has been done
_RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "test_tasks", "device")

# default models: by family, or for episodes by the rank of the inputs
_SINE_MODEL = ("mlp", {"hidden": [40, 40]})
_IMAGE_MODEL = ("cnn", {"channels": [32, 32], "hidden": 0})
_FLAT_MODEL = ("mlp", {"hidden": [64, 64]})


def _default_model(family: str, input_shape: tuple[int, ...]) -> tuple[str, dict]:
    if family == "sine":
        return _SINE_MODEL
    return _IMAGE_MODEL if len(input_shape) == 3 else _FLAT_MODEL


@dataclass
class MetaTrainConfig:
    """Everything that defines a meta-training run.

    Settings of the parts are checked against their registries when the configuration
    is made, and defaults are filled in, so two configurations that mean the same run
    compare equal.

    Attributes:
        family: Task family (``"sine"`` or ``"episodes"``, see
            :data:`~metacl.meta.tasks.TASK_FAMILIES`).
        family_settings: Its settings, e.g. ``{"dataset": "omniglot", "ways": 5,
            "shots": 1}``.
        algorithm: Meta-learning algorithm (``maml``, ``fomaml``, ``reptile``,
            ``metasgd``, ``anil``).
        algorithm_settings: Its settings: ``inner_lr``, ``inner_steps``,
            ``first_order``, ... Second-order algorithms keep the graph of every inner
            step, so their memory grows linearly with ``inner_steps``.
        model: Registered model; None picks a default when the run starts: an MLP
            1-40-40-1 for sine, for episodes a two-block CNN (32 channels, no hidden
            layer) on images and an MLP 64-64 on other inputs.
        model_settings: Its settings (merged into the default model's, if any).
        iterations: Meta-iterations (outer steps).
        meta_batch: Tasks per meta-iteration.
        outer_lr: Adam's learning rate for the meta-parameters.
        eval_every: Validate every this many iterations (0: never during training).
        val_tasks: Number of fixed meta-validation tasks.
        test_tasks: Number of meta-test tasks of the final evaluation.
        eval_inner_steps: Inner steps when evaluating; None uses the training value.
        checkpoint_every: Write a checkpoint every this many iterations (0: only at
            the end); needs an output folder.
        vectorize: ``"vmap"`` runs the tasks of a batch in parallel, ``"loop"`` one
            after the other; ``"auto"`` tries ``vmap`` on the first batch and falls
            back to the loop, with a warning, if the model does not support it (see
            Note [vmap or loop] in :mod:`metacl.meta.algorithms`).
        seed: Fixes the class split, the initialisation and every task drawn.
        device: Torch device of the model and the tasks.
    """

    family: str = "sine"
    family_settings: dict = field(default_factory=dict)
    algorithm: str = "maml"
    algorithm_settings: dict = field(default_factory=dict)
    model: str | None = None
    model_settings: dict = field(default_factory=dict)
    iterations: int = 1000
    meta_batch: int = 25
    outer_lr: float = 1e-3
    eval_every: int = 100
    val_tasks: int = 100
    test_tasks: int = 600
    eval_inner_steps: int | None = None
    checkpoint_every: int = 100
    vectorize: Vectorize = "auto"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("iterations", "meta_batch", "val_tasks", "test_tasks"):
            _check_int(name, getattr(self, name), low=1)
        for name in ("eval_every", "checkpoint_every", "seed"):
            _check_int(name, getattr(self, name), low=0)
        if self.eval_inner_steps is not None:
            _check_int("eval_inner_steps", self.eval_inner_steps, low=0)
        if (
            isinstance(self.outer_lr, bool)
            or not isinstance(self.outer_lr, (int, float))
            or not math.isfinite(self.outer_lr)
            or self.outer_lr <= 0
        ):
            raise ConfigError(
                f"outer_lr = {self.outer_lr!r} is invalid; expected a float > 0"
            )
        self.outer_lr = float(self.outer_lr)
        check_vectorize(self.vectorize)

        # resolve the parts' settings against their registries
        self.family_settings = TASK_FAMILIES.validate(
            self.family, dict(self.family_settings), where="family_settings"
        )
        self.algorithm_settings = META_ALGORITHMS.validate(
            self.algorithm, dict(self.algorithm_settings), where="algorithm_settings"
        )
        import metacl.models.cnn  # noqa: F401  (registers the models)
        import metacl.models.mlp  # noqa: F401

        if self.model is not None:
            self.model_settings = MODELS.validate(
                self.model, dict(self.model_settings), where="model_settings"
            )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-compatible primitives (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MetaTrainConfig:
        """Build a configuration from a mapping, refusing unknown keys.

        Raises:
            ConfigError: A key that is not a field, with the list of valid keys.
        """
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown meta-training key(s) {unknown}; valid keys: {', '.join(valid)}"
            )
        return cls(**values)


@dataclass
class MetaTrainResult:
    """What a meta-training run produced.

    Attributes:
        config: The run's configuration.
        algorithm: The trained algorithm; ``algorithm.model`` is the meta-learned model.
        test: For each metric (``loss``, ``loss_before``, and for classification
            ``accuracy``, ``accuracy_before``): ``{"mean", "ci95", "std", "n"}`` over
            the meta-test tasks; ``ci95`` is the half-width of the 95% interval.
        validation: One entry per validation: ``{"iteration", <metric>: mean, ...}``.
        train_loss: Mean post-adaptation query loss of each meta-batch.
        vectorize: ``"vmap"``, ``"loop"`` or ``"mixed"`` (``vmap`` except for
            second-order gradients that it gets wrong): how tasks were run.
        model: The model that was built, as ``{"name", "settings"}``.
        seconds: Wall time of the training iterations run by this call.
        out_dir: Where the checkpoint and ``results.json`` were written, if anywhere.
    """

    config: MetaTrainConfig
    algorithm: MetaAlgorithm
    test: dict[str, dict[str, float | None]]
    validation: list[dict[str, float]]
    train_loss: list[float]
    vectorize: str
    model: dict[str, Any]
    seconds: float
    out_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-compatible primitives (what ``results.json`` holds)."""
        return {
            "config": self.config.to_dict(),
            "model": self.model,
            "test": self.test,
            "validation": self.validation,
            "train_loss": self.train_loss,
            "vectorize": self.vectorize,
            "seconds": self.seconds,
        }


def _check_int(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(
            f"{name} = {value!r} is invalid; expected an integer >= {low}"
        )


def summarise(values: Tensor) -> dict[str, float | None]:
    """Mean, standard deviation and 95% confidence half-width of per-task values.

    The interval is Student's t: ``t(0.975, n - 1) * std / sqrt(n)``, with the sample
    standard deviation; ``ci95`` is None for a single value.
    """
    x = values.detach().double().cpu().numpy()
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "ci95": None, "std": None, "n": n}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "ci95": half, "std": std, "n": n}


def _seeds(seed: int) -> dict[str, int]:
    """Independent seeds for each random stream of a run, derived from ``seed``."""
    names = ("model", "train", "val", "test")
    states = np.random.SeedSequence(seed).spawn(len(names))
    return {
        n: int(s.generate_state(1, np.uint64)[0] >> 1)
        for n, s in zip(names, states, strict=True)
    }


def _evaluate(
    algorithm: MetaAlgorithm,
    family: TaskFamily,
    *,
    tasks: int,
    chunk: int,
    seed: int,
    split: Split,
    steps: int | None,
    device: torch.device,
) -> dict[str, Tensor]:
    """Per-task metrics on ``tasks`` tasks of ``split``, drawn afresh from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[dict[str, Tensor]] = []
    for start in range(0, tasks, chunk):
        batch = family.sample(
            min(chunk, tasks - start), generator=generator, split=split
        )
        parts.append(algorithm.evaluate(batch.to(device), steps=steps))
    return {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}


def _atomic_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _RESUMABLE_CHANGES}


_CHECKPOINT_KEYS = (
    "config",
    "iteration",
    "meta_parameters",
    "buffers",
    "optimizer",
    "generator",
    "train_loss",
    "validation",
    "vmap_works",
)


def load_checkpoint(path: str | Path, config: MetaTrainConfig) -> dict[str, Any]:
    """Read a checkpoint and check that it belongs to ``config``.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain
    containers only, nothing that executes code.

    Raises:
        CheckpointError: The file is unreadable, of another format, or was written by a
            run whose configuration differs (only ``iterations``, ``checkpoint_every``,
            ``test_tasks`` and ``device`` may change); the message names the
            differing keys.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors have many types
        raise CheckpointError(
            f"cannot read the checkpoint {path} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); it is truncated or "
            "corrupt: delete it to start afresh"
        ) from error
    if (
        not isinstance(state, dict)
        or state.get("format") != _CHECKPOINT_FORMAT
        or any(k not in state for k in _CHECKPOINT_KEYS)
    ):
        raise CheckpointError(
            f"{path} is not a metacl meta-training checkpoint of format "
            f"{_CHECKPOINT_FORMAT}; delete it or choose another output folder"
        )
    stored, current = _comparable(state["config"]), _comparable(config.to_dict())
    if stored != current:
        keys = sorted(
            k for k in set(stored) | set(current) if stored.get(k) != current.get(k)
        )
        details = ", ".join(
            f"{k}: checkpoint {stored.get(k)!r} vs now {current.get(k)!r}" for k in keys
        )
        raise CheckpointError(
            f"the checkpoint {path} belongs to another configuration ({details}); use "
            "the same configuration to resume, or another output folder"
        )
    if state["iteration"] > config.iterations:
        raise CheckpointError(
            f"the checkpoint {path} is at iteration {state['iteration']}, past "
            f"iterations = {config.iterations}; raise iterations to at least "
            f"{state['iteration']} or use another output folder"
        )
    return state


def meta_train(
    config: MetaTrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> MetaTrainResult:
    """Meta-train as ``config`` says and evaluate on held-out meta-test tasks.

    Args:
        config: The run.
        out_dir: Folder for ``checkpoint.pt`` and ``results.json``; nothing is written
            when None.
        resume: Continue from ``out_dir/checkpoint.pt`` if it exists (a fresh start if
            not). The checkpoint must come from the same configuration; ``iterations``
            may be raised to train longer (see :func:`load_checkpoint`).
        progress: Called after every meta-iteration with ``(iteration, total,
            metrics)``; ``metrics`` holds ``loss`` and, after a validation,
            ``val_loss`` (and ``val_accuracy``).

    Returns:
        The trained algorithm, the held-out numbers and the history.

    Raises:
        ConfigError: ``resume`` without ``out_dir``; validation asked for
            (``eval_every > 0``) while the task family has no meta-validation tasks.
        CheckpointError: ``out_dir`` holds a checkpoint and ``resume`` is False, the
            checkpoint is unreadable or belongs to another configuration, or another
            process is using ``out_dir``.
        TrainingError: The meta-loss or the meta-gradient became NaN or infinite.
    """
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise ConfigError("resume=True needs out_dir, the folder holding checkpoint.pt")
    with directory_lock(out):
        return _meta_train(config, out, resume, progress)


def _meta_train(
    config: MetaTrainConfig,
    out: Path | None,
    resume: bool,
    progress: Progress | None,
) -> MetaTrainResult:
    """:func:`meta_train` once its folder (if any) is locked."""
    seeds = _seeds(config.seed)
    device = torch.device(config.device)
    checkpoint_path = out / CHECKPOINT_NAME if out is not None else None
    if checkpoint_path is not None and checkpoint_path.exists() and not resume:
        raise CheckpointError(
            f"{checkpoint_path} already exists; pass resume=True (--resume) to continue "
            "that run, or choose another output folder"
        )

    # build the task family, the model and the algorithm
    family: TaskFamily = TASK_FAMILIES.build(
        config.family, config.seed, **config.family_settings
    )
    if config.eval_every and not _has_split(family, "val"):
        raise ConfigError(
            f"eval_every = {config.eval_every} asks for validation, but the task "
            "family has no meta-validation classes; set eval_every = 0 or give the "
            "validation split a share of the classes (family_settings.splits)"
        )
    model_name, model_settings = config.model, dict(config.model_settings)
    if model_name is None:
        model_name, defaults = _default_model(config.family, family.input_shape)
        model_settings = MODELS.validate(
            model_name, {**defaults, **model_settings}, where="model_settings"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds["model"])
        model: nn.Module = build_model(
            model_name, family.input_shape, family.n_outputs, **model_settings
        )
    model.to(device).train()
    loss_fn = (
        nn.functional.mse_loss
        if family.kind == "regression"
        else nn.functional.cross_entropy
    )
    algorithm: MetaAlgorithm = META_ALGORITHMS.build(
        config.algorithm, model, loss_fn, **config.algorithm_settings
    )
    algorithm.vectorize = config.vectorize
    meta = algorithm.meta_parameters()
    optimizer = torch.optim.Adam(meta.values(), lr=config.outer_lr)
    train_generator = torch.Generator().manual_seed(seeds["train"])
    start, train_loss, validation = 0, [], []

    # resume from the checkpoint, if asked and present
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, config)
        with torch.no_grad():
            for name, tensor in meta.items():
                tensor.copy_(state["meta_parameters"][name])
            for name, buffer in model.named_buffers():
                buffer.copy_(state["buffers"][name])
        optimizer.load_state_dict(state["optimizer"])
        train_generator.set_state(state["generator"])
        start = state["iteration"]
        train_loss = state["train_loss"].tolist()
        validation = list(state["validation"])
        algorithm.vmap_works = state["vmap_works"]
        logger.info("resumed from %s at iteration %d", checkpoint_path, start)
    elif resume:
        logger.info("no checkpoint in %s; starting afresh", out)

    def save_checkpoint(iteration: int) -> None:
        if checkpoint_path is None:
            return
        state = {
            "format": _CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "iteration": iteration,
            "meta_parameters": {n: t.detach().cpu() for n, t in meta.items()},
            "buffers": {n: b.detach().cpu() for n, b in model.named_buffers()},
            "optimizer": optimizer.state_dict(),
            "generator": train_generator.get_state(),
            "train_loss": torch.tensor(train_loss, dtype=torch.float64),
            "validation": validation,
            "vmap_works": algorithm.vmap_works,
        }
        _atomic_save(state, checkpoint_path)
        logger.info(
            "checkpoint at iteration %d written to %s", iteration, checkpoint_path
        )

    def evaluate(split: Split, tasks: int, seed: int) -> dict[str, Tensor]:
        return _evaluate(
            algorithm,
            family,
            tasks=tasks,
            chunk=config.meta_batch,
            seed=seed,
            split=split,
            steps=config.eval_inner_steps,
            device=device,
        )

    started = time.perf_counter()
    for iteration in range(start, config.iterations):
        # draw a meta-batch and compute the meta-gradient
        batch = family.sample(config.meta_batch, generator=train_generator).to(device)
        loss, grads = algorithm.meta_gradient(batch)
        value = float(loss)
        finite = all(bool(torch.isfinite(g).all()) for g in grads.values())
        if not (math.isfinite(value) and finite):
            what = "meta-loss" if not math.isfinite(value) else "meta-gradient"
            raise TrainingError(
                f"the {what} is not finite at iteration {iteration + 1} (loss {value}); "
                f"lower outer_lr ({config.outer_lr}) or inner_lr "
                f"({config.algorithm_settings.get('inner_lr')}), or check the data"
            )
        train_loss.append(value)

        # meta-update
        for name, tensor in meta.items():
            tensor.grad = grads[name]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        metrics = {"loss": value}

        # validate on the fixed meta-validation tasks
        done = iteration + 1
        if config.eval_every and done % config.eval_every == 0:
            per_task = evaluate("val", config.val_tasks, seeds["val"])
            means = {k: float(v.mean()) for k, v in per_task.items()}
            validation.append({"iteration": done, **means})
            metrics.update(
                {f"val_{k}": v for k, v in means.items() if "before" not in k}
            )
            logger.debug("iteration %d: validation %s", done, means)

        # checkpoint
        if config.checkpoint_every and done % config.checkpoint_every == 0:
            save_checkpoint(done)
        if progress is not None:
            progress(done, config.iterations, metrics)
    seconds = time.perf_counter() - started
    if start < config.iterations and (
        not config.checkpoint_every or config.iterations % config.checkpoint_every
    ):
        save_checkpoint(config.iterations)

    # held-out evaluation on meta-test tasks
    per_task = evaluate("test", config.test_tasks, seeds["test"])
    test = {k: summarise(v) for k, v in per_task.items()}
    result = MetaTrainResult(
        config=config,
        algorithm=algorithm,
        test=test,
        validation=validation,
        train_loss=train_loss,
        vectorize=_path_taken(algorithm),
        model={"name": model_name, "settings": _jsonable(model_settings)},
        seconds=seconds,
        out_dir=out,
    )
    if out is not None:
        path = out / RESULTS_NAME
        path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        logger.info("results written to %s", path)
    return result


def _has_split(family: TaskFamily, split: Split) -> bool:
    classes = getattr(family, "classes", None)
    return classes is None or len(classes[split]) > 0


def _path_taken(algorithm: MetaAlgorithm) -> str:
    from metacl.functional import second_order_vmap_hazards

    if algorithm.vectorize != "auto":
        return algorithm.vectorize
    if not algorithm.vmap_works:
        path = "loop"
    elif algorithm.second_order and second_order_vmap_hazards(algorithm.model):
        path = "mixed"
    else:
        path = "vmap"
    if algorithm.stacked_used:  # Note [stacked tasks]: the meta-gradients only
        return f"stacked weights (training) and {path} (evaluation)"
    return path


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))
