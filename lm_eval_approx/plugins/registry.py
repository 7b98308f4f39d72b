"""Registries built from the plugin hooks on first use: the generic name → entry table, and task folders.

Each kind of registry (tasks here, strategies in ``strategies/registry.py``) is built once by
``cached_registry`` and forgotten by ``reset_registries``, so a test can register a plugin and see
it without restarting the process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import yaml

from lm_eval_approx.errors import ApproxError, ConfigError, UnknownNameError
from lm_eval_approx.plugins.manager import PluginInfo, call_each, forget_manager

T = TypeVar("T")


class DuplicateNameError(ApproxError, ValueError):
    """Two plugins registered the same name."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its name, the object, a one-line description and who provided it."""

    name: str
    obj: T
    description: str
    plugin: PluginInfo
    aliases: tuple[str, ...] = ()


@dataclass
class Registry(Generic[T]):
    """Name → entry, with aliases; unknown names list the known ones and the closest match."""

    kind: str
    entries: dict[str, Entry[T]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def add(self, entry: Entry[T]) -> None:
        for name in (entry.name, *entry.aliases):
            owner = self.entries.get(name) or self.entries.get(self.aliases.get(name, ""))
            if owner is not None:
                raise DuplicateNameError(
                    f"{self.kind} {name!r} registered by {entry.plugin.distribution} is already "
                    f"registered by {owner.plugin.distribution}; rename one of them"
                )
        self.entries[entry.name] = entry
        for alias in entry.aliases:
            self.aliases[alias] = entry.name

    def get(self, name: str) -> Entry[T]:
        key = self.aliases.get(name, name)
        if key not in self.entries:
            raise UnknownNameError(self.kind, name, [*self.entries, *self.aliases])
        return self.entries[key]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.entries

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __iter__(self):
        return iter(self.entries[n] for n in self.names())


_built: dict[str, Registry] = {}


def cached_registry(kind: str, build: Callable[[], Registry]) -> Registry:
    """The registry of ``kind``, built by ``build`` on first use and kept until ``reset_registries``."""
    if kind not in _built:
        _built[kind] = build()
    return _built[kind]


def _task_names(folder: Path) -> list[tuple[str, str]]:
    """(name, description) of every task and group a YAML folder defines; description from a
    leading ``# description:`` comment."""
    found = []
    for path in sorted(folder.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        description = ""
        for line in text.splitlines():
            if line.startswith("# description:"):
                description = line.split(":", 1)[1].strip()
                break
        data = yaml.load(text, Loader=_IgnoreTagsLoader) or {}
        for key in ("task", "group"):
            if isinstance(data.get(key), str):
                found.append((data[key], description))
    return found


class _IgnoreTagsLoader(yaml.SafeLoader):
    """Reads lm-eval task YAML without resolving ``!function`` tags (names are all we need)."""


_IgnoreTagsLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _build_task_registry() -> Registry:
    reg: Registry = Registry("task")

    def make_register(plugin: PluginInfo):
        def register(path):
            folder = Path(path).resolve()
            if not folder.is_dir():
                raise ApproxError(
                    f"plugin {plugin.distribution} registered task folder {str(folder)!r}, "
                    "which is not a directory"
                )
            for name, description in _task_names(folder):
                reg.add(Entry(name, folder, description, plugin))

        return register

    call_each("register_tasks", make_register)
    return reg


def task_registry() -> Registry:
    """Every task and group name from the registered task folders; the object is the folder."""
    return cached_registry("task", _build_task_registry)


_included: list[Path] = []


def include_task_folders(paths) -> None:
    """Add folders of task YAML for this process (lm-eval's ``--include_path``, ``finetune
    --include-path``): their tasks become visible, and approximable, like a plugin's."""
    for path in paths:
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError("include_path", str(path), "an existing folder of lm-eval task YAML")
        if folder not in _included:
            _included.append(folder)


def task_folders() -> list[Path]:
    """The distinct folders that hold registered tasks, plus the included ones, for lm-eval's
    TaskManager."""
    return sorted({entry.obj for entry in task_registry()} | set(_included))


def reset_registries() -> None:
    """Forget every registry; the next lookup calls the plugin hooks again."""
    _built.clear()


def reset_plugins() -> None:
    """Forget the plugin manager and every registry built from it (tests register plugins on the fly)."""
    forget_manager()
    reset_registries()
    _included.clear()
