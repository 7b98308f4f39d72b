"""The built-in plugin: registers built-in strategies, task folders and commands through the same
hooks a third-party plugin uses.

It sits at the top of the package, like a third-party plugin would: the plugin manager imports it
by name (``plugins/manager.py``), so nothing below it depends on the strategies and commands it
registers. Strategies are named as ``module:Class`` and imported when the strategy registry is
first built, so the command line starts without importing the selection engines.
"""

from __future__ import annotations

import importlib

from lm_eval_approx import tasks
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
    "lm_eval_approx.strategies.select_omp:SelectOmpStrategy",
    "lm_eval_approx.strategies.constrained:SelectQuotaStrategy",
    "lm_eval_approx.strategies.constrained:SelectLikelyStrategy",
    "lm_eval_approx.strategies.rds:RdsStrategy",
    "lm_eval_approx.strategies.dsir:DsirStrategy",
    "lm_eval_approx.strategies.gen_knn:GenKnnStrategy",
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
    register(tasks.configs_folder())


@hookimpl
def register_commands(cli):
    for name in BUILTIN_COMMANDS:
        importlib.import_module(f"lm_eval_approx.commands.{name}").add_parser(cli)
