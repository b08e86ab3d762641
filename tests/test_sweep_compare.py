"""metacl.sweep.compare and `metacl compare`: tables of strategies x streams from the
results store, filters, CSV / Markdown export and the comparison plots."""

import csv
import math

import pytest
from scipy import stats

from metacl.cli import main
from metacl.errors import ConfigError
from metacl.sweep.compare import (
    compare,
    format_table,
    markdown,
    parse_where,
    plot_comparison,
    select,
    write_csv,
)
from metacl.sweep.store import ResultStore, RunRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(
    strategy: str,
    seed: int,
    final: list[float],
    *,
    lr: float = 0.05,
    n_experiences: int = 2,
    scenario: str = "class_incremental",
) -> RunRecord:
    """A finished two-experience run whose last row of R is ``final``."""
    config = {
        "seed": seed,
        "dataset": {"name": "digits"},
        "scenario": {"name": scenario, "n_experiences": n_experiences},
        "model": {"name": "mlp", "hidden": [16]},
        "strategy": {"name": strategy, "label": strategy},
        "optimizer": {"name": "sgd", "lr": lr},
    }
    first = [0.9, 0.1]
    return RunRecord(
        run_id=f"{strategy}-{seed}-{lr}-{n_experiences}-{scenario}",
        config=config,
        label=strategy,
        strategy=strategy,
        seed=seed,
        stream=f"{scenario}(digits)",
        R=[first, final],
        b=[0.1, 0.1],
    )


