"""A leaderboard cell's hash: every config value its scores depend on, and nothing else.

``--resume`` keeps a finished cell whose recorded hash equals this one, so the rules below decide
which published results stay valid when the config format grows. Values that restate what cells
always ran leave the hash alone: an explicit ``micro_batch_size: 0`` or an old training-path value
in a recipe mapping, and an option at its unset value (``cache/keys.py`` ``KEY_RULES``, kinds
``cell recipe`` and ``cell``); what the resolved recipes actually do is hashed separately
(``micro_batches`` when a batch is split, ``training_path`` when a fast-path value comes from the
defaults rather than from the config's own mappings).
"""

from __future__ import annotations

from typing import Any

from lm_eval_approx.cache.keys import CELL_KIND, CELL_RECIPE_KIND, keyed_fields, record_key
from lm_eval_approx.leaderboard.config import APPROX, THETA0, Cell, LeaderboardConfig
from lm_eval_approx.tasks.kinds import task_key
from lm_eval_approx.training.recipe import OLD_TRAINING_PATH


def cell_hash(config: LeaderboardConfig, cell: Cell) -> str:
    """Hash of every config value the cell's scores depend on (not the other cells)."""
    expert = dict(config.expert.__dict__, recipe=_as_keyed(config.expert.recipe))
    inputs: dict[str, Any] = {
        "cell": cell.id, "base": config.base, "expert": expert, "recipe": _as_keyed(config.recipe),
        "tasks": [t.__dict__ for t in config.tasks()],
    }
    target = task_key(config.task_spec)  # loaded by config.resolve()
    if target != config.task:  # a task rendered by lm-eval: its prompt identity (built-in keys unchanged)
        inputs["target"] = target
    inputs["seed_retraining"] = bool(config.seed_retraining)
    if cell.kind == APPROX:
        strategy = config.strategy(cell.label)
        inputs.update(corpus=config.corpus.__dict__, approx=config.approx, strategy=strategy.name,
                      options=strategy.options, strategy_approx=strategy.approx, k=cell.k, seed=cell.seed)
        if strategy.recipe:
            inputs.update(strategy_recipe=_as_keyed(strategy.recipe))
        # A target-matching baseline: what its targets were (the condition's); None for the others.
        inputs["target_source"] = config.target_source_for(cell.label)
        if config.retraining:  # absent when empty: cells made before the rule keep their hashes
            inputs.update(retraining=_as_keyed(config.retraining))
    if cell.kind != THETA0:
        trained = {} if config.expert.adapter is not None else {"expert": config.recipe_for(config.expert.recipe)}
        if cell.kind == APPROX:
            trained["retraining"] = config.retraining_for(cell.label)
        inputs["micro_batches"] = {name: r.micro_batch_size for name, r in trained.items() if r.splits_batches}
        # A training-path value a config states is hashed with its mapping above; one that comes from
        # the defaults (the fast path since 2026-12-06) is hashed here, so it still names the cell.
        stated = {"expert": {**config.recipe, **config.expert.recipe}}
        if cell.kind == APPROX:
            stated["retraining"] = {**config.recipe, **(config.retraining or {}), **config.strategy(cell.label).recipe}
        fast = {name: {field: getattr(r, field) for field, old in OLD_TRAINING_PATH.items()
                       if getattr(r, field) != old and field not in stated[name]}
                for name, r in trained.items()}
        inputs["training_path"] = {name: fields for name, fields in fast.items() if fields}
    return record_key(CELL_KIND, inputs)


def _as_keyed(recipe: dict[str, Any]) -> dict[str, Any]:
    """A config's recipe mapping as cell hashes record it (``KEY_RULES``, kind ``cell recipe``)."""
    return keyed_fields(CELL_RECIPE_KIND, recipe)
