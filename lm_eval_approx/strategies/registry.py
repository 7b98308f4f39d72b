"""The strategy registry (built from the ``register_strategies`` hook) and running a strategy by name."""

from __future__ import annotations

from lm_eval_approx.errors import ApproxError
from lm_eval_approx.plugins.manager import PluginInfo, call_each
from lm_eval_approx.plugins.registry import Entry, Registry, cached_registry
from lm_eval_approx.strategies.base import CandidatePool, Selection, Strategy


def _build_strategy_registry() -> Registry:
    reg: Registry = Registry("strategy")

    def make_register(plugin: PluginInfo):
        def register(cls, aliases=()):
            if not (isinstance(cls, type) and issubclass(cls, Strategy)):
                raise ApproxError(
                    f"plugin {plugin.distribution} registered {cls!r}: a strategy must be a "
                    "subclass of lm_eval_approx.strategies.Strategy"
                )
            reg.add(Entry(cls.name, cls, cls.description, plugin, tuple(aliases)))

        return register

    call_each("register_strategies", make_register)
    return reg


def strategy_registry() -> Registry:
    """Every registered selection strategy class, keyed by its ``name``."""
    return cached_registry("strategy", _build_strategy_registry)


def select(strategy: str, pool: CandidatePool, k: int, seed: int = 0,
           options: dict | None = None) -> Selection:
    """Run the registered strategy ``strategy`` (built-in or third-party) on ``pool``."""
    cls = strategy_registry().get(strategy).obj
    return cls(**(options or {})).run(pool, k, seed)
