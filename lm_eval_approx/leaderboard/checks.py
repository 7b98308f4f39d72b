"""Checks of leaderboard config values that reach outside the config: corpus spec syntax (against
the corpora corpus.py knows) and task names (against our task specs and lm-eval's task index)."""

from __future__ import annotations

from lm_eval_approx.data.corpus import parse_corpus_spec
from lm_eval_approx.errors import ApproxError, ConfigError, UnknownNameError
from lm_eval_approx.harness.lm_eval_cli import shared_task_manager
from lm_eval_approx.plugins.registry import task_registry
from lm_eval_approx.tasks.specs import get_task_spec


class LeaderboardConfigError(ConfigError):
    """A leaderboard config key holds a value that is not accepted; ``field`` is the dotted key."""


def field_error(key: str, value: object, accepted: str) -> LeaderboardConfigError:
    return LeaderboardConfigError(key, value, accepted)


def check_corpus_spec(key: str, spec: object) -> None:
    """Syntax of a corpus spec, by the parser ``load_corpus`` uses (``corpus.parse_corpus_spec``);
    files and the hub are reached only when the corpus is loaded."""
    try:
        parse_corpus_spec(spec)
    except ConfigError as exc:
        raise field_error(key, exc.value, exc.accepted) from None


def _lm_eval_task_names() -> frozenset[str]:
    return frozenset(shared_task_manager().all_tasks)


def check_task(key: str, name: object, approximation: bool) -> None:
    """An approximation task (target) must have a task spec; an extra task must be known to lm-eval
    (its built-ins or our task folders)."""
    if not isinstance(name, str) or not name:
        raise field_error(key, name, "a task name")
    if approximation:
        try:
            get_task_spec(name)
        except ApproxError as exc:
            raise field_error(key, name, str(exc)) from None
        return
    if name in task_registry():
        return
    known = _lm_eval_task_names()
    if name not in known:
        raise field_error(key, name, str(UnknownNameError("lm-eval task", name, known)).split(". Known")[0]
                    + " (see `lm-eval-approx tasks` or `lm_eval ls tasks`)")
