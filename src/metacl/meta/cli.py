"""``metacl meta-train``: meta-train an algorithm of the MAML family from the command line.

The run is a :class:`~metacl.meta.train.MetaTrainConfig`, read from a YAML or TOML file
of its keys (default: the built-in ``configs/meta_sine.yaml``, MAML on sine-wave
regression), then changed by the flags, then by ``--set key=value`` overrides (dotted
keys reach into the settings: ``--set family_settings.splits=[5,0,5]``). With ``--out``
the run writes ``checkpoint.pt`` and ``results.json`` there; running the same command
again resumes from the checkpoint (``--restart`` starts afresh).

Example:
    metacl meta-train --iterations 2000 --out runs/maml-sine
    metacl meta-train --family episodes --dataset fashion_mnist --ways 5 --shots 1 \\
        --set family_settings.splits=[5,0,5] --eval-every 0 --out runs/maml-fmnist
"""

from __future__ import annotations

import argparse
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from metacl.errors import ConfigError

__all__ = ["add_parser", "run", "build_config", "format_results"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "meta_sine.yaml"

# flag -> (configuration key, where in it); None means a top-level key
_TOP_LEVEL = (
    "family",
    "algorithm",
    "model",
    "iterations",
    "meta_batch",
    "outer_lr",
    "eval_every",
    "val_tasks",
    "test_tasks",
    "eval_inner_steps",
    "checkpoint_every",
    "vectorize",
    "seed",
    "device",
)
_FAMILY_FLAGS = ("dataset", "ways", "shots", "query_shots")
_ALGORITHM_FLAGS = ("inner_lr", "inner_steps")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``meta-train`` subcommand to the ``metacl`` command line."""
    parser = subparsers.add_parser(
        "meta-train",
        help="meta-train MAML, FOMAML, Reptile, Meta-SGD or ANIL",
        description=(
            "Meta-train on sine-wave regression or N-way K-shot episodes of a dataset, "
            "then report the post-adaptation loss (and accuracy) on held-out tasks "
            "with 95% confidence intervals."
        ),
    )
    parser.add_argument(
        "config",
        nargs="?",
        help=f"YAML or TOML file of meta-training keys (default: built-in {DEFAULT_CONFIG})",
    )
    what = parser.add_argument_group("what to learn")
    what.add_argument("--family", help="task family: sine or episodes")
    what.add_argument("--dataset", help="dataset of the episodes (e.g. fashion_mnist)")
    what.add_argument("--ways", type=int, help="classes per episode (N)")
    what.add_argument(
        "--shots", type=int, help="support examples per class or wave (K)"
    )
    what.add_argument(
        "--query-shots", type=int, help="query examples per class or wave"
    )
    what.add_argument("--data-dir", help="folder holding dataset files (episodes)")
    how = parser.add_argument_group("how")
    how.add_argument("--algorithm", help="maml, fomaml, reptile, metasgd or anil")
    how.add_argument("--inner-lr", type=float, help="inner step size alpha")
    how.add_argument(
        "--inner-steps",
        type=int,
        help="inner steps per task; second order keeps every step's graph, so its "
        "memory grows linearly with this",
    )
    how.add_argument(
        "--first-order",
        action="store_true",
        default=None,
        help="drop second-order terms (maml, metasgd, anil): no Hessian-vector "
        "products, one step's graph in memory",
    )
    how.add_argument("--model", help="registered model (default: by task family)")
    how.add_argument("--iterations", type=int, help="meta-iterations")
    how.add_argument("--meta-batch", type=int, help="tasks per meta-iteration")
    how.add_argument(
        "--outer-lr", type=float, help="Adam learning rate of the meta-update"
    )
    how.add_argument(
        "--eval-every", type=int, help="validate every N iterations (0: never)"
    )
    how.add_argument("--val-tasks", type=int, help="meta-validation tasks")
    how.add_argument(
        "--test-tasks", type=int, help="meta-test tasks of the final numbers"
    )
    how.add_argument("--eval-inner-steps", type=int, help="inner steps when evaluating")
    how.add_argument(
        "--checkpoint-every", type=int, help="checkpoint every N iterations"
    )
    how.add_argument(
        "--vectorize",
        choices=("auto", "vmap", "loop"),
        help="tasks in parallel or in a loop",
    )
    how.add_argument("--seed", type=int, help="fixes class split, model and tasks")
    how.add_argument("--device", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set algorithm_settings.inner_lr=0.4",
    )
    parser.add_argument("--out", help="folder for checkpoint.pt and results.json")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="ignore a checkpoint in --out, start afresh",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
    return parser


def _default_data() -> dict[str, Any]:
    text = resources.files("metacl").joinpath(f"configs/{DEFAULT_CONFIG}").read_text()
    return yaml.safe_load(text) or {}


def build_config(args: argparse.Namespace):
    """The :class:`~metacl.meta.train.MetaTrainConfig` the parsed arguments describe.

    Raises:
        ConfigError: An unreadable file, an unknown key or a bad value.
    """
    from metacl.config import apply_overrides, load_config_file
    from metacl.meta.train import MetaTrainConfig

    data = load_config_file(args.config) if args.config else _default_data()
    for key in ("family_settings", "algorithm_settings", "model_settings"):
        value = data.get(key) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of settings, got {value!r}")
        data[key] = dict(value)

    # a new family starts from that family's settings, not the file's
    if args.family is not None and args.family != data.get("family"):
        data["family"] = args.family
        data["family_settings"] = {}
        if data.get("model") is not None:
            data["model"], data["model_settings"] = None, {}
    for key in _TOP_LEVEL:
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    for key in _FAMILY_FLAGS:
        value = getattr(args, key)
        if value is not None:
            data["family_settings"][key] = value
    if args.data_dir:
        data["family_settings"].setdefault("dataset_settings", {})
        data["family_settings"]["dataset_settings"] = {
            **(data["family_settings"]["dataset_settings"] or {}),
            "root": args.data_dir,
        }
    for key in _ALGORITHM_FLAGS:
        value = getattr(args, key)
        if value is not None:
            data["algorithm_settings"][key] = value
    if args.first_order:
        if data.get("algorithm", "maml") == "reptile":
            raise ConfigError(
                "--first-order: reptile is first order already; drop the flag"
            )
        data["algorithm_settings"]["first_order"] = True
    data = apply_overrides(data, list(args.overrides))
    if not isinstance(data, dict):
        raise ConfigError("the meta-training configuration must be a mapping")
    return MetaTrainConfig.from_dict(data)


def _format_stat(stat: dict[str, float | None], *, percent: bool) -> str:
    scale = 100.0 if percent else 1.0
    unit = "%" if percent else ""
    mean = stat["mean"] * scale
    if stat["ci95"] is None:
        return f"{mean:.4g}{unit}"
    return f"{mean:.4g}{unit} ± {stat['ci95'] * scale:.2g}{unit}"


def format_results(result) -> str:
    """The held-out numbers of a :class:`~metacl.meta.train.MetaTrainResult` as text."""
    config = result.config
    steps = config.eval_inner_steps
    if steps is None:
        steps = config.algorithm_settings.get("inner_steps", 0)
    n = result.test["loss"]["n"]
    rows = [
        ("before adaptation", "loss_before", "accuracy_before"),
        (f"after {steps} inner step{'s' if steps != 1 else ''}", "loss", "accuracy"),
    ]
    classification = "accuracy" in result.test
    loss_name = "cross-entropy" if classification else "MSE"
    lines = [f"meta-test: {n} held-out tasks, mean ± 95% CI half-width"]
    header = f"  {'':<22} {loss_name:>20}"
    if classification:
        header += f" {'accuracy':>20}"
    lines.append(header)
    for label, loss_key, accuracy_key in rows:
        line = f"  {label:<22} {_format_stat(result.test[loss_key], percent=False):>20}"
        if classification:
            line += f" {_format_stat(result.test[accuracy_key], percent=True):>20}"
        lines.append(line)
    return "\n".join(lines)


class _Bar:
    """A tqdm bar over meta-iterations, as :func:`meta_train`'s ``progress``."""

    def __init__(self, total: int, initial: int = 0) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            initial=initial,
            unit="it",
            desc="meta-train",
            dynamic_ncols=True,
        )
        self._last = initial

    def __call__(self, iteration: int, total: int, metrics: dict[str, float]) -> None:
        self._bar.update(iteration - self._last)
        self._last = iteration
        shown = {k: f"{v:.4g}" for k, v in metrics.items()}
        self._bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self._bar.close()


