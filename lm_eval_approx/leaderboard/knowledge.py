"""What a leaderboard row knew about the target, the table's "knew" column.

Three levels, each including the one before it:

* ``weights``: θ0, θf, the candidate pool and the task's prompt template (every approximation has these);
* ``task texts``: the above plus unlabelled texts of the target task's training split;
* ``true data``: the target's own labelled training data (the expert, and a ceiling grid whose
  pool *is* that data).

A cell written by a runner that records it carries ``config.leaderboard.knew``; for older cells
``recorded_knowledge`` infers it from the cell and the folder's ``leaderboard.json`` snapshot, in
this one place. Two rows compared by a Δ column that knew different things are marked in the table.
"""

from __future__ import annotations

from typing import Any

from lm_eval_approx.data.corpus import parse_corpus_spec
from lm_eval_approx.errors import ApproxError
from lm_eval_approx.leaderboard.config import EXPERT, TASK_DATA, THETA0, Cell, LeaderboardConfig
from lm_eval_approx.training.recipe import TASK_MONITOR as TASK_SOURCE
from lm_eval_approx.training.recipe import TASK_SIGNALS
from lm_eval_approx.training.retraining_rule import TRUE_DATA as TRUE_DATA_CONDITION

WEIGHTS, TASK_TEXTS, TRUE_DATA = "weights", "task texts", "true data"
LEVELS = (WEIGHTS, TASK_TEXTS, TRUE_DATA)
# A config's ``condition:`` key (what the grid's rows were given) and the level it names.
CONDITIONS = {"weights": WEIGHTS, "task_texts": TASK_TEXTS, "true_data": TRUE_DATA}
# ``monitor_source`` values that mean the stop signal's texts came from the task's training split.
TASK_MONITOR = (None, "task")


def level(value: object) -> str | None:
    """The level a recorded value or a condition names (``task_texts`` and ``task texts`` alike),
    None when it names none."""
    if not isinstance(value, str):
        return None
    return CONDITIONS.get(value.strip().replace(" ", "_"))


def most(levels: list[str]) -> str | None:
    """The largest of ``levels`` (what a row of several cells knew at most), None when empty."""
    known = [LEVELS.index(value) for value in levels if value in LEVELS]
    return LEVELS[max(known)] if known else None


def row_knowledge(config: LeaderboardConfig, cell: Cell) -> str:
    """What a cell of ``config`` knew, from what it used (recorded in every new cell's JSON): θ0 the
    weights; the expert, and any approximation of a ``true_data`` grid, the true data; an
    approximation whose stop signal was measured on the task's texts, or whose strategy aimed at
    them, the task texts; any other the weights."""
    if cell.kind == THETA0:
        return WEIGHTS
    if cell.kind == EXPERT or config.condition == TRUE_DATA_CONDITION:
        return TRUE_DATA
    recipe = config.retraining_for(cell.label)
    monitored = recipe.uses_probe and recipe.stop_on in TASK_SIGNALS and recipe.monitor_source == TASK_SOURCE
    return TASK_TEXTS if monitored or config.target_source_for(cell.label) == TASK_SOURCE else WEIGHTS


def recorded_knowledge(cell: dict[str, Any], snapshot: dict[str, Any]) -> str:
    """What one cell's row knew: its recorded ``knew`` when it has one, else inferred.

    ``cell`` is a cell's results JSON (or its ``config.leaderboard`` record alone), ``snapshot``
    the folder's ``leaderboard.json`` ({} when missing). Inference: θ0 knew the weights; the
    expert the true data; an approximation whose pool is the task's own training data (every part
    of the corpus spec is the expert's ``data`` spec: a ceiling grid) the true data; one whose
    retraining stopped on a probe measured on task texts (``stop_on`` task_agreement / task_kl /
    task_loss, with no ``monitor_source`` other than "task") the task texts; otherwise the weights.
    A snapshot ``condition`` (weights / task_texts / true_data) is what the grid gave its
    approximations: they then knew at least that, and more where the inference finds more; θ0 and
    the expert keep their own level.
    """
    record = (cell.get("config") or {}).get("leaderboard") if "config" in cell else cell
    record = record or {}
    recorded = level(record.get("knew"))
    if recorded:
        return recorded
    kind = record.get("kind")
    if kind == THETA0:
        return WEIGHTS
    if kind == EXPERT:
        return TRUE_DATA
    found = WEIGHTS
    if _pool_is_true_data(cell, snapshot):
        found = TRUE_DATA
    elif _stops_on_task_texts(cell, record, snapshot):
        found = TASK_TEXTS
    return most([found, level(snapshot.get("condition")) or WEIGHTS]) or found


def _sources(spec: object) -> set[tuple[str, str, str]] | None:
    try:
        return {(s.kind, s.name, s.split) for s in parse_corpus_spec(spec)}
    except (ApproxError, TypeError, ValueError):
        return None


def _pool_is_true_data(cell: dict[str, Any], snapshot: dict[str, Any]) -> bool:
    """True when every source of the cell's pool is the source the expert was trained on."""
    truth = (snapshot.get("expert") or {}).get("data")
    if not truth or truth == TASK_DATA:
        return False
    pool_spec = ((cell.get("config") or {}).get("approx") or {}).get("corpus") \
        or (snapshot.get("corpus") or {}).get("spec")
    pool, true = _sources(pool_spec), _sources(truth)
    return bool(pool and true and pool <= true)


def _stops_on_task_texts(cell: dict[str, Any], record: dict[str, Any], snapshot: dict[str, Any]) -> bool:
    """True when the cell's retraining kept the epoch a task-text probe chose: read from the cell's
    training record, else its recipe, else the snapshot's recipe for the row."""
    recipe = ((cell.get("config") or {}).get("approx") or {}).get("recipe")
    trained = record.get("retraining") or {}
    if "stop_on" in trained:
        source = {**(recipe or {}), **trained}
    elif recipe:
        source = recipe
    else:
        row: dict[str, Any] = next((s for s in snapshot.get("strategies") or [] if s.get("label") == record.get("label")), {})
        source = {**(snapshot.get("recipe") or {}), **(snapshot.get("retraining") or {}), **(row.get("recipe") or {})}
    return source.get("stop_on") in TASK_SIGNALS and source.get("monitor_source") in TASK_MONITOR
