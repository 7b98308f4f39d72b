"""The built-in plugin: registers built-in strategies, task folders and commands through the same
hooks a third-party plugin uses."""

from __future__ import annotations

import importlib
from pathlib import Path

from lm_eval_approx.hookspecs import hookimpl

# "module:Class" of each built-in strategy, imported when the registry is first built.
BUILTIN_STRATEGIES = [
    "lm_eval_approx.strategies.random:RandomStrategy",
    "lm_eval_approx.strategies.topk:TopkStrategy",
    "lm_eval_approx.strategies.topk:TopkBalancedStrategy",
    "lm_eval_approx.strategies.likelihood:LikelihoodMinStrategy",
    "lm_eval_approx.strategies.likelihood:LikelihoodMaxStrategy",
    "lm_eval_approx.strategies.likelihood:LikelihoodRatioStrategy",
    "lm_eval_approx.strategies.select:SelectStrategy",
    "lm_eval_approx.strategies.select:SelectBatchedStrategy",
    "lm_eval_approx.strategies.select:SelectCheckpointsStrategy",
    "lm_eval_approx.strategies.omp:SelectOmpStrategy",
]

# Modules under lm_eval_approx.commands, each with ``add_parser(subparsers)``.
BUILTIN_COMMANDS = [
    "run",
    "listing",
    "train",
    "select",
    "features",
    "leaderboard",
]


def _load(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@hookimpl
def register_strategies(register):
    for ref in BUILTIN_STRATEGIES:
        register(_load(ref))


@hookimpl
def register_tasks(register):
    from lm_eval_approx import tasks

    register(Path(tasks.__file__).parent)


@hookimpl
def register_commands(cli):
    for name in BUILTIN_COMMANDS:
        importlib.import_module(f"lm_eval_approx.commands.{name}").add_parser(cli)
