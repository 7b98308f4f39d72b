"""Leaderboard configuration: a YAML file (or a shipped preset) parsed into dataclasses and validated
completely before anything is computed, so that a typo fails in a second, naming its config key.

Layout (every key but ``base``, ``expert`` and ``strategies`` has a default)::

    name: cpu-small
    base: smollm2-135m
    task: approx_agnews            # target: any approximable lm-eval task (lm-eval-approx tasks --approximable)
    include_path: [my_tasks/]      # folders of task YAML (relative to the working directory), like --include_path
    metric: acc                    # optional; default: the task's first metric
    expert: {adapter: DIR}         # a given model/adapter, or how to make one:
    expert: {data: ag_news:train, size: 1000, seed: 0, recipe: {epochs: 2}}
    expert: {data: task, size: 1000}   # the target task's own training split (through lm-eval)
    corpus: {spec: seed:wikitext2+seed:dbpedia, size: 2000, seed: 0}
    strategies: [random, {name: select, label: select_changed, options: {}, approx: {params: changed},
                          budgets: [500], seeds: [0]},
                 {name: select, label: select_2ep, recipe: {epochs: 2}}]   # recipe: this row's retraining
    budgets: [300]
    seeds: [0]
    seed_retraining: true          # a cell's seed also seeds its retraining (LoRA init, order, dropout)
    extra_tasks: [approx_wikitext, {name: hellaswag, limit: 100}]
    limit: 200                     # lm-eval --limit of every task (null: whole split)
    recipe: {epochs: 2}            # TrainingRecipe fields, for the expert and every approximation
    condition: weights             # what the approximations may know of the target: weights (θ0, θf,
                                   # the pool, the prompt), task_texts (also unlabelled texts of the task's
                                   # training split) or true_data (a ceiling); sets the rule's monitor texts
                                   # and the baselines' target texts
    retraining: {}                 # fields for the approximations only, over recipe (default: the
                                   # retraining rule of the task's kind, training/retraining_rule.py;
                                   # {}: approximations retrain with recipe as the expert does)
    approx: {dim: 4096}            # ApproxConfig fields shared by all strategies
    similarity: {embed: true, reference_size: 500}
    device: cpu                    # cpu, cuda or cuda:N: where every cell runs, the approximations' labels,
                                   # losses, features, samples and encoders included (approx.extract_dtype:
                                   # their dtype, float32 by default)
    resources: {num_cpus: 4, num_gpus: 1}   # what one cell asks of --executor ray or slurm (--num-cpus and
                                   # --num-gpus override; default: 1 CPU, 1 GPU when device is cuda)
    batch_size: 16

``--set key=value`` overrides any key (dotted for nesting: ``--set expert.size=100``); the value is
read as YAML (``--set budgets=[10,20]``).

Building a config (``config_from_dict``) checks each key's type, range and choices and looks at
nothing outside the mapping. ``LeaderboardConfig.resolve()`` is the one step that does: it finds the
include folders, the strategies and the extra tasks, loads the target task (lm-eval reads its data)
and fills ``retraining`` from the rule when the config leaves it unset. Runs, cell hashes and
estimates use the resolved copy; only a dry run gets by without it (``commands/leaderboard.py``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from lm_eval_approx.approx_config import ApproxConfig, UnresolvedConfigError
from lm_eval_approx.config_checks import check_choice, check_int, check_text
from lm_eval_approx.errors import ConfigError

# LeaderboardConfigError, TargetNotLoadedError and field_error are part of this module's interface
# (tests, sources.py, the leaderboard command), and so are the sections' names (runner, docs).
from lm_eval_approx.leaderboard.checks import (
    LeaderboardConfigError,
    TargetNotLoadedError,
    check_include_path,
    check_task,
    check_task_name,
    field_error,
    load_target,
)
from lm_eval_approx.leaderboard.rows import (
    StrategyConfig,
    check_approx,
    check_strategy,
    int_list,
    mapping,
    parse_strategies,
)
from lm_eval_approx.leaderboard.sections import (
    DEFAULT_REFERENCE_SIZE,
    TASK_DATA,
    CorpusConfig,
    ExpertConfig,
    TaskEntry,
    check_flag,
    known_keys,
    parse_corpus,
    parse_expert,
    parse_extra_tasks,
    parse_include_path,
    parse_resources,
    parse_similarity,
    positive_int,
)
from lm_eval_approx.models.devices import check_device
from lm_eval_approx.strategies.base import TARGET_TEXTS
from lm_eval_approx.strategies.registry import strategy_registry
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.training.retraining_rule import CONDITIONS, WEIGHTS, rule_for_task

TOP_KEYS = ("name", "base", "task", "include_path", "metric", "expert", "corpus", "strategies", "budgets", "seeds",
            "condition",
            "extra_tasks", "limit", "recipe", "retraining", "approx", "similarity", "device", "batch_size",
            "seed_retraining", "resources")


@dataclass(frozen=True)
class Cell:
    """One model to score: θ0, the expert, or one (strategy label, k, seed) approximation."""

    id: str
    kind: str
    label: str = ""
    k: int = 0
    seed: int = 0


THETA0, EXPERT, APPROX = "theta0", "expert", "approx"
# The target texts a baseline aims at under each condition: sampled from θf, or the task's own.
CONDITION_TARGETS = {"weights": "finetuned", "task_texts": "task", "true_data": "task"}


@dataclass
class LeaderboardConfig:
    """A whole leaderboard grid (see the module docstring for the YAML layout)."""

    base: str
    expert: ExpertConfig
    strategies: list[StrategyConfig]
    name: str = "leaderboard"
    task: str = "approx_agnews"
    metric: str | None = None
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    budgets: list[int] = field(default_factory=lambda: [100])
    seeds: list[int] = field(default_factory=lambda: [0])
    extra_tasks: list[TaskEntry] = field(default_factory=list)
    limit: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    approx: dict[str, Any] = field(default_factory=dict)
    similarity: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    batch_size: int = 16
    include_path: list[str] = field(default_factory=list)
    seed_retraining: bool = False
    condition: str = WEIGHTS
    # None: the retraining rule of the task's kind under ``condition``, filled in by resolve().
    retraining: dict[str, Any] | None = None
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # What resolve() loads, kept beside the fields (not one of them: to_dict and equality see the config alone).
        self._task_spec: Any = None

    def resolve(self) -> LeaderboardConfig:
        """A copy of this config with what it names looked up, each failure a named error naming its
        key: the include folders, every strategy with its options (the plugin registry), the extra
        tasks (lm-eval's task index), then the target task, which lm-eval loads with its data
        (``task_spec``; ``TargetNotLoadedError`` when the task is known but does not load), and an
        unset ``retraining`` from the rule. A resolved config is its own resolution."""
        if self._task_spec is not None:
            return self
        check_include_path(self.include_path)
        for i, strategy in enumerate(self.strategies):
            check_strategy(f"strategies[{i}]", strategy)
        for i, task in enumerate(self.extra_tasks):
            check_task(f"extra_tasks[{i}].name", task.name, self.include_path)
        spec = load_target("task", self.task, self.include_path)
        rule = rule_for_task(spec, self.condition) if self.retraining is None else self.retraining
        resolved = dataclasses.replace(self, retraining=rule)
        resolved._task_spec = spec
        _check_recipes(resolved)
        return resolved

    @property
    def task_spec(self):
        """The target task's spec, loaded by ``resolve()``."""
        if self._task_spec is None:
            raise UnresolvedConfigError("the target task's spec of a leaderboard config")
        return self._task_spec

    def strategy(self, label: str) -> StrategyConfig:
        return next(s for s in self.strategies if s.label == label)

    def cells(self) -> list[Cell]:
        """θ0, the expert, then every strategy × its budgets × its seeds, in config order."""
        cells = [Cell(THETA0, THETA0), Cell(EXPERT, EXPERT)]
        for s in self.strategies:
            for k in s.budgets or self.budgets:
                for seed in s.seeds or self.seeds:
                    cells.append(Cell(f"{s.label}-k{k}-s{seed}", APPROX, s.label, k, seed))
        return cells

    def chosen_cells(self, patterns: list[str] | None = None) -> list[Cell]:
        """The cells whose id matches one of the shell-style ``patterns`` (``--only``), ordered by
        the first pattern each matches, config order within a pattern; every cell without patterns.
        A pattern that matches no cell is an error naming the cell ids there are."""
        cells = self.cells()
        if not patterns:
            return cells
        chosen: dict[str, Cell] = {}
        for pattern in patterns:
            matched = [cell for cell in cells if fnmatch.fnmatchcase(cell.id, pattern)]
            if not matched:
                raise field_error("--only", pattern, "a shell-style pattern matching at least one cell id of this "
                                  "config: " + ", ".join(cell.id for cell in cells))
            chosen.update((cell.id, cell) for cell in matched if cell.id not in chosen)
        return list(chosen.values())

    def tasks(self) -> list[TaskEntry]:
        """The target first, then the extra tasks."""
        return [TaskEntry(self.task, self.limit), *self.extra_tasks]

    def recipe_for(self, overrides: dict[str, Any] | None = None):
        """The expert's recipe: ``recipe`` with ``overrides`` (``expert.recipe``) over it."""
        return TrainingRecipe.from_dict({**self.recipe, **(overrides or {})})

    def target_source_for(self, label: str) -> str | None:
        """Where row ``label``'s target texts come from (None: its strategy aims at none): its own or
        the shared ``approx.target_source``, else the condition's (sampled from θf under weights)."""
        strategy = self.strategy(label)
        if TARGET_TEXTS not in strategy_registry().get(strategy.name).obj.requires:
            return None
        return {**self.approx, **strategy.approx}.get("target_source") or CONDITION_TARGETS[self.condition]

    def retraining_for(self, label: str):
        """The retraining recipe of strategy row ``label``: ``recipe``, then ``retraining`` (the
        rule), then the row's own ``recipe``."""
        if self.retraining is None:
            raise UnresolvedConfigError("the retraining rule of a leaderboard config")
        return TrainingRecipe.from_dict({**self.recipe, **self.retraining, **self.strategy(label).recipe})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(data: dict[str, Any]) -> LeaderboardConfig:
    """Check every key of a parsed YAML mapping and build the config; nothing outside the mapping is
    looked at (``LeaderboardConfig.resolve`` does that)."""
    if not isinstance(data, dict):
        raise field_error("config", data, "a YAML mapping")
    known_keys("", data, TOP_KEYS)
    metric = data.get("metric")
    config = LeaderboardConfig(
        base=check_text("base", data.get("base"), "a model folder, hub id or alias (tiny preset: --set base=PATH)",
                        error=field_error),
        expert=parse_expert(data.get("expert")), strategies=parse_strategies(data.get("strategies")),
        name=check_text("name", data.get("name", "leaderboard"), error=field_error),
        task=check_task_name("task", data.get("task", "approx_agnews")),
        metric=None if metric is None else check_text("metric", metric, "a metric name such as acc, or null for the "
                                                      "task's first", error=field_error),
        corpus=parse_corpus(data.get("corpus")), budgets=int_list("budgets", data.get("budgets", [100]), 1),
        seeds=int_list("seeds", data.get("seeds", [0]), 0), extra_tasks=parse_extra_tasks(data.get("extra_tasks")),
        limit=positive_int("limit", data.get("limit"), allow_none=True), recipe=mapping("recipe", data.get("recipe")),
        approx=check_approx("approx", mapping("approx", data.get("approx"))),
        similarity=parse_similarity(data.get("similarity")),
        # The form only: a Ray or SLURM driver, or --dry-run, plans GPU cells on a machine without one.
        device=check_device("device", data.get("device", "cpu"), error=field_error),
        batch_size=check_int("batch_size", data.get("batch_size", 16), minimum=1, accepted="a positive integer",
                             error=field_error),
        include_path=parse_include_path(data.get("include_path")),
        seed_retraining=check_flag("seed_retraining", data.get("seed_retraining", False)),
        condition=check_choice("condition", data.get("condition", WEIGHTS), CONDITIONS, error=field_error,
                               accepted="what the approximations may know: " + ", ".join(CONDITIONS)),
        retraining=mapping("retraining", data["retraining"]) if "retraining" in data else None,
        resources=parse_resources(data.get("resources")),
    )
    _check_budgets(config)
    _check_recipes(config)
    _check_approx_values(config)
    return config


def _check_budgets(config: LeaderboardConfig) -> None:
    """No budget asks for more documents than the corpus draws."""
    if config.corpus.size is None:
        return
    for i, s in enumerate(config.strategies):
        for k in s.budgets or config.budgets:
            if k > config.corpus.size:
                raise field_error(f"strategies[{i}].budgets" if s.budgets else "budgets", k,
                                  f"k ≤ corpus.size ({config.corpus.size})")


def _check_approx_values(config: LeaderboardConfig) -> None:
    """Every strategy's ApproxConfig overrides hold accepted values (models are not looked at)."""
    for i, s in enumerate(config.strategies):
        try:
            ApproxConfig(base="-", finetuned="-", task=config.task, corpus=config.corpus.spec, strategy=s.name,
                         **{**config.approx, **s.approx})
        except ConfigError as exc:
            key = f"strategies[{i}].approx" if exc.field in s.approx else "approx"
            raise field_error(f"{key}.{exc.field}", exc.value, exc.accepted) from None


def _check_recipes(config: LeaderboardConfig) -> None:
    """Every recipe the config makes is accepted: the expert's, and once ``retraining`` is known
    (stated, or the rule after resolve) every row's retraining."""
    checks: list[tuple[str, Callable[[], object]]] = [
        ("recipe", lambda: config.recipe_for()), ("expert.recipe", lambda: config.recipe_for(config.expert.recipe))]
    retraining = config.retraining
    if retraining is not None:
        checks.append(("retraining", lambda: TrainingRecipe.from_dict({**config.recipe, **retraining})))
        checks += [(f"strategies[{i}].recipe", partial(config.retraining_for, s.label))
                   for i, s in enumerate(config.strategies) if s.recipe]
    for key, build in checks:
        try:
            build()
        except ConfigError as exc:
            raise field_error(f"{key}.{exc.field}", exc.value, exc.accepted) from exc