def t_interval(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def test_cells_hold_mean_and_student_t_interval_over_seeds():
    finals = {0: [0.5, 0.9], 1: [0.3, 0.8], 2: [0.4, 1.0]}
    records = [record("ewc", s, f) for s, f in finals.items()]
    records.append(record("naive", 0, [0.0, 1.0]))
    table = compare(records)

    assert table.rows == ["ewc", "naive"]
    assert table.columns == ["class_incremental(digits)"]
    acc = [sum(f) / 2 for f in finals.values()]
    view = table.cell("ewc", "class_incremental(digits)", "acc")
    assert view.n == 3
    assert view.mean == pytest.approx(sum(acc) / 3)
    assert view.ci95 == pytest.approx(t_interval(acc))
    bwt = [f[0] - 0.9 for f in finals.values()]  # R[1, 0] - R[0, 0]
    assert table.cell("ewc", "class_incremental(digits)", "bwt").mean == pytest.approx(
        sum(bwt) / 3
    )
    # one seed: a mean and no interval
    single = table.cell("naive", "class_incremental(digits)", "acc")
    assert single.mean == pytest.approx(0.5) and math.isnan(single.ci95)


def test_rows_and_columns_are_titled_by_what_tells_them_apart():
    records = [
        record("naive", 0, [0.2, 0.9], lr=0.05),
        record("naive", 0, [0.4, 0.9], lr=0.5),
        record("naive", 0, [0.6, 0.9], n_experiences=5),
        record("naive", 0, [0.1, 0.9], scenario="task_incremental"),
    ]
    table = compare(records)
    assert table.rows == ["naive [optimizer.lr=0.05]", "naive [optimizer.lr=0.5]"]
    assert table.columns == [
        "class_incremental(digits) [scenario.n_experiences=2]",
        "class_incremental(digits) [scenario.n_experiences=5]",
        "task_incremental(digits)",
    ]
    cell = table.cell(
        "naive [optimizer.lr=0.5]",
        "class_incremental(digits) [scenario.n_experiences=2]",
        "acc",
    )
    assert cell.mean == pytest.approx(0.65)
    text = format_table(table, "acc")
    assert "0.6500 (n=1)" in text and "task_incremental(digits)" in text
    # no run of lr 0.5 on the task-incremental stream: an empty cell
    assert text.splitlines()[3].rstrip().endswith("-")


def test_filters_on_any_configuration_key():
    records = [
        record("naive", 0, [0.2, 0.9], lr=0.05),
        record("naive", 1, [0.2, 0.9], lr=0.1),
        record("ewc", 0, [0.4, 0.9], lr=0.05),
    ]
    chosen = select(records, parse_where(["strategy.name=naive"]))
    assert [r.run_id for r in chosen] == [records[0].run_id, records[1].run_id]
    chosen = select(records, parse_where(["optimizer.lr!=0.1", "seed=0"]))
    assert {r.strategy for r in chosen} == {"naive", "ewc"} and len(chosen) == 2
    # values are read as YAML: a list matches a list
    assert len(select(records, parse_where(["model.hidden=[16]"]))) == 3

    with pytest.raises(ConfigError, match="'optimiser.lr': no run has this key.*"):
        select(records, parse_where(["optimiser.lr=0.1"]))
    with pytest.raises(ConfigError, match="KEY=VALUE or KEY!=VALUE"):
        parse_where(["strategy.name"])
    with pytest.raises(ConfigError, match="no finished runs to compare"):
        compare(select(records, parse_where(["strategy.name=si"])))


def test_csv_and_markdown_carry_every_cell(tmp_path):
    records = [record("ewc", s, [0.3 + 0.1 * s, 0.9]) for s in range(3)]
    acc_values = [0.6, 0.65, 0.7]  # (R[1, 0] + R[1, 1]) / 2 per seed
    table = compare(records)
    path = write_csv(table, tmp_path / "deep" / "table.csv")
    rows = list(csv.DictReader(path.open()))
    acc = next(r for r in rows if r["number"] == "acc")
    assert (
        acc["strategy"] == "ewc" and acc["n_seeds"] == "3" and acc["seeds"] == "0 1 2"
    )
    assert float(acc["mean"]) == pytest.approx(0.65)
    assert float(acc["ci95"]) == pytest.approx(t_interval(acc_values))
    assert {r["number"] for r in rows} >= {"acc", "la", "bwt", "fwt", "forgetting"}

    text = markdown(table, ["acc", "forgetting"])
    assert "### ACC" in text and "### Forgetting" in text
    assert f"| ewc | 0.6500 ± {t_interval(acc_values):.4f} (n=3) |" in text


def test_plots_are_written_as_images(tmp_path):
    records = [
        record(s, seed, [0.2 + 0.1 * seed, 0.9])
        for s in ("naive", "ewc")
        for seed in (0, 1)
    ]
    records.append(
        RunRecord(
            run_id="joint-0",
            config={
                **records[0].config,
                "strategy": {"name": "joint", "label": "joint"},
            },
            label="joint",
            strategy="joint",
            seed=0,
            stream="class_incremental(digits)",
            R=[[0.95, 0.97]],
            b=[0.1, 0.1],
        )
    )
    paths = plot_comparison(compare(records), tmp_path / "plots")
    assert [p.name for p in paths] == ["acc_bwt.png", "accuracy_over_experiences.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_cli_compare_reads_the_store_filters_and_exports(tmp_path, capsys):
    store_path = tmp_path / "results.sqlite"
    with ResultStore(store_path) as store:
        for seed in range(3):
            store.record(record("naive", seed, [0.1, 0.9]), sweep="grid-a")
            store.record(record("ewc", seed, [0.5 + 0.05 * seed, 0.9]), sweep="grid-a")
    out = tmp_path / "out"
    code = main(
        [
            "compare",
            "--store",
            str(store_path),
            "--where",
            "strategy.name=ewc",
            "--numbers",
            "acc,forgetting",
            "--csv",
            str(out / "t.csv"),
            "--markdown",
            str(out / "t.md"),
            "--plots",
            str(out / "plots"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"3 runs from {store_path}")
    assert "ACC \\ stream" in printed and "Forgetting \\ stream" in printed
    assert "ewc" in printed and "naive" not in printed
    assert (out / "t.csv").is_file() and "### Forgetting" in (out / "t.md").read_text()
    assert (out / "plots" / "acc_bwt.png").is_file()

    assert main(["compare", "--store", str(store_path), "--sweep", "grid-a"]) == 0
    assert "6 runs from" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--numbers", "acc,speed"], "choose among acc, la, bwt"),
        (["--sweep", "nope"], "sweeps there: grid-a"),
        (["--where", "seed"], "KEY=VALUE"),
    ],
)
def test_cli_compare_bad_input_is_a_clear_error(tmp_path, capsys, args, expected):
    store_path = tmp_path / "results.sqlite"
    with ResultStore(store_path) as store:
        store.record(record("naive", 0, [0.1, 0.9]), sweep="grid-a")
    assert main(["compare", "--store", str(store_path), *args]) == 2
    assert expected in capsys.readouterr().err


def test_cli_compare_without_a_store_says_how_to_make_one(tmp_path, capsys):
    missing = tmp_path / "none.sqlite"
    assert main(["compare", "--store", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "metacl sweep" in err
    assert not missing.exists()
