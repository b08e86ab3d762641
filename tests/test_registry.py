from typing import Literal

import pytest

from metacl.errors import ConfigError
from metacl.registry import Registry, check_value


def make_registry() -> Registry:
    reg = Registry("widget")

    @reg.register("gear", summary="a gear")
    def gear(
        size: int,
        *,
        teeth: int = 10,
        ratio: float = 1.0,
        finish: Literal["matte", "gloss"] = "matte",
        tags: list[str] | None = None,
    ):
        return (size, teeth, ratio, finish, tags)

    return reg


def test_build_passes_context_and_settings():
    assert make_registry().build("gear", 3, teeth=12) == (3, 12, 1.0, "matte", None)


def test_unknown_name_lists_choices():
    with pytest.raises(ConfigError, match="unknown widget 'cog'; valid choices: gear"):
        make_registry().get("cog")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(
        ConfigError, match="'teth'.*valid keys: teeth, ratio, finish, tags"
    ):
        make_registry().validate("gear", {"teth": 3})


def test_bad_literal_lists_choices():
    with pytest.raises(ConfigError, match="'matte' \\| 'gloss'"):
        make_registry().validate("gear", {"finish": "shiny"})


def test_int_accepted_for_float_but_not_bool_for_int():
    assert make_registry().validate("gear", {"ratio": 2})["ratio"] == 2.0
    with pytest.raises(ConfigError, match="teeth = True"):
        make_registry().validate("gear", {"teeth": True})


def test_nested_list_and_optional():
    assert check_value(["a", "b"], list[str] | None, "x") == ["a", "b"]
    assert check_value(None, list[str] | None, "x") is None
    with pytest.raises(ConfigError):
        check_value(["a", 1], list[str], "x")


def test_register_twice_is_refused():
    reg = make_registry()
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("gear")(lambda: None)