def run(args: argparse.Namespace) -> int:
    """Run ``metacl meta-train`` with parsed arguments; print the held-out numbers."""
    from metacl.meta.train import CHECKPOINT_NAME, RESULTS_NAME, meta_train

    config = build_config(args)
    out = Path(args.out) if args.out else None
    if out is not None and args.restart:
        for name in (CHECKPOINT_NAME, RESULTS_NAME):
            (out / name).unlink(missing_ok=True)
    resume = out is not None and (out / CHECKPOINT_NAME).exists()

    settings = ", ".join(
        f"{k}={v}"
        for k, v in config.family_settings.items()
        if isinstance(v, (int, str))
        and k in ("dataset", "ways", "shots", "query_shots")
    )
    print(
        f"metacl meta-train: {config.algorithm} on {config.family}({settings}), "
        f"{config.iterations} iterations of {config.meta_batch} tasks, seed {config.seed}"
        + (" (resuming)" if resume else "")
    )
    bar = None if args.quiet else _Bar(config.iterations)
    try:
        result = meta_train(
            config,
            out_dir=out,
            resume=resume,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    print(
        f"model {result.model['name']}, tasks run by {result.vectorize}, "
        f"{result.seconds:.1f} s of training"
    )
    print(format_results(result))
    if out is not None:
        print(f"results: {out / RESULTS_NAME}")
    return 0
