"""The plugin manager: built-ins plus third-party entry points, loaded once and lazily.

Third-party plugins are normal packages with ``[project.entry-points.lm_eval_approx]``; setting
``LM_EVAL_APPROX_LOAD_PLUGINS=""`` loads none of them (tests use this for isolation), and a
comma-separated list loads only the named ones.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from . import __version__, hookspecs
from .paths import PLUGINS_ENV

logger = logging.getLogger(__name__)
BUILTIN_NAME = "lm_eval_approx.default_plugins"

_manager: pluggy.PluginManager | None = None


@dataclass(frozen=True)
class PluginInfo:
    """Who provided something: the plugin's name, its distribution and the distribution's version."""

    name: str
    distribution: str
    version: str


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    setting = os.environ.get(PLUGINS_ENV)
    if setting is not None and not setting.strip():
        return
    wanted = None if setting is None else {s.strip() for s in setting.split(",") if s.strip()}
    for ep in metadata.entry_points(group=hookspecs.PROJECT):
        if wanted is not None and ep.name not in wanted:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        plugin = ep.load()
        pm.register(plugin, name=ep.name)
        dist = ep.dist
        pm._approx_dists[ep.name] = PluginInfo(  # type: ignore[attr-defined]
            ep.name, dist.metadata["Name"] if dist else ep.module, dist.version if dist else "?"
        )


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        pm._approx_dists = {}  # type: ignore[attr-defined]
        from . import default_plugins

        pm.register(default_plugins, name=BUILTIN_NAME)
        pm._approx_dists[BUILTIN_NAME] = PluginInfo(  # type: ignore[attr-defined]
            BUILTIN_NAME, "lm-eval-approx", __version__
        )
        _load_entry_points(pm)
        _manager = pm
    return _manager


def plugin_info(name: str) -> PluginInfo:
    """Distribution and version of a registered plugin, by its plugin name."""
    pm = get_plugin_manager()
    dists = pm._approx_dists  # type: ignore[attr-defined]
    return dists.get(name) or PluginInfo(name, name, "?")


def list_plugins() -> list[PluginInfo]:
    """Every loaded plugin, built-ins first."""
    pm = get_plugin_manager()
    return [plugin_info(name) for name, _ in pm.list_name_plugin()]


def reset_plugins() -> None:
    """Forget the manager and every registry built from it (tests register plugins on the fly)."""
    global _manager
    _manager = None
    from . import registry

    registry.reset_registries()


def call_each(hook_name: str, make_register):
    """Call one hook implementation at a time so each registration knows its plugin's name."""
    pm = get_plugin_manager()
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        argname = impl.argnames[0] if impl.argnames else None
        register = make_register(plugin_info(impl.plugin_name))
        if argname is None:
            impl.function()
        else:
            impl.function(**{argname: register})
