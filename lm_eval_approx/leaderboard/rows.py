"""The ``strategies:`` rows of a leaderboard config: one row family per entry, parsed and checked
(``parse_strategy``, no I/O), then looked up among the registered strategies (``check_strategy``,
when the config is resolved)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from lm_eval_approx.config_checks import check_int
from lm_eval_approx.errors import ConfigError, UnknownNameError
from lm_eval_approx.leaderboard.checks import field_error
from lm_eval_approx.approx_config import ApproxConfig
from lm_eval_approx.strategies.registry import strategy_registry

# ApproxConfig fields a leaderboard sets itself (per cell, or ``device`` from its top level), so
# `approx:` may not name them.
CELL_FIELDS = ("base", "finetuned", "task", "corpus", "corpus_size", "corpus_seed", "strategy",
               "strategy_options", "k", "seed", "device")


def mapping(key: str, value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise field_error(key, value, "a mapping of key: value")
    return dict(value)


def int_list(key: str, value: object, minimum: int) -> list[int]:
    if not isinstance(value, list) or not value:
        raise field_error(key, value, "a non-empty list of integers")
    for i, item in enumerate(value):
        check_int(f"{key}[{i}]", item, minimum=minimum, error=field_error)
    if len(set(value)) != len(value):
        raise field_error(key, value, "distinct integers")
    return list(value)


@dataclass
class StrategyConfig:
    """One strategy row family: registered ``name``, display ``label``, its ``options``, ApproxConfig
    overrides (``approx``), budgets/seeds replacing the leaderboard's when given, and TrainingRecipe
    fields (``recipe``) overriding the leaderboard's recipe for this row's retraining only (the
    expert keeps its own), so a retraining ablation sits in the same table as the default."""

    name: str
    label: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    approx: dict[str, Any] = field(default_factory=dict)
    budgets: list[int] | None = None
    seeds: list[int] | None = None
    recipe: dict[str, Any] = field(default_factory=dict)


def parse_strategy(key: str, raw: object) -> StrategyConfig:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise field_error(key, raw, "a strategy name or a mapping with name (and label, options, approx, budgets, seeds, recipe)")
    unknown = set(raw) - {f.name for f in dataclasses.fields(StrategyConfig)}
    if unknown:
        raise field_error(f"{key}.{sorted(unknown)[0]}", raw[sorted(unknown)[0]],
                          "name, label, options, approx, budgets, seeds, recipe")
    name = raw["name"]
    if not isinstance(name, str) or not name:
        raise field_error(f"{key}.name", name, "a registered strategy name (lm-eval-approx strategies)")
    options = mapping(f"{key}.options", raw.get("options"))
    for option in options:
        if not isinstance(option, str):
            raise field_error(f"{key}.options", option, "option names that are strings")
    approx = mapping(f"{key}.approx", raw.get("approx"))
    check_approx(f"{key}.approx", approx)
    label = raw.get("label") or name
    if not isinstance(label, str) or not re.match(r"^[\w.-]+$", label):
        raise field_error(f"{key}.label", label, "a name of letters, digits, _ . -")
    own_budgets = int_list(f"{key}.budgets", raw["budgets"], 1) if raw.get("budgets") is not None else None
    own_seeds = int_list(f"{key}.seeds", raw["seeds"], 0) if raw.get("seeds") is not None else None
    recipe = mapping(f"{key}.recipe", raw.get("recipe"))
    return StrategyConfig(name, label, options, approx, own_budgets, own_seeds, recipe)


def parse_strategies(raw: object) -> list[StrategyConfig]:
    """``strategies:``, a non-empty list of rows with distinct labels."""
    if not isinstance(raw, list) or not raw:
        raise field_error("strategies", raw, "a non-empty list of registered strategy names")
    strategies = [parse_strategy(f"strategies[{i}]", s) for i, s in enumerate(raw)]
    labels = [s.label for s in strategies]
    if len(set(labels)) != len(labels):
        raise field_error("strategies", labels, "distinct labels (set label: for a second entry of one strategy)")
    return strategies


def check_strategy(key: str, strategy: StrategyConfig) -> None:
    """The row's strategy is registered (built-in or a plugin's) and accepts the row's options."""
    registry = strategy_registry()
    if strategy.name not in registry:
        raise field_error(f"{key}.name", strategy.name,
                          str(UnknownNameError("strategy", strategy.name, registry.names())))
    try:
        registry.get(strategy.name).obj(**strategy.options)
    except ConfigError as exc:
        raise field_error(f"{key}.options.{exc.field.split('.')[-1]}", exc.value, exc.accepted) from exc
    except (TypeError, ValueError) as exc:
        raise field_error(f"{key}.options", strategy.options, f"options the strategy accepts ({exc})") from None


def check_approx(key: str, approx: dict) -> dict:
    """``approx`` when it names ApproxConfig fields only (not those a leaderboard sets per cell)."""
    allowed = {f.name for f in dataclasses.fields(ApproxConfig)} - set(CELL_FIELDS)
    for name in approx:
        if name not in allowed:
            raise field_error(f"{key}.{name}", approx[name], "an ApproxConfig field: " + ", ".join(sorted(allowed)))
    return approx
