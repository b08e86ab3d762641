import json

import pytest

from metacl.cli import main

SMALL = [
    "--set", "train.epochs=1",
    "--set", "model.hidden=[16]",
    "--set", "train.threads=1",
    "--seeds", "0,1",
    "--quiet",
]  # fmt: skip


def test_list_names_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "fashion_mnist", "mnist1d", "class_incremental",
                 "permuted", "mlp", "cnn", "naive", "joint"):  # fmt: skip
        assert name in out


def test_run_writes_results_table_report_and_plots(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["run", *SMALL, "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "naive" in printed and "joint" in printed and "ACC" in printed
    assert str(out_dir) in printed

    summary = json.loads((out_dir / "summary.json").read_text())
    assert set(summary) == {"naive", "joint"}
    assert summary["naive"]["seeds"] == [0, 1]
    # joint training on digits beats fine-tuning even after one epoch
    assert summary["joint"]["acc"]["mean"] > summary["naive"]["acc"]["mean"]
    for name in ("config.yaml", "environment.json", "run.log", "summary.csv",
                 "report.md", "report.html"):  # fmt: skip
        assert (out_dir / name).is_file(), name
    pngs = sorted((out_dir / "plots").rglob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_second_run_in_same_directory_reuses_finished_results(tmp_path, capsys):
    out_dir = tmp_path / "run"
    args = [
        "run",
        *SMALL,
        "--strategies",
        "naive",
        "--out",
        str(out_dir),
        "--no-report",
    ]
    assert main(args) == 0
    first = json.loads((out_dir / "summary.json").read_text())
    assert main(args) == 0
    assert json.loads((out_dir / "summary.json").read_text()) == first
    assert "already finished" in (out_dir / "run.log").read_text()


def test_run_from_a_toml_file(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(
        'name = "toml-run"\nseeds = [3]\n[strategy]\nname = "naive"\n'
        '[train]\nepochs = 1\nthreads = 1\n[model]\nname = "mlp"\nhidden = [8]\n'
    )
    out_dir = tmp_path / "out"
    assert (
        main(["run", str(config), "--out", str(out_dir), "--quiet", "--no-report"]) == 0
    )
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["naive"]["seeds"] == [3]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "train.epoch=3"], "epochs"),  # unknown key: lists the valid ones
        (["--set", "scenario.name=sideways"], "class_incremental"),
        (["--strategies", "nope"], "naive"),
        (["--seeds", "a,b"], "integers"),
        (["--set", "optimizer.lr=-1"], "optimizer.lr"),
    ],
)
def test_bad_input_is_a_clear_error_before_training(tmp_path, capsys, args, expected):
    out_dir = tmp_path / "run"
    assert main(["run", *args, "--out", str(out_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metacl: error:") and expected in err
    assert not (out_dir / "summary.json").exists()


def test_missing_config_file_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["run", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_report_of_a_directory_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_report_rebuilds_one_run_and_compares_two(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", *SMALL, "--strategies", "naive", "--out", str(a)]) == 0
    lr = ["--set", "optimizer.lr=0.2"]
    assert main(["run", *SMALL, "--strategies", "naive", *lr, "--out", str(b)]) == 0
    (a / "report.md").unlink()
    capsys.readouterr()

    assert main(["report", str(a)]) == 0
    assert str(a / "report.md") in capsys.readouterr().out
    assert "naive" in (a / "report.md").read_text()

    cmp = tmp_path / "cmp"
    assert main(["report", str(a), str(b), "--out", str(cmp)]) == 0
    assert str(cmp) in capsys.readouterr().out
    text = (cmp / "report.md").read_text()
    # both runs are in the comparison, each with its own ACC
    for directory in (a, b):
        acc = json.loads((directory / "summary.json").read_text())["naive"]["acc"]
        assert f"{acc['mean']:.4f}" in text
    assert (cmp / "report.html").is_file()
