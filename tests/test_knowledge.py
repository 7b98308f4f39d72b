"""What a row knew, inferred from a cell and its folder's snapshot when the cell does not record it:
θ0 the weights, the expert the true data, a ceiling pool the true data, a stop signal on task texts
the task texts, a config's condition at least its level, and a recorded value always."""

from __future__ import annotations

import pytest

from lm_eval_approx.leaderboard.knowledge import (
    TASK_TEXTS,
    TRUE_DATA,
    WEIGHTS,
    level,
    most,
    recorded_knowledge,
)

SNAPSHOT = {"task": "approx_agnews", "expert": {"data": "ag_news:train"},
            "corpus": {"spec": "seed:wikitext2+seed:dbpedia"}, "recipe": {}, "retraining": None,
            "strategies": [{"label": "select_rule", "name": "select", "recipe": {}}]}


def _cell(kind="approx", label="select_rule", recipe=None, retraining=None, corpus=None, **record):
    leaderboard = {"kind": kind, "label": label, "seed": 0, **record}
    if retraining is not None:
        leaderboard["retraining"] = retraining
    approx = {k: v for k, v in (("recipe", recipe), ("corpus", corpus)) if v is not None}
    return {"config": {"leaderboard": leaderboard, **({"approx": approx} if approx else {})}}


def test_references_know_their_own_level_whatever_the_snapshot_says():
    assert recorded_knowledge(_cell("theta0", "theta0"), SNAPSHOT) == WEIGHTS
    assert recorded_knowledge(_cell("expert", "expert"), SNAPSHOT) == TRUE_DATA
    assert recorded_knowledge(_cell("theta0", "theta0"), {**SNAPSHOT, "condition": "true_data"}) == WEIGHTS


def test_a_recorded_value_wins_over_any_inference():
    assert recorded_knowledge(_cell(knew="task texts"), SNAPSHOT) == TASK_TEXTS
    assert recorded_knowledge(_cell("theta0", "theta0", knew="weights"), SNAPSHOT) == WEIGHTS
    assert recorded_knowledge(_cell(knew="true_data", recipe={"stop_on": "task_agreement"}), {}) == TRUE_DATA
    # an unreadable value is ignored, not trusted
    assert recorded_knowledge(_cell(knew="everything", recipe={"stop_on": "validation_loss"}), SNAPSHOT) == WEIGHTS


@pytest.mark.parametrize("stop_on", ["task_agreement", "task_kl", "task_loss"])
def test_a_stop_signal_on_task_texts_means_the_row_knew_task_texts(stop_on):
    assert recorded_knowledge(_cell(recipe={"epochs": 8, "stop_on": stop_on}), SNAPSHOT) == TASK_TEXTS
    # the training record alone (a cell whose recipe was not saved) says it too
    assert recorded_knowledge(_cell(retraining={"stop_on": stop_on, "kept_epoch": 3}), SNAPSHOT) == TASK_TEXTS
    # and without either, the snapshot's retraining for the row
    assert recorded_knowledge(_cell(), {**SNAPSHOT, "retraining": {"stop_on": stop_on}}) == TASK_TEXTS


def test_signals_not_measured_on_task_texts_leave_the_weights():
    for recipe in ({"epochs": 2}, {"stop_on": "validation_loss"}, {"stop_on": "teacher_agreement"},
                   {"stop_on": "task_agreement", "monitor_source": "pool"}):
        assert recorded_knowledge(_cell(recipe=recipe), SNAPSHOT) == WEIGHTS, recipe
    assert recorded_knowledge(_cell(recipe={"stop_on": "task_agreement", "monitor_source": "task"}), SNAPSHOT) == TASK_TEXTS
    # the cell's own recipe outranks the snapshot (a grid saved before the rule, retraining: null)
    assert recorded_knowledge(_cell(recipe={"epochs": 2}), {**SNAPSHOT, "retraining": {"stop_on": "task_loss"}}) == WEIGHTS
    # a row's own recipe in the snapshot overrides the grid's retraining
    snapshot = {**SNAPSHOT, "retraining": {"stop_on": "task_agreement"},
                "strategies": [{"label": "select_rule", "recipe": {"stop_on": "validation_loss"}}]}
    assert recorded_knowledge(_cell(), snapshot) == WEIGHTS


def test_a_pool_that_is_the_tasks_own_training_data_is_true_data():
    ceiling = {**SNAPSHOT, "corpus": {"spec": "ag_news:train", "size": 300}}
    assert recorded_knowledge(_cell(recipe={"stop_on": "task_agreement"}), ceiling) == TRUE_DATA
    assert recorded_knowledge(_cell(corpus="ag_news"), SNAPSHOT) == TRUE_DATA  # the cell's own corpus, split defaulted
    msmarco = {"expert": {"data": "msmarco:train"}, "corpus": {"spec": "msmarco:train"}}
    assert recorded_knowledge(_cell(recipe={"stop_on": "task_loss"}), msmarco) == TRUE_DATA
    # a pool with some in-domain passages among seed corpora is still a pool (true_documents counts them)
    mixed = {"expert": {"data": "msmarco:train"}, "corpus": {"spec": "seed:wikitext2+msmarco:train"}}
    assert recorded_knowledge(_cell(recipe={}), mixed) == WEIGHTS
    # the test split is not the expert's data; an expert made from "task" names no comparable spec
    assert recorded_knowledge(_cell(corpus="ag_news:test"), SNAPSHOT) == WEIGHTS
    assert recorded_knowledge(_cell(corpus="seed:wikitext2"), {"expert": {"data": "task"}}) == WEIGHTS
    assert recorded_knowledge(_cell(corpus="not a spec!"), SNAPSHOT) == WEIGHTS


def test_a_condition_is_what_the_grid_gave_its_approximations():
    plain = _cell(recipe={"stop_on": "validation_loss"})
    assert recorded_knowledge(plain, {**SNAPSHOT, "condition": "task_texts"}) == TASK_TEXTS
    assert recorded_knowledge(plain, {**SNAPSHOT, "condition": "true_data"}) == TRUE_DATA
    # a row that used more than the condition says is shown with what it used
    probe = _cell(recipe={"stop_on": "task_agreement"})
    assert recorded_knowledge(probe, {**SNAPSHOT, "condition": "weights"}) == TASK_TEXTS
    assert recorded_knowledge(_cell("expert", "expert"), {**SNAPSHOT, "condition": "weights"}) == TRUE_DATA
    assert recorded_knowledge(plain, {**SNAPSHOT, "condition": "nonsense"}) == WEIGHTS


def test_the_leaderboard_record_alone_is_enough_and_levels_order():
    assert recorded_knowledge({"kind": "expert", "label": "expert"}, {}) == TRUE_DATA
    assert recorded_knowledge({"kind": "approx", "retraining": {"stop_on": "task_kl"}}, {}) == TASK_TEXTS
    assert level("task texts") == level("task_texts") == TASK_TEXTS and level(3) is None
    assert most([WEIGHTS, TRUE_DATA, TASK_TEXTS]) == TRUE_DATA and most([]) is None
