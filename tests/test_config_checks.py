"""The shared checks (config_checks.py) and the flags generated from dataclass fields."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
import pytest

from lm_eval_approx.config_checks import (
    add_field_arguments,
    check_choice,
    check_int,
    check_number,
    check_text,
    field_values,
    help_field,
    is_int,
)
from lm_eval_approx.errors import ConfigError, SelectionError
from lm_eval_approx.leaderboard.checks import LeaderboardConfigError, field_error


@pytest.mark.parametrize("value, ok", [(0, True), (7, True), (True, False), (False, False), (1.0, False),
                                       ("1", False), (None, False), (np.int64(3), False)])
def test_is_int_rejects_bools_floats_and_numpy_unless_asked(value, ok):
    assert is_int(value) is ok
    assert is_int(np.int64(3), (int, np.integer))


@pytest.mark.parametrize("value, minimum, maximum, ok", [
    (1, 1, None, True), (0, 1, None, False), (10**30, 0, None, True), (-5, None, None, True),
    (3, 1, 3, True), (4, 1, 3, False), (True, 0, None, False), (2.0, 0, None, False), ("3", 0, None, False),
])
def test_check_int(value, minimum, maximum, ok):
    if ok:
        assert check_int("n", value, minimum, maximum) == value
    else:
        with pytest.raises(ConfigError) as info:
            check_int("n", value, minimum, maximum)
        assert (info.value.field, info.value.value) == ("n", value)


def test_check_int_messages_name_the_range_and_none():
    with pytest.raises(ConfigError, match="an integer ≥ 1 or None"):
        check_int("limit", 0, minimum=1, optional=True)
    with pytest.raises(ConfigError, match=r"an integer in 1\.\.4"):
        check_int("checkpoint", 5, 1, 4)
    with pytest.raises(ConfigError, match="a positive integer"):
        check_int("k", -1, minimum=1, accepted="a positive integer")
    assert check_int("limit", None, minimum=1, optional=True) is None
    with pytest.raises(ConfigError):
        check_int("limit", None, minimum=1)


@pytest.mark.parametrize("value, ok", [(0.5, True), (1, True), (0.0, False), (1.5, False), (math.nan, False),
                                       (math.inf, False), (True, False), ("0.5", False), (10**400, False)])
def test_check_number_in_a_half_open_interval(value, ok):
    if ok:
        assert check_number("x", value, 0.0, 1.0, low_open=True) == value
    else:
        with pytest.raises(ConfigError, match=r"a finite number in \(0, 1\]"):
            check_number("x", value, 0.0, 1.0, low_open=True)


def test_check_choice_and_text():
    assert check_choice("projection", "dense", {"kronecker": 1, "dense": 2}) == "dense"
    with pytest.raises(ConfigError, match="one of kronecker, dense"):
        check_choice("projection", ["dense"], ("kronecker", "dense"))
    assert check_text("base", "model") == "model"
    with pytest.raises(ConfigError, match="a non-empty string"):
        check_text("base", "  ")


def test_the_error_factory_keeps_each_callers_error_class():
    with pytest.raises(LeaderboardConfigError) as info:
        check_int("budgets[1]", 0, minimum=1, error=field_error)
    assert info.value.field == "budgets[1]"
    with pytest.raises(SelectionError, match="row 3: 'order'"):
        check_int("order", -1, minimum=0, error=lambda f, v, a: SelectionError(f"row 3: {f!r} must be {a}, got {v!r}"))


@dataclass
class _Options:
    name: str = help_field("a name", "x")
    size: int = help_field("how many (100% of them)", 3)
    ratio: float = help_field("a ratio", 0.5)
    limit: int | None = help_field("at most this many", None)
    kind: str = help_field("which kind", "a", choices=("a", "b"))
    modules: tuple[str, ...] = help_field("modules", ("q", "v"))


def test_typed_flags_take_default_type_choices_and_help_from_the_fields():
    parser = argparse.ArgumentParser()
    add_field_arguments(parser, _Options, flags={"limit": "--max"}, required=("name",))
    actions = {a.dest: a for a in parser._actions}
    assert actions["name"].required and actions["name"].help == "a name"
    assert (actions["size"].type, actions["size"].default, actions["size"].metavar) == (int, 3, "SIZE")
    assert actions["limit"].option_strings == ["--max"] and actions["limit"].metavar == "MAX"
    assert actions["kind"].choices == ("a", "b") and actions["ratio"].type is float
    assert "(default: q,v)" in actions["modules"].help
    parser.format_help()  # a '%' in a field's help does not break argparse's formatting
    args = parser.parse_args(["--name", "n", "--size", "4", "--max", "9"])
    assert field_values(args, _Options) == {"name": "n", "size": 4, "ratio": 0.5, "limit": 9, "kind": "a",
                                             "modules": ("q", "v")}
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "n", "--kind", "c"])


def test_string_flags_default_to_none_for_merging():
    parser = argparse.ArgumentParser()
    add_field_arguments(parser, _Options, ("size", "kind"), dest_prefix="opt_", as_strings=True)
    args = parser.parse_args(["--kind", "anything"])
    assert field_values(args, _Options, ("size", "kind", "ratio"), dest_prefix="opt_") == {
        "size": None, "kind": "anything", "ratio": None}


def test_features_flags_are_the_feature_config_fields():
    from lm_eval_approx.commands.features import FLAG_FIELDS, add_parser
    from lm_eval_approx.features.config import FeatureConfig

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    features = parser._subparsers._group_actions[0].choices["features"]
    args = features.parse_args(["--base", "b", "--finetuned", "f", "--task", "approx_agnews", "--corpus", "c",
                                "--out", "o", "--limit", "5"])
    config = FeatureConfig(**field_values(args, FeatureConfig, FLAG_FIELDS))
    assert config.corpus_limit == 5 and config == FeatureConfig(base="b", finetuned="f", corpus="c", corpus_limit=5)
