"""Former home of the task-spec names, kept so that existing imports keep working: the kinds, the
``TaskSpec`` interface and ``task_key`` live in ``tasks/kinds.py``, ``get_task_spec`` in
``tasks/lm_eval_tasks.py``. New code imports from those."""

from __future__ import annotations

from lm_eval_approx.tasks.kinds import (
    CLASSIFICATION,
    LANGUAGE_MODELLING,
    LEGACY_KEYS,
    LM_TEXT_RULE,
    TaskSpec,
    task_key,
)
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

__all__ = ["CLASSIFICATION", "LANGUAGE_MODELLING", "LEGACY_KEYS", "LM_TEXT_RULE", "TaskSpec", "get_task_spec",
           "task_key"]
