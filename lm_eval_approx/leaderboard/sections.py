"""The smaller sections of a leaderboard config: ``expert:``, ``corpus:``, ``extra_tasks:``,
``include_path:``, ``similarity:`` and ``resources:``, each parsed and checked by its form alone
(what exists on disk or in a task index is looked up when the config is resolved)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lm_eval_approx.config_checks import check_int, check_number
from lm_eval_approx.leaderboard.checks import check_corpus_spec, check_task_name, field_error
from lm_eval_approx.leaderboard.rows import mapping

RESOURCE_KEYS = ("num_cpus", "num_gpus")
CORPUS_KEYS = ("spec", "size", "seed")
SIMILARITY_KEYS = ("embed", "reference_size")
DEFAULT_REFERENCE_SIZE = 500
# expert.data naming the target task's own training split rather than a corpus spec.
TASK_DATA = "task"


def positive_int(key: str, value: object, allow_none: bool = False) -> int | None:
    return check_int(key, value, minimum=1, optional=allow_none,
                     accepted="a positive integer" + (" or null" if allow_none else ""), error=field_error)


def check_flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise field_error(key, value, "true or false")
    return value


def known_keys(key: str, raw: dict, known: tuple[str, ...]) -> dict:
    """``raw`` when every key is in ``known``; else an error naming the first other key, dotted
    under ``key`` (the top level: ``key`` empty)."""
    for name in raw:
        if name not in known and key:
            raise field_error(f"{key}.{name}", raw[name], ", ".join(known))
        if name not in known:
            raise field_error(name, raw[name], "a leaderboard key: " + ", ".join(known))
    return raw


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
            positive_int(f"{key}.size", self.size, allow_none=True)
        check_int(f"{key}.seed", self.seed, minimum=0, error=field_error)
        mapping(f"{key}.recipe", self.recipe)


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


def parse_expert(raw: object) -> ExpertConfig:
    expert = ExpertConfig(**known_keys("expert", mapping("expert", raw), ("adapter", "data", "size", "seed", "recipe")))
    expert.validate()
    return expert


def parse_corpus(raw: object) -> CorpusConfig:
    """``corpus:``, a mapping of spec, size and seed, or a plain string read as the spec."""
    corpus = CorpusConfig(**known_keys("corpus", {"spec": raw} if isinstance(raw, str) else mapping("corpus", raw),
                                        CORPUS_KEYS))
    check_corpus_spec("corpus.spec", corpus.spec)
    positive_int("corpus.size", corpus.size, allow_none=True)
    check_int("corpus.seed", corpus.seed, minimum=0, error=field_error)
    return corpus


def parse_extra_tasks(raw: object) -> list[TaskEntry]:
    """``extra_tasks:``, each a task name or {name: TASK, limit: N} (whether lm-eval knows the name is
    checked by resolve)."""
    items = raw or []
    if not isinstance(items, list):
        raise field_error("extra_tasks", items, "a list of lm-eval task names")
    entries = []
    for i, entry in enumerate(items):
        key = f"extra_tasks[{i}]"
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or set(entry) - {"name", "limit"} or "name" not in entry:
            raise field_error(key, entry, "a task name or {name: TASK, limit: N}")
        entries.append(TaskEntry(check_task_name(f"{key}.name", entry["name"]),
                                 positive_int(f"{key}.limit", entry.get("limit"), allow_none=True)))
    return entries


def parse_include_path(raw: object) -> list[str]:
    """``include_path:``, one folder or a list (that they exist is checked by resolve)."""
    include = raw or []
    include = [include] if isinstance(include, str) else include
    if not isinstance(include, list) or not all(isinstance(p, str) and p.strip() for p in include):
        raise field_error("include_path", include, "a folder of lm-eval task YAML, or a list of them")
    return list(include)


def parse_similarity(raw: object) -> dict[str, Any]:
    similarity = known_keys("similarity", mapping("similarity", raw), SIMILARITY_KEYS)
    positive_int("similarity.reference_size", similarity.get("reference_size", DEFAULT_REFERENCE_SIZE))
    if not isinstance(similarity.get("embed", True), bool):
        raise field_error("similarity.embed", similarity["embed"], "true or false")
    return similarity


def parse_resources(raw: object) -> dict[str, float]:
    """``resources``: CPUs (> 0) and GPUs (≥ 0, fractions share one) that one cell asks a scheduler for."""
    resources = known_keys("resources", mapping("resources", raw), RESOURCE_KEYS)
    for key, value in resources.items():
        check_number(f"resources.{key}", value, low=0.0, low_open=key == "num_cpus", error=field_error,
                     accepted="a number > 0" if key == "num_cpus" else "a number ≥ 0")
    return resources
