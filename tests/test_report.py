from metacl.config import resolve_config
from metacl.experiment import load_results, run_experiment
from metacl.report import format_table, markdown_table, write_report


def make_run(directory, name, strategies):
    cfg = resolve_config(
        {
            "name": name,
            "seeds": [0, 1],
            "scenario": {"name": "class_incremental", "n_experiences": 5},
            "model": {"name": "mlp", "hidden": [16]},
            "strategies": [{"name": s} for s in strategies],
            "train": {"epochs": 1, "batch_size": 32, "threads": 1},
        }
    )
    run_experiment(cfg, directory=directory / name)
    return directory / name


def test_tables_show_mean_and_interval_per_strategy(tmp_path):
    result = load_results(make_run(tmp_path, "a", ["naive", "joint"]))
    text = format_table([result])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["run", "strategy", "seeds", "ACC"]
    naive = next(line for line in lines if " naive " in line)
    acc = result.summary["naive"]["acc"]
    assert f"{acc['mean']:.4f} ± {acc['ci95']:.4f}" in naive
    md = markdown_table([result])
    assert md.count("\n") == 3  # header, rule, two strategies
    assert "| a | joint | 2 |" in md


def test_report_of_one_run_goes_into_it(tmp_path):
    run = make_run(tmp_path, "a", ["naive"])
    path = write_report([run])
    assert path == run / "report.md"
    md = path.read_text()
    for plot in ("heatmap", "over_time", "average_accuracy"):
        assert plot in md
    for link in [line for line in md.splitlines() if line.startswith("![")]:
        target = run / link.split("(")[1].rstrip(")")
        assert target.is_file() and target.read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in (run / "report.html").read_text()


def test_report_of_several_runs_compares_them(tmp_path):
    a = make_run(tmp_path, "a", ["naive"])
    b = make_run(tmp_path, "b", ["joint"])
    path = write_report([a, b], tmp_path / "cmp")
    md = path.read_text()
    assert md.startswith("# metacl comparison")
    assert "| a | naive |" in md and "| b | joint |" in md
    assert "## a" in md and "## b" in md
