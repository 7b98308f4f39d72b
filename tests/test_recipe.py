"""The training recipe: defaults, JSON round trip, named errors for bad values, CLI flags, hash."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.training.recipe import (
    ALL_LINEAR,
    DEFAULT_TARGET_MODULES,
    HEAD,
    TrainingRecipe,
    add_recipe_arguments,
    recipe_from_args,
)


def test_defaults_follow_the_paper_probe():
    recipe = TrainingRecipe()
    assert recipe.method == "lora" and recipe.lora_rank == 16 and recipe.learning_rate == 2e-4
    assert recipe.target_modules == DEFAULT_TARGET_MODULES == (ALL_LINEAR, HEAD)


def test_every_field_has_help_text():
    for f in dataclasses.fields(TrainingRecipe):
        assert f.metadata.get("help"), f.name


def test_json_round_trip_keeps_every_field(tmp_path):
    recipe = TrainingRecipe(method="full", lora_rank=4, lora_alpha=8, target_modules=("q_proj", HEAD),
                            learning_rate=1e-3, warmup_ratio=0.1, batch_size=3, gradient_accumulation=2,
                            epochs=5, max_length=40, weight_decay=0.01, seed=7, validation_fraction=0.2,
                            patience=0, scheduler="cosine")
    again = TrainingRecipe.from_json(recipe.to_json())
    assert again == recipe and again.recipe_hash() == recipe.recipe_hash()
    assert TrainingRecipe.load(recipe.save(tmp_path / "recipe.json")) == recipe
    assert json.loads(recipe.to_json())["target_modules"] == ["q_proj", HEAD]


def test_hash_changes_with_any_field_and_ignores_int_float_spelling():
    base = TrainingRecipe()
    assert TrainingRecipe(lora_alpha=32).recipe_hash() == base.recipe_hash()
    for change in ({"seed": 1}, {"epochs": 2}, {"target_modules": (ALL_LINEAR,)}, {"learning_rate": 1e-4}):
        assert TrainingRecipe(**change).recipe_hash() != base.recipe_hash(), change


@pytest.mark.parametrize(
    "field_name, value",
    [
        ("method", "qlora"), ("lora_rank", 0), ("lora_rank", 2.5), ("lora_rank", True), ("lora_alpha", 0),
        ("lora_dropout", 1.0), ("lora_dropout", -0.1), ("learning_rate", 0.0), ("learning_rate", float("nan")),
        ("warmup_ratio", 1.0), ("batch_size", 0), ("gradient_accumulation", 0), ("epochs", 0),
        ("max_length", 1), ("weight_decay", -1.0), ("max_grad_norm", float("inf")), ("seed", -1),
        ("validation_fraction", 0.9), ("patience", -1), ("mixed_precision", "fp8"), ("scheduler", "step"),
        ("target_modules", ()), ("target_modules", ("",)), ("learning_rate", "fast"),
    ],
)
def test_bad_values_raise_a_named_error(field_name, value):
    with pytest.raises(ConfigError) as info:
        TrainingRecipe(**{field_name: value})
    assert info.value.field == field_name and info.value.accepted


def test_unknown_field_and_bad_json_are_named():
    with pytest.raises(ConfigError) as info:
        TrainingRecipe.from_dict({"lora_rnk": 8})
    assert info.value.field == "lora_rnk" and "lora_rank" in info.value.accepted
    with pytest.raises(ConfigError):
        TrainingRecipe.from_json("{not json")
    with pytest.raises(ConfigError):
        TrainingRecipe.from_json("[1, 2]")


def test_string_options_are_converted_by_field_type():
    recipe = TrainingRecipe.from_options({"lora_rank": "8", "learning_rate": "1e-3",
                                          "target_modules": "q_proj, v_proj", "method": "full"})
    assert recipe.lora_rank == 8 and recipe.learning_rate == 1e-3 and recipe.method == "full"
    assert recipe.target_modules == ("q_proj", "v_proj")
    with pytest.raises(ConfigError) as info:
        TrainingRecipe.from_options({"epochs": "two"})
    assert info.value.field == "epochs"


def test_cli_flags_override_a_starting_recipe():
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    args = parser.parse_args(["--lora-rank", "4", "--target-modules", "all-linear", "--epochs", "3"])
    recipe = recipe_from_args(args, TrainingRecipe(seed=5, epochs=9))
    assert (recipe.lora_rank, recipe.target_modules, recipe.epochs, recipe.seed) == (4, (ALL_LINEAR,), 3, 5)
    assert recipe_from_args(parser.parse_args([])) == TrainingRecipe()
    with pytest.raises(ConfigError):
        recipe_from_args(parser.parse_args(["--validation-fraction", "0.75"]))
