"""Tests of metacl.meta.cli: the ``metacl meta-train`` subcommand."""

from __future__ import annotations

import json

from metacl.cli import build_parser, main
from metacl.meta.cli import build_config

SMALL = [
    "--iterations",
    "3",
    "--meta-batch",
    "2",
    "--val-tasks",
    "2",
    "--test-tasks",
    "6",
    "--eval-every",
    "0",
    "--checkpoint-every",
    "2",
    "--quiet",
]


def test_meta_train_on_sine_prints_held_out_numbers_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["meta-train", *SMALL, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "maml on sine" in text
    assert "meta-test: 6 held-out tasks" in text and "±" in text
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["iterations"] == 3 and results["test"]["loss"]["n"] == 6

    # the same command again resumes from the checkpoint; more iterations go on from it
    assert main(["meta-train", *SMALL, "--out", str(out), "--iterations", "4"]) == 0
    assert "(resuming)" in capsys.readouterr().out
    assert len(json.loads((out / "results.json").read_text())["train_loss"]) == 4

    # --restart starts afresh
    assert main(["meta-train", *SMALL, "--out", str(out), "--restart"]) == 0
    assert "(resuming)" not in capsys.readouterr().out


def test_meta_train_on_episodes_of_a_dataset_reports_accuracy(tmp_path, capsys):
    argv = [
        "meta-train",
        *SMALL,
        "--family",
        "episodes",
        "--dataset",
        "digits",
        "--ways",
        "2",
        "--shots",
        "1",
        "--query-shots",
        "2",
        "--inner-lr",
        "0.4",
        "--first-order",
        "--set",
        "family_settings.splits=[6,0,4]",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "%" in text and "model cnn" in text


def test_flags_and_overrides_reach_the_configuration():
    parser = build_parser()
    args = parser.parse_args(
        [
            "meta-train",
            "--algorithm",
            "anil",
            "--inner-steps",
            "3",
            "--first-order",
            "--set",
            "algorithm_settings.inner_lr=0.2",
            "--set",
            "family_settings.shots=5",
        ]
    )
    config = build_config(args)
    assert config.algorithm == "anil"
    assert config.algorithm_settings["inner_steps"] == 3
    assert config.algorithm_settings["inner_lr"] == 0.2
    assert config.algorithm_settings["first_order"] is True
    assert config.family_settings["shots"] == 5
    assert config.meta_batch == 25  # from the built-in meta_sine.yaml


def test_bad_input_gives_a_clear_error_and_status_2(tmp_path, capsys):
    assert main(["meta-train", *SMALL, "--algorithm", "mamll"]) == 2
    assert "unknown meta algorithm 'mamll'; valid choices" in capsys.readouterr().err
    assert main(["meta-train", *SMALL, "--set", "epochs=3"]) == 2
    assert "unknown meta-training key(s) ['epochs']" in capsys.readouterr().err
    assert main(["meta-train", *SMALL, "--algorithm", "reptile", "--first-order"]) == 2
    assert "reptile is first order already" in capsys.readouterr().err
    missing = tmp_path / "nope.yaml"
    assert main(["meta-train", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err

    # a corrupt checkpoint is named, not a traceback
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["meta-train", *SMALL, "--out", str(out)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_list_shows_the_meta_learning_algorithms(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert (
        "meta-learning algorithms:" in text and "metasgd" in text and "omniglot" in text
    )
