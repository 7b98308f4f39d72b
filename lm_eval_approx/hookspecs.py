"""The hooks a plugin can implement. Built-ins use the same hooks (see ``default_plugins.py``)."""

from __future__ import annotations

import pluggy

PROJECT = "lm_eval_approx"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_strategies(register):
    """Called once when the strategy registry is first built.

    Call ``register(strategy_class, aliases=())`` for each selection strategy the plugin provides;
    the class subclasses ``lm_eval_approx.strategies.Strategy``. Returns nothing.
    """


@hookspec
def register_tasks(register):
    """Called once when the task registry is first built.

    Call ``register(path)`` with a folder of lm-eval task YAML files; every task and group in it
    becomes visible to ``lm-eval-approx run`` without ``--include_path``. Returns nothing.
    """


@hookspec
def register_commands(cli):
    """Called when the ``lm-eval-approx`` command line is built.

    ``cli`` is an argparse sub-parsers object: ``p = cli.add_parser(name, help=...)`` then
    ``p.set_defaults(func=callable_taking_args)``. Returns nothing.
    """
