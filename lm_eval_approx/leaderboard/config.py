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
    device: cpu
    batch_size: 16

``--set key=value`` overrides any key (dotted for nesting: ``--set expert.size=100``); the value is
read as YAML (``--set budgets=[10,20]``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from lm_eval_approx.errors import ConfigError

# LeaderboardConfigError and field_error are part of this module's interface (tests, sources.py).
from lm_eval_approx.leaderboard.checks import (
    LeaderboardConfigError,
    check_corpus_spec,
    check_task,
    field_error,
)
from lm_eval_approx.leaderboard.rows import (
    StrategyConfig,
    check_approx,
    int_list,
    mapping,
    parse_strategy,
)
from lm_eval_approx.pipeline import ApproxConfig
from lm_eval_approx.plugins.registry import include_task_folders
from lm_eval_approx.tasks.specs import get_task_spec
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.strategies.base import TARGET_TEXTS
from lm_eval_approx.strategies.registry import strategy_registry
from lm_eval_approx.training.retraining_rule import CONDITIONS, WEIGHTS, rule_for_task
from lm_eval_approx.validation import check_int

TOP_KEYS = ("name", "base", "task", "include_path", "metric", "expert", "corpus", "strategies", "budgets", "seeds",
            "condition",
            "extra_tasks", "limit", "recipe", "retraining", "approx", "similarity", "device", "batch_size",
            "seed_retraining")
DEFAULT_REFERENCE_SIZE = 500
# expert.data naming the target task's own training split rather than a corpus spec.
TASK_DATA = "task"


def _positive_int(key: str, value: object, allow_none: bool = False) -> None:
    check_int(key, value, minimum=1, optional=allow_none,
              accepted="a positive integer" + (" or null" if allow_none else ""), error=field_error)


@dataclass
class ExpertConfig:
    """θf: a given model or adapter (``adapter``), or θ0 trained on ``size`` documents of ``data``
    (true labels) with the leaderboard recipe updated by ``recipe``."""

    adapter: str | None = None
    data: str | None = None
    size: int | None = None
    seed: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)

    def validate(self, key: str = "expert") -> None:
        if self.adapter is None and self.data is None:
            raise field_error(key, None, "expert.adapter (a model or adapter folder) or expert.data "
                                   "(a corpus with true labels, e.g. ag_news:train, or 'task': the target "
                                   "task's training split) with expert.size")
        if self.adapter is not None and self.data is not None:
            raise field_error(key, {"adapter": self.adapter, "data": self.data}, "either adapter or data, not both")
        if self.adapter is not None and (not isinstance(self.adapter, str) or not self.adapter.strip()):
            raise field_error(f"{key}.adapter", self.adapter, "a model/adapter folder or alias")
        if self.data is not None:
            if self.data != TASK_DATA:
                check_corpus_spec(f"{key}.data", self.data)
            _positive_int(f"{key}.size", self.size, allow_none=True)
        check_int(f"{key}.seed", self.seed, minimum=0, error=field_error)


@dataclass
class CorpusConfig:
    """The candidate corpus: a spec, how many documents to draw (null: all) and the draw's seed."""

    spec: str = "seed:wikitext2+seed:dbpedia"
    size: int | None = None
    seed: int = 0


@dataclass
class TaskEntry:
    name: str
    limit: int | None = None


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
    retraining: dict[str, Any] = field(default_factory=dict)

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
        return TrainingRecipe.from_dict({**self.recipe, **self.retraining, **self.strategy(label).recipe})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_approx_values(config: LeaderboardConfig) -> None:
    """Every strategy's ApproxConfig overrides hold accepted values (models are not looked at)."""
    for i, s in enumerate(config.strategies):
        try:
            ApproxConfig(base="-", finetuned="-", task=config.task, corpus=config.corpus.spec, strategy=s.name,
                         **{**config.approx, **s.approx})
        except ConfigError as exc:
            key = f"strategies[{i}].approx" if exc.field in s.approx else "approx"
            raise field_error(f"{key}.{exc.field}", exc.value, exc.accepted) from None


def _task_entry(key: str, raw: object) -> TaskEntry:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or set(raw) - {"name", "limit"} or "name" not in raw:
        raise field_error(key, raw, "a task name or {name: TASK, limit: N}")
    check_task(f"{key}.name", raw["name"], approximation=False)
    _positive_int(f"{key}.limit", raw.get("limit"), allow_none=True)
    return TaskEntry(raw["name"], raw.get("limit"))


