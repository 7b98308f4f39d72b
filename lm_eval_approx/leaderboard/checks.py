"""Checks of leaderboard config values that reach outside the config: corpus spec syntax (against
the corpora corpus.py knows) and task names (against our task specs and lm-eval's task index)."""

from __future__ import annotations

import re
from pathlib import Path

from lm_eval_approx.data.corpus import LOCAL_SUFFIXES, MIRROR_NAMED
from lm_eval_approx.errors import ConfigError, UnknownNameError
from lm_eval_approx.cache.safe_paths import expand_user

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")
SEED_NAME = re.compile(r"^seed:[\w.-]+$")


class LeaderboardConfigError(ConfigError):
    """A leaderboard config key holds a value that is not accepted; ``field`` is the dotted key."""


def field_error(key: str, value: object, accepted: str) -> LeaderboardConfigError:
    return LeaderboardConfigError(key, value, accepted)


def check_corpus_spec(key: str, spec: object) -> None:
    """Syntax of a corpus spec (see corpus.py): each ``+`` part a named mirror corpus, a local file
    or a hub id; files and the hub are reached only when the corpus is loaded."""
    if not isinstance(spec, str) or not spec.strip():
        raise field_error(key, spec, "a corpus spec such as seed:wikitext2+seed:dbpedia")
    for part in (p.strip() for p in spec.split("+")):
        name, _, split = part.partition(":")
        if name in MIRROR_NAMED:
            if split and split not in MIRROR_NAMED[name]:
                raise field_error(key, part, f"{name}:" + f" or {name}:".join(MIRROR_NAMED[name]))
        elif name == "seed":
            if not SEED_NAME.match(part):
                raise field_error(key, part, "seed:<name>, e.g. seed:wikitext2")
        elif Path(part).suffix.lower() in LOCAL_SUFFIXES or expand_user(part).exists():
            continue
        elif not HUB_ID.match(part):
            raise field_error(key, part, "ag_news:train|test, msmarco:train|test, seed:<name>, a local "
                                   f"{'/'.join(LOCAL_SUFFIXES)} file, or a hub id owner/name[:split]")


def _lm_eval_task_names() -> frozenset[str]:
    from lm_eval_approx.leaderboard.runner import shared_task_manager

    return frozenset(shared_task_manager().all_tasks)


def check_task(key: str, name: object, approximation: bool) -> None:
    """An approximation task (target) must have a task spec; an extra task must be known to lm-eval
    (its built-ins or our task folders)."""
    from lm_eval_approx.tasks.specs import TASK_SPECS

    if not isinstance(name, str) or not name:
        raise field_error(key, name, "a task name")
    if approximation:
        if name not in TASK_SPECS:
            raise field_error(key, name, str(UnknownNameError("approximation task", name, TASK_SPECS)))
        return
    from lm_eval_approx.plugins.registry import task_registry

    if name in task_registry():
        return
    known = _lm_eval_task_names()
    if name not in known:
        raise field_error(key, name, str(UnknownNameError("lm-eval task", name, known)).split(". Known")[0]
                    + " (see `lm-eval-approx tasks` or `lm_eval ls tasks`)")
