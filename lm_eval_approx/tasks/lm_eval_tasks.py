"""Finding and loading lm-eval tasks by name, and ``get_task_spec``: the spec of any lm-eval task.

A name is looked up first in an index of the registered task folders (``plugins.registry``
``task_folders``) plus the caller's ``include_path`` — fast, a few YAML files — and only when it
is not there in lm-eval's full index of its built-in tasks, which takes many seconds to build.
Both indexes are kept per process (``lru_cache`` on the folder list), and so is every spec built,
keyed by name, folders and text field: the pipeline asks for its task's spec many times.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

from lm_eval_approx.errors import ConfigError, UnknownNameError
from lm_eval_approx.plugins.registry import task_folders
from lm_eval_approx.tasks.lm_eval_spec import LmEvalTaskSpec, TaskKindError, spec_from_task


# Known task names an UnknownTaskError message lists before it only counts the rest.
LISTED = 40


class TaskLoadError(ConfigError):
    """An lm-eval task that its name resolves to but that fails to load (data files, YAML)."""


class UnknownTaskError(UnknownNameError):
    """An approximation task name nobody defines. ``known`` holds every name (lm-eval's own run to
    thousands); the message suggests the closest of them, lists ``listed`` up to ``LISTED`` names
    and counts the rest."""

    def __init__(self, name: str, listed: list[str], others: list[str]):
        super().__init__("approximation task", name, [*listed, *others])
        close = difflib.get_close_matches(name, self.known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        shown = sorted(listed)[:LISTED]
        rest = len(self.known) - len(shown)
        more = f" and {rest} more (lm-eval's own tasks: `lm-eval-approx run --tasks list`)" if rest else ""
        self.message = f"unknown approximation task {name!r}.{hint} Known names: {', '.join(shown)}{more}"


def _as_list(include_path) -> list[str]:
    if include_path is None:
        return []
    items = include_path if isinstance(include_path, (list, tuple)) else [include_path]
    return [str(Path(p)) for p in items]


def search_paths(include_path=None) -> tuple[str, ...]:
    """The registered task folders, then the caller's ``include_path`` (one path or a list)."""
    return tuple(dict.fromkeys([*map(str, task_folders()), *_as_list(include_path)]))


@lru_cache(maxsize=8)
def task_manager(paths: tuple[str, ...], include_defaults: bool):
    """An lm-eval TaskManager over ``paths`` (plus lm-eval's own tasks when ``include_defaults``)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=include_defaults)


def local_task_names(include_path=None) -> tuple[list[str], list[str]]:
    """(tasks, groups and tags) that the registered folders and ``include_path`` define."""
    manager = task_manager(search_paths(include_path), False)
    tasks = set(manager.all_subtasks)
    return sorted(tasks), sorted(set(manager.all_tasks) - tasks)


def builtin_task_names() -> list[str]:
    """The task names of lm-eval's own task folder (builds lm-eval's full index)."""
    return list(task_manager((), True).all_subtasks)


def _manager_with(name: str, paths: tuple[str, ...]):
    for include_defaults in (False, True):
        manager = task_manager(paths, include_defaults)
        if name in manager.task_index:
            return manager
    return None


def _load(manager, name: str):
    if name not in manager.all_subtasks:
        kind = "group" if name in manager.all_groups else "tag"
        raise TaskKindError(name, kind, f"{name!r} is a {kind} of tasks; approximate one of its tasks at a time")
    try:
        return manager.load([name])["tasks"][name]
    except Exception as exc:
        raise TaskLoadError("task", name, f"a task whose config and data load ({type(exc).__name__}: {exc})") from exc


@lru_cache(maxsize=64)
def _cached_spec(name: str, paths: tuple[str, ...], text_field: str | None) -> LmEvalTaskSpec | None:
    manager = _manager_with(name, paths)
    return None if manager is None else spec_from_task(_load(manager, name), text_field)


def lm_eval_task_spec(name: str, include_path=None, text_field: str | None = None) -> LmEvalTaskSpec | None:
    """The spec of lm-eval task ``name`` (see ``lm_eval_spec``), None when no index knows the name;
    a named error when the name is a group, the task fails to load or cannot be approximated."""
    return _cached_spec(name, search_paths(include_path), text_field)


def get_task_spec(name: str, include_path=None, text_field: str | None = None) -> LmEvalTaskSpec:
    """The spec of an approximation task by lm-eval task name: any lm-eval task in the registered
    task folders (ours: ``approx_agnews``, ``approx_msmarco``, ...), ``include_path`` or lm-eval's own
    tasks, rendered by the task itself (``tasks/lm_eval_spec.py``; a named error when it cannot be
    approximated or its name is unknown)."""
    spec = lm_eval_task_spec(name, include_path, text_field)
    if spec is not None:
        return spec
    listed = sorted(local_task_names(include_path)[0])
    raise UnknownTaskError(name, listed, sorted(set(builtin_task_names()) - set(listed)))


@lru_cache(maxsize=64)
def _cached_output_type(name: str, paths: tuple[str, ...]) -> str | None:
    manager = _manager_with(name, paths)
    return None if manager is None else _load(manager, name).OUTPUT_TYPE


def task_output_type(name: str, include_path=None) -> str | None:
    """lm-eval's ``output_type`` of task ``name`` (any task, approximable or not), None when no
    index knows the name; a named error when it is a group or fails to load."""
    return _cached_output_type(name, search_paths(include_path))


def reset_task_caches() -> None:
    """Forget indexed folders and built specs (after a task YAML or plugin changed)."""
    task_manager.cache_clear()
    _cached_spec.cache_clear()
    _cached_output_type.cache_clear()
