import pytest

from metacl.config import apply_overrides, config_hash, load_config_file, resolve_config
from metacl.errors import ConfigError


def test_defaults_are_filled_in():
    cfg = resolve_config({"strategy": {"name": "naive"}})
    assert cfg.strategies == [{"name": "naive", "label": "naive"}]
    assert cfg.train["epochs"] >= 1 and cfg.optimizer["name"] == "sgd"
    assert cfg.dataset["name"] == "digits"


def test_unknown_section_lists_valid_sections():
    with pytest.raises(
        ConfigError, match="unknown section.*'trian'.*valid sections: name, seeds"
    ):
        resolve_config({"trian": {}})


def test_unknown_key_lists_valid_keys():
    with pytest.raises(
        ConfigError, match="'epoch'.*section 'train'; valid keys: epochs, batch_size"
    ):
        resolve_config({"train": {"epoch": 2}})
    with pytest.raises(ConfigError, match="'n_exp'.*valid keys: n_experiences"):
        resolve_config({"scenario": {"name": "class_incremental", "n_exp": 2}})


def test_unknown_names_list_choices():
    with pytest.raises(
        ConfigError, match="unknown strategy 'ewk'; valid choices: .*naive"
    ):
        resolve_config({"strategy": "ewk"})
    with pytest.raises(
        ConfigError, match="unknown dataset 'mnits'; valid choices: .*fashion_mnist"
    ):
        resolve_config({"dataset": {"name": "mnits"}})
    with pytest.raises(ConfigError, match="'adamw'.*'sgd' \\| 'adam'"):
        resolve_config({"optimizer": {"name": "adamw"}})


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="train.batch_size = 0 must be >= 1"):
        resolve_config({"train": {"batch_size": 0}})
    with pytest.raises(ConfigError, match="optimizer.lr = -1.0 must be > 0"):
        resolve_config({"optimizer": {"lr": -1}})
    with pytest.raises(
        ConfigError, match="train.epochs = 'two' is invalid; expected int"
    ):
        resolve_config({"train": {"epochs": "two"}})
    with pytest.raises(ConfigError, match="distinct"):
        resolve_config({"seeds": [1, 1]})
    with pytest.raises(ConfigError, match="labelled 'naive'"):
        resolve_config({"strategies": ["naive", "naive"]})


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), -float("inf"), 10**400],
    ids=["nan", "inf", "-inf", "1e400"],
)
def test_float_settings_must_be_finite(value):
    # NaN slips through every range check (nan < 0 is false) and would only show up
    # as a NaN loss in the middle of a run
    with pytest.raises(
        ConfigError, match=r"strategies\[0\]\.strength = .* expected finite float"
    ):
        resolve_config({"strategy": {"name": "si", "strength": value}})
    with pytest.raises(ConfigError, match="optimizer.lr = .* expected finite float"):
        resolve_config({"optimizer": {"lr": value}})
    assert resolve_config({"optimizer": {"lr": 1}}).optimizer["lr"] == 1.0


def test_overrides_parse_values_and_index_lists():
    data = {
        "strategies": [{"name": "naive"}, {"name": "joint"}],
        "train": {"epochs": 1},
    }
    out = apply_overrides(
        data, ["train.epochs=4", "strategies.1.label=upper", "seeds=[1, 2]"]
    )
    assert out["train"]["epochs"] == 4 and out["seeds"] == [1, 2]
    assert out["strategies"][1]["label"] == "upper"
    assert data["train"]["epochs"] == 1  # the input is not modified
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(data, ["train.epochs"])
    with pytest.raises(ConfigError, match="index below 2"):
        apply_overrides(data, ["strategies.5.name=naive"])


def test_yaml_and_toml_files(tmp_path):
    (tmp_path / "a.yaml").write_text("seeds: [5]\nstrategy: {name: naive}\n")
    (tmp_path / "b.toml").write_text('seeds = [5]\n[strategy]\nname = "naive"\n')
    a = resolve_config(load_config_file(tmp_path / "a.yaml"))
    b = resolve_config(load_config_file(tmp_path / "b.toml"))
    assert a.to_dict() == b.to_dict()
    (tmp_path / "c.yaml").write_text("seeds: [5\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config_file(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(ConfigError, match=".yaml, .yml or .toml"):
        load_config_file(tmp_path / "d.json")


def test_hash_changes_with_what_matters_only():
    cfg = resolve_config({"strategy": "naive", "train": {"epochs": 2}})
    base = config_hash(cfg.single_run(0, 0))
    assert config_hash(cfg.single_run(0, 1)) != base
    other = resolve_config(
        {"strategy": "naive", "train": {"epochs": 2, "eval_batch_size": 7}}
    )
    assert config_hash(other.single_run(0, 0)) == base
    lr = resolve_config(
        {"strategy": "naive", "train": {"epochs": 2}, "optimizer": {"lr": 0.5}}
    )
    assert config_hash(lr.single_run(0, 0)) != base


def test_classes_per_experience_sets_the_number_of_experiences():
    split = {"name": "class_incremental", "classes_per_experience": [4, 3, 3]}
    assert resolve_config({"scenario": split}).scenario["n_experiences"] == 3
    agreeing = resolve_config({"scenario": {**split, "n_experiences": 3}})
    assert agreeing.scenario["n_experiences"] == 3
    with pytest.raises(
        ConfigError,
        match=r"n_experiences = 2 but .*\[4, 3, 3\] makes 3 experiences; set "
        "n_experiences to 3",
    ):
        resolve_config({"scenario": {**split, "n_experiences": 2}})