def config_from_dict(data: dict[str, Any]) -> LeaderboardConfig:
    """Validate every key of a parsed YAML mapping and build the config (no model or data is touched
    except lm-eval's task index, to check extra task names)."""
    if not isinstance(data, dict):
        raise field_error("config", data, "a YAML mapping")
    for key in data:
        if key not in TOP_KEYS:
            raise field_error(key, data[key], "a leaderboard key: " + ", ".join(TOP_KEYS))
    base = data.get("base")
    if not isinstance(base, str) or not base.strip():
        raise field_error("base", base, "a model folder, hub id or alias (tiny preset: --set base=PATH)")
    include = data.get("include_path") or []
    include = [include] if isinstance(include, str) else include
    if not isinstance(include, list) or not all(isinstance(p, str) and p.strip() for p in include):
        raise field_error("include_path", include, "a folder of lm-eval task YAML, or a list of them")
    try:
        include_task_folders(include)
    except ConfigError as exc:
        raise field_error("include_path", exc.value, exc.accepted) from None
    check_task("task", data.get("task", "approx_agnews"), approximation=True)
    expert_raw = mapping("expert", data.get("expert"))
    known = {f.name for f in dataclasses.fields(ExpertConfig)}
    for key in expert_raw:
        if key not in known:
            raise field_error(f"expert.{key}", expert_raw[key], "adapter, data, size, seed, recipe")
    expert = ExpertConfig(**expert_raw)
    expert.validate()
    corpus_raw = mapping("corpus", data.get("corpus"))
    if isinstance(data.get("corpus"), str):
        corpus_raw = {"spec": data["corpus"]}
    corpus = CorpusConfig(**{k: v for k, v in corpus_raw.items() if k in ("spec", "size", "seed")})
    if set(corpus_raw) - {"spec", "size", "seed"}:
        bad = sorted(set(corpus_raw) - {"spec", "size", "seed"})[0]
        raise field_error(f"corpus.{bad}", corpus_raw[bad], "spec, size, seed")
    check_corpus_spec("corpus.spec", corpus.spec)
    _positive_int("corpus.size", corpus.size, allow_none=True)
    check_int("corpus.seed", corpus.seed, minimum=0, error=field_error)
    mapping("expert.recipe", expert.recipe)
    for key in ("name", "device"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            raise field_error(key, data[key], "a non-empty string")
    if data.get("metric") is not None and (not isinstance(data["metric"], str) or not data["metric"].strip()):
        raise field_error("metric", data["metric"], "a metric name such as acc, or null for the task's first")
    budgets = int_list("budgets", data.get("budgets", [100]), 1)
    seeds = int_list("seeds", data.get("seeds", [0]), 0)
    raw_strategies = data.get("strategies")
    if not isinstance(raw_strategies, list) or not raw_strategies:
        raise field_error("strategies", raw_strategies, "a non-empty list of registered strategy names")
    strategies = [parse_strategy(f"strategies[{i}]", s) for i, s in enumerate(raw_strategies)]
    labels = [s.label for s in strategies]
    if len(set(labels)) != len(labels):
        raise field_error("strategies", labels, "distinct labels (set label: for a second entry of one strategy)")
    if corpus.size is not None:
        for i, s in enumerate(strategies):
            for k in s.budgets or budgets:
                if k > corpus.size:
                    raise field_error(f"strategies[{i}].budgets" if s.budgets else "budgets", k,
                                f"k ≤ corpus.size ({corpus.size})")
    extra = data.get("extra_tasks") or []
    if not isinstance(extra, list):
        raise field_error("extra_tasks", extra, "a list of lm-eval task names")
    _positive_int("limit", data.get("limit"), allow_none=True)
    _positive_int("batch_size", data.get("batch_size", 16))
    condition = data.get("condition", WEIGHTS)
    if condition not in CONDITIONS:
        raise field_error("condition", condition, "what the approximations may know: " + ", ".join(CONDITIONS))
    approx = mapping("approx", data.get("approx"))
    check_approx("approx", approx)
    config = LeaderboardConfig(
        base=base, expert=expert, strategies=strategies, name=str(data.get("name", "leaderboard")),
        task=data.get("task", "approx_agnews"), metric=data.get("metric"), corpus=corpus, budgets=budgets,
        seeds=seeds, extra_tasks=[_task_entry(f"extra_tasks[{i}]", t) for i, t in enumerate(extra)],
        limit=data.get("limit"), recipe=mapping("recipe", data.get("recipe")), approx=approx,
        similarity=mapping("similarity", data.get("similarity")), device=str(data.get("device", "cpu")),
        batch_size=data.get("batch_size", 16), include_path=list(include),
        seed_retraining=data.get("seed_retraining", False),
        retraining=(mapping("retraining", data["retraining"]) if "retraining" in data
                    else rule_for_task(get_task_spec(data.get("task", "approx_agnews")), condition)),
        condition=condition,
    )
    if not isinstance(config.seed_retraining, bool):
        raise field_error("seed_retraining", config.seed_retraining, "true or false")
    _check_recipes(config)
    _check_approx_values(config)
    for key in config.similarity:
        if key not in ("embed", "reference_size"):
            raise field_error(f"similarity.{key}", config.similarity[key], "embed, reference_size")
    _positive_int("similarity.reference_size", config.similarity.get("reference_size", DEFAULT_REFERENCE_SIZE))
    if not isinstance(config.similarity.get("embed", True), bool):
        raise field_error("similarity.embed", config.similarity["embed"], "true or false")
    return config


def _check_recipes(config: LeaderboardConfig) -> None:
    checks = [("recipe", lambda: config.recipe_for()), ("expert.recipe", lambda: config.recipe_for(config.expert.recipe)),
              ("retraining", lambda: TrainingRecipe.from_dict({**config.recipe, **config.retraining}))]
    checks += [(f"strategies[{i}].recipe", lambda s=s: config.retraining_for(s.label))
               for i, s in enumerate(config.strategies) if s.recipe]
    for key, build in checks:
        try:
            build()
        except ConfigError as exc:
            raise field_error(f"{key}.{exc.field}", exc.value, exc.accepted) from exc
