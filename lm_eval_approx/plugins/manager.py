"""The plugin manager: the built-in plugin plus third-party entry points, loaded once and lazily.

Third-party plugins are normal packages with ``[project.entry-points.lm_eval_approx]``, loaded by
pluggy's own ``load_setuptools_entrypoints``; setting ``LM_EVAL_APPROX_LOAD_PLUGINS=""`` loads
none of them (tests use this for isolation), and a comma-separated list loads only the named ones.
The built-in plugin is imported by name, as simonw/llm loads its default plugins, so that this
module stays below the strategies and commands the built-in plugin registers.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import pluggy

from lm_eval_approx import __version__, hookspecs

PLUGINS_ENV = "LM_EVAL_APPROX_LOAD_PLUGINS"
BUILTIN_NAME = "lm_eval_approx.default_plugins"
DISTRIBUTION = "lm-eval-approx"

_manager: pluggy.PluginManager | None = None


@dataclass(frozen=True)
class PluginInfo:
    """Who provided something: the plugin's name, its distribution and the distribution's version."""

    name: str
    distribution: str
    version: str


def wanted_plugins() -> list[str] | None:
    """The entry-point names ``LM_EVAL_APPROX_LOAD_PLUGINS`` allows: None means all of them."""
    setting = os.environ.get(PLUGINS_ENV)
    if setting is None:
        return None
    return [s.strip() for s in setting.split(",") if s.strip()]


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(importlib.import_module(BUILTIN_NAME), name=BUILTIN_NAME)
        wanted = wanted_plugins()
        if wanted is None:
            pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        for name in wanted or ():
            pm.load_setuptools_entrypoints(hookspecs.PROJECT, name=name)
        _manager = pm
    return _manager


def plugin_info(name: str) -> PluginInfo:
    """Distribution and version of a registered plugin, by its plugin name."""
    pm = get_plugin_manager()
    if name == BUILTIN_NAME:
        return PluginInfo(name, DISTRIBUTION, __version__)
    for plugin, dist in pm.list_plugin_distinfo():
        if pm.get_name(plugin) == name:
            return PluginInfo(name, dist.project_name, dist.version)
    return PluginInfo(name, name, "?")


def list_plugins() -> list[PluginInfo]:
    """Every loaded plugin, built-ins first."""
    return [plugin_info(name) for name, _ in get_plugin_manager().list_name_plugin()]


def forget_manager() -> None:
    """Drop the manager; the next ``get_plugin_manager`` loads the plugins again."""
    global _manager
    _manager = None


def call_each(hook_name: str, make_register: Callable[[PluginInfo], Callable]) -> None:
    """Call one hook implementation at a time so each registration knows its plugin's name."""
    caller = getattr(get_plugin_manager().hook, hook_name)
    for impl in caller.get_hookimpls():
        argname = impl.argnames[0] if impl.argnames else None
        register = make_register(plugin_info(impl.plugin_name))
        if argname is None:
            impl.function()
        else:
            impl.function(**{argname: register})
