"""Tables, plots and the Markdown/HTML report of one or several runs.

Everything here reads the files a run wrote (``result.json`` of each seed), so a report
can be rebuilt at any time with ``metacl report DIR`` and several runs compared side by
side with ``metacl report DIR1 DIR2 ...``.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path

import numpy as np

from metacl.experiment import ExperimentResult, SeedResult, load_results

__all__ = ["format_table", "markdown_table", "plot_run", "write_report"]

logger = logging.getLogger(__name__)

COLUMNS = [
    ("acc", "ACC"),
    ("la", "LA"),
    ("bwt", "BWT"),
    ("fwt", "FWT"),
    ("forgetting", "Forgetting"),
    ("train_s", "train s"),
    ("eval_s", "eval s"),
    ("train_samples_per_s", "train samples/s"),
    ("eval_samples_per_s", "eval samples/s"),
    ("peak_rss_mb", "peak MB"),
]


def _cell(entry: dict[str, float], key: str) -> str:
    mean, half = entry["mean"], entry["ci95"]
    if math.isnan(mean):
        return "n/a"
    if key.endswith("per_s") or key == "peak_rss_mb":
        text = f"{mean:,.0f}"
        return text if math.isnan(half) else f"{text} ± {half:,.0f}"
    digits = 2 if key.endswith("_s") else 4
    text = f"{mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


def _rows(results: list[ExperimentResult]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "strategy", "seeds"] + [title for _, title in COLUMNS]
    rows = []
    for result in results:
        run = result.directory.name if result.directory is not None else "-"
        for label, entry in result.summary.items():
            rows.append(
                [run, label, str(len(entry["seeds"]))]
                + [_cell(entry[key], key) for key, _ in COLUMNS]
            )
    return header, rows


def format_table(results: list[ExperimentResult]) -> str:
    """A plain-text table of the numbers (mean ± 95% CI over seeds)."""
    header, rows = _rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def markdown_table(results: list[ExperimentResult]) -> str:
    """The same table in Markdown."""
    header, rows = _rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _mean_matrix(group: list[SeedResult]) -> np.ndarray:
    return np.mean([np.asarray(r.R, dtype=float) for r in group], axis=0)


def plot_run(result: ExperimentResult, directory: Path) -> list[Path]:
    """Draw the heatmap of R and the accuracy of each experience over time, for each
    strategy (mean over seeds), plus the average accuracy of all strategies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    labels = list(dict.fromkeys(r.label for r in result.results))
    kind = result.results[0].kind
    score = "accuracy" if kind == "classification" else "test MSE"
    for label in labels:
        group = [r for r in result.results if r.label == label]
        R = _mean_matrix(group)
        T = R.shape[1]

        # heatmap of the accuracy matrix
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * T, 1.0 + 0.6 * max(R.shape[0], 2)))
        image = ax.imshow(
            R, vmin=0.0, vmax=1.0 if kind == "classification" else None, cmap="viridis"
        )
        for i in range(R.shape[0]):
            for j in range(T):
                ax.text(
                    j,
                    i,
                    f"{R[i, j]:.2f}",
                    ha="center",
                    va="center",
                    color="white",
                    fontsize=7,
                )
        ax.set_xlabel("test experience j")
        ax.set_ylabel(
            "after training on experience i" if R.shape[0] > 1 else "after all"
        )
        ax.set_xticks(range(T))
        ax.set_yticks(range(R.shape[0]))
        ax.set_title(
            f"{label}: R[i, j] ({score}, mean of {len(group)} seeds)", fontsize=9
        )
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        path = directory / f"heatmap_{label}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

        # accuracy of each experience over time
        if R.shape[0] > 1:
            fig, ax = plt.subplots(figsize=(6, 3.6))
            for j in range(T):
                ax.plot(range(j, T), R[j:, j], marker="o", label=f"experience {j}")
            ax.set_xlabel("after training on experience")
            ax.set_ylabel(score)
            ax.set_xticks(range(T))
            ax.set_title(f"{label}: {score} of each experience over time", fontsize=9)
            ax.legend(fontsize=7, ncol=2)
            fig.tight_layout()
            path = directory / f"over_time_{label}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)

    # average accuracy on the experiences seen so far, all strategies
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label in labels:
        group = [r for r in result.results if r.label == label]
        R = _mean_matrix(group)
        T = R.shape[1]
        if R.shape[0] == 1:
            ax.axhline(
                R[0].mean(), linestyle="--", color="grey", label=f"{label} (all data)"
            )
        else:
            seen = [R[i, : i + 1].mean() for i in range(T)]
            ax.plot(range(T), seen, marker="o", label=label)
    ax.set_xlabel("after training on experience")
    ax.set_ylabel(f"mean {score} on experiences seen")
    ax.set_title("average over the experiences seen so far", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = directory / "average_accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def write_report(directories: list[str | Path], out: str | Path | None = None) -> Path:
    """Write ``report.md`` and ``report.html`` with tables and plots.

    One directory: the report goes into it. Several: a comparison goes into ``out``
    (default ``comparison`` beside the first directory).

    Returns:
        The path of the Markdown report.
    """
    results = [load_results(d) for d in directories]
    if out is None:
        out = (
            results[0].directory
            if len(results) == 1
            else results[0].directory.parent / "comparison"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for result in results:
        plots = plot_run(result, out / "plots" / result.directory.name)
        sections.append((result, plots))

    title = "metacl report" if len(results) == 1 else "metacl comparison"
    md = [f"# {title}", ""]
    md.append(
        "Numbers: mean ± 95% CI over seeds (Student's t). ACC, LA, BWT, FWT and "
        "forgetting are defined in metacl.metrics; peak MB is the process's peak "
        "resident memory."
    )
    md.append("")
    md.append(markdown_table(results))
    md.append("")
    for result, plots in sections:
        md.append(f"## {result.directory.name}")
        md.append("")
        md.append(f"Stream: {result.results[0].stream}")
        md.append("")
        for p in plots:
            md.append(f"![{p.stem}]({p.relative_to(out).as_posix()})")
            md.append("")
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;"
        "font-size:13px}img{max-width:48%;margin:4px}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    header, rows = _rows(results)
    parts.append(
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    )
    for row in rows:
        parts.append(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        )
    parts.append("</table>")
    for result, plots in sections:
        parts.append(f"<h2>{html.escape(result.directory.name)}</h2>")
        parts.append(f"<p>{html.escape(result.results[0].stream)}</p>")
        for p in plots:
            parts.append(
                f"<img src='{html.escape(p.relative_to(out).as_posix())}' alt='{p.stem}'>"
            )
    parts.append("</body></html>")
    (out / "report.html").write_text("\n".join(parts))
    logger.info("report written to %s", md_path)
    return md_path
