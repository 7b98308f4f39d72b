"""Checks of leaderboard config values against the corpora corpus.py knows (corpus spec syntax, no
I/O: building a config runs it), and the checks that resolving a config runs, which reach outside
it: include folders on disk, task names (against our task folders and lm-eval's task index) and the
target task (loaded by lm-eval, with its data)."""

from __future__ import annotations

from pathlib import Path

from lm_eval_approx.data.corpus import parse_corpus_spec
from lm_eval_approx.errors import ApproxError, ConfigError, UnknownNameError
from lm_eval_approx.harness.lm_eval_cli import shared_task_manager
from lm_eval_approx.plugins.registry import task_registry
from lm_eval_approx.tasks.lm_eval_tasks import TaskLoadError, get_task_spec


class LeaderboardConfigError(ConfigError):
    """A leaderboard config key holds a value that is not accepted; ``field`` is the dotted key."""


class TargetNotLoadedError(LeaderboardConfigError):
    """The target task is known by name but lm-eval could not load it (its data or its YAML's
    functions), so what depends on the loaded task (cell hashes, the retraining rule) is unknown."""


def field_error(key: str, value: object, accepted: str) -> LeaderboardConfigError:
    return LeaderboardConfigError(key, value, accepted)


def check_corpus_spec(key: str, spec: object) -> None:
    """Syntax of a corpus spec, by the parser ``load_corpus`` uses (``corpus.parse_corpus_spec``);
    files and the hub are reached only when the corpus is loaded."""
    try:
        parse_corpus_spec(spec)
    except ConfigError as exc:
        raise field_error(key, exc.value, exc.accepted) from None


def check_task_name(key: str, name: object) -> str:
    """The form of a task name (whether any index knows it is for ``check_task``)."""
    if not isinstance(name, str) or not name:
        raise field_error(key, name, "a task name")
    return name


def check_include_path(folders: list[str]) -> None:
    """Every ``include_path`` entry is an existing folder."""
    for folder in folders:
        if not Path(folder).expanduser().is_dir():
            raise field_error("include_path", folder, "an existing folder of lm-eval task YAML")


def load_target(key: str, name: str, include_path: list[str]):
    """The spec of the approximation task ``name`` (lm-eval loads the task and its data);
    ``TargetNotLoadedError`` when the name is known but the task does not load."""
    try:
        return get_task_spec(name, include_path)
    except TaskLoadError as exc:
        raise TargetNotLoadedError(key, name, str(exc)) from None
    except ApproxError as exc:
        raise field_error(key, name, str(exc)) from None


def check_task(key: str, name: str, include_path: list[str]) -> None:
    """An extra task must be known to lm-eval (its built-ins, our task folders or ``include_path``)."""
    if name in task_registry():
        return
    known = frozenset(shared_task_manager(include_path).all_tasks)
    if name not in known:
        raise field_error(key, name, str(UnknownNameError("lm-eval task", name, known)).split(". Known")[0]
                    + " (see `lm-eval-approx tasks` or `lm_eval ls tasks`)")
