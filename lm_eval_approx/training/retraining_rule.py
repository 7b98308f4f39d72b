"""The retraining rule: how long θ0 is retrained on a selection, and on what signal it stops.

The expert's recipe is whatever a user's θf was trained with; the approximation's retraining is
ours to choose, and it decides the result (the same 300 AG News documents closed 16% of the
random → expert gap after 1 epoch and 67% after 2). The rule below was chosen from accuracy curves
on development documents of AG News *train* (``benchmarks/epoch_curves.py``,
``results/cpu/agnews/epochs.png``; the test split was never read), for random and select at
k = 100 and 300 over 8 epochs:

* Accuracy keeps rising past 2 epochs for both (best epochs 6, 6, 6 and 8), so the cap is 8.
* Validation loss on the selection's own pseudo-labels is not faithful: it kept epoch 2
  (0.693) of random k = 300, whose best epoch reached 0.767.
* Agreement with θf on unselected *pool* documents is not faithful either: the pool is not the
  task's distribution (wikitext and DBpedia texts for an AG News θf), and it stopped at epochs 3,
  3, 5 and 2.
* Agreement with θf on unlabelled texts of the task's own training split (``task_agreement``),
  patience 2, kept the best development epoch on every curve that recorded it (random k = 100 and
  300, select k = 100); KL on the same texts kept epoch 3 of random k = 300 (0.730 vs 0.767).

Epoch 0 (θ0 itself) is a candidate under a probe signal, so a retraining that only drifts away
from θf keeps θ0's weights instead of ending below them (what 8 fixed epochs did at the demo's
scale).

A language-modelling task has no choices to agree on; its rule stops on ``task_loss``, the task's
own loss on unlabelled texts of its training split. For a perplexity target those texts are the
target's distribution, so this is early stopping on a development set the user has, faithful by
construction where the pool's validation loss was not (on MS MARCO a second epoch made random
*worse*, 74.4 → 78.0 perplexity, while the selection's loss kept falling). Its cap and patience are
the classification rule's; no language-modelling curve has been measured yet, and every retraining
under the rule records its own curve (``curves.json``). Both rules need a task with a training
split (lm-eval's ``training_split``, or the built-in task's mirror corpus); a task without one has
no monitor texts, and its approximations keep the plain recipe (with a warning that says why).
"""

from __future__ import annotations

import logging
from typing import Any

from lm_eval_approx.tasks.documents import has_training_texts
from lm_eval_approx.tasks.kinds import CLASSIFICATION
from lm_eval_approx.training.recipe import TASK_AGREEMENT, TASK_LOSS

RULE_EPOCHS = 8
RULE_PATIENCE = 2
# What a leaderboard's approximations may know of the target (its ``condition:``). Under weights the
# rule measures its signal on texts sampled from θf (label words banned; features/generation.py),
# since the task's texts are not given; under the others on the task's training texts.
WEIGHTS, TASK_TEXTS_CONDITION, TRUE_DATA = "weights", "task_texts", "true_data"
CONDITIONS = (WEIGHTS, TASK_TEXTS_CONDITION, TRUE_DATA)
WEIGHTS_MONITOR = "finetuned"

logger = logging.getLogger(__name__)


def retraining_rule(kind: str, condition: str = TASK_TEXTS_CONDITION) -> dict[str, Any]:
    """The recipe fields the rule sets for a task of ``kind`` under ``condition`` (a new dict each call)."""
    signal = TASK_AGREEMENT if kind == CLASSIFICATION else TASK_LOSS
    rule = {"epochs": RULE_EPOCHS, "stop_on": signal, "patience": RULE_PATIENCE}
    if condition == WEIGHTS:
        rule["monitor_source"] = WEIGHTS_MONITOR
    return rule


def rule_for_task(spec, condition: str = TASK_TEXTS_CONDITION) -> dict[str, Any]:
    """``retraining_rule`` for the task of ``spec`` under ``condition``, or ``{}`` (the plain recipe)
    when the rule needs the task's training texts and the task has none."""
    if condition == WEIGHTS or has_training_texts(spec):
        return retraining_rule(spec.kind, condition)
    logger.warning("task %s has no training split to draw the retraining rule's monitor texts from: its "
                   "approximations retrain with the plain recipe (set train_stop_on / retraining: to choose)",
                   spec.name)
    return {}
