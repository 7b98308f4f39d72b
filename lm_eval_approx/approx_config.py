"""What one approximation is: ``ApproxConfig``, every field checked when it is built.

Building one is pure: types, ranges, choices and the corpus spec's syntax, no file, task index or
plugin looked at, so a leaderboard checks every row's config in a moment and a config can be
planned where no data is. ``resolve()`` is the one step that reaches outside: it loads the task
(lm-eval's task, which reads its data) and finds the strategy among the registered plugins, and
returns a copy that keeps both (``task_spec``, ``strategy_class``). ``pipeline.py`` resolves before
it runs; ``--model approx`` builds and resolves it from ``--model_args`` (``harness/approx_model.py``),
and a leaderboard builds it from its config (every cell's fields, its top-level ``device``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lm_eval_approx.config_checks import (
    MIN_MAX_LENGTH,
    check_choice,
    check_int,
    check_text,
    help_field,
)
from lm_eval_approx.data.corpus import parse_corpus_spec
from lm_eval_approx.errors import ApproxError, ConfigError
from lm_eval_approx.features.config import DEFAULT_DIM, PROJECTIONS
from lm_eval_approx.features.generation import FINETUNED, SOURCES
from lm_eval_approx.models.devices import DTYPES, check_device
from lm_eval_approx.models.parameter_sets import HEAD, PARAMS_ACCEPTED, check_params
from lm_eval_approx.strategies.registry import strategy_registry
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

TASK_TARGETS = "task"
TARGET_SOURCES = (TASK_TARGETS, *SOURCES)


class UnresolvedConfigError(ApproxError, RuntimeError):
    """Something that ``resolve()`` loads was asked of a config that was not resolved."""

    def __init__(self, wanted: str):
        super().__init__(f"{wanted} is known once the config is resolved: call its resolve() first")


@dataclass
class ApproxConfig:
    """One approximation: which models, which candidates, which strategy, how many documents."""

    base: str = help_field("θ0: model folder, hub id, .gguf file or alias (smollm2-135m)", "")
    finetuned: str = help_field("θf: a full model folder or a PEFT adapter folder on top of θ0", "")
    task: str = help_field("approximation task whose loss and template are used (approx_agnews, approx_msmarco)", "approx_agnews")
    corpus: str = help_field("candidate corpus spec (seed:wikitext2+seed:dbpedia, a file, ...)", "seed:wikitext2+seed:dbpedia")
    corpus_size: int | None = help_field("draw this many candidates from the corpus (None: all)", None)
    corpus_seed: int = help_field("seed of the candidate draw", 0)
    strategy: str = help_field("registered strategy name (lm-eval-approx strategies)", "select")
    strategy_options: dict[str, Any] = help_field("options of the strategy (e.g. batch_size for select_batched)", None)
    k: int = help_field("number of documents to select", 100)
    seed: int = help_field("seed of the strategy (and of nothing upstream)", 0)
    params: str = help_field(f"gradient parameter set: {PARAMS_ACCEPTED}", HEAD)
    dim: int = help_field("projected feature dimension", DEFAULT_DIM)
    projection: str = help_field(f"{', '.join(PROJECTIONS)}", PROJECTIONS[0])
    projection_seed: int = help_field("seed of the projection matrices", 0)
    checkpoints: int = help_field("synthetic checkpoints M for gradient features (1: θf only)", 1)
    extract_batch_size: int = help_field("batch size of pseudo-labelling and feature extraction", 16)
    extract_max_length: int = help_field("tokens per example while labelling and extracting", 128)
    target_source: str = help_field(
        f"target texts of a target-matching baseline (rds, dsir, gen_knn): {' | '.join(TARGET_SOURCES)} "
        f"({TASK_TARGETS}: unlabelled texts of the task's training split; the others are sampled from θf with label "
        "words banned, θ0, or their contrast: the weights alone; features/generation.py)", FINETUNED)
    target_size: int = help_field("how many target texts a target-matching baseline aims at", 256)
    add_bos_token: bool | None = help_field(
        "lm-eval HFLM's add_bos_token (None: its default); labels, features and training encode with it, "
        "as lm-eval will score", None)
    device: str = help_field("where the models run while labelling, scoring losses, extracting, sampling and "
                             "embedding: cpu, cuda or cuda:N (a leaderboard's device); training and scoring place "
                             "their own", "cpu")
    extract_dtype: str = help_field(f"the models' dtype there: {' | '.join(DTYPES)} (sums over tokens stay float32; "
                                    "not float32: in the stages' keys)", DTYPES[0], choices=DTYPES)
    fused_labels: bool = help_field(
        "read θf's pseudo-labels in the forward of its own feature store (θf runs once for labels and features, "
        "whatever the strategy) where one row scores every choice: a classification task with at most one "
        "verbaliser longer than one token, params other than head_labels; elsewhere the two passes. "
        "True: in the labels' and that store's keys", False)

    def __post_init__(self) -> None:
        # What resolve() loads, kept beside the fields (not one of them: to_dict and equality see the config alone).
        self._task_spec: Any = None
        self._strategy_class: Any = None
        if self.strategy_options is None:
            self.strategy_options = {}
        for name in ("base", "finetuned", "corpus", "strategy", "task"):
            check_text(name, getattr(self, name))
        parse_corpus_spec(self.corpus)
        check_choice("target_source", self.target_source, TARGET_SOURCES)
        for name, low in (("k", 0), ("target_size", 1), ("dim", 1), ("checkpoints", 1), ("extract_batch_size", 1),
                          ("extract_max_length", MIN_MAX_LENGTH)):
            check_int(name, getattr(self, name), minimum=low)
        check_int("corpus_size", self.corpus_size, minimum=1, optional=True)
        if self.corpus_size is not None and self.k > self.corpus_size:
            raise ConfigError("k", self.k, f"at most corpus_size={self.corpus_size} documents")
        for name in ("corpus_seed", "seed", "projection_seed"):
            check_int(name, getattr(self, name), minimum=0)
        check_params(self.params)
        check_choice("projection", self.projection, PROJECTIONS)
        check_device("device", self.device)
        check_choice("extract_dtype", self.extract_dtype, DTYPES)
        if self.add_bos_token is not None and not isinstance(self.add_bos_token, bool):
            raise ConfigError("add_bos_token", self.add_bos_token, "true, false or None")
        if not isinstance(self.fused_labels, bool):
            raise ConfigError("fused_labels", self.fused_labels, "true or false")
        if not isinstance(self.strategy_options, dict) or not all(isinstance(o, str) for o in self.strategy_options):
            raise ConfigError("strategy_options", self.strategy_options, "a mapping of option names to values")

    def resolve(self) -> ApproxConfig:
        """A copy of this config with its task loaded (``get_task_spec``: lm-eval's task and its data;
        ``UnknownTaskError``, ``TaskLoadError``, ``DataNotFoundError`` or ``TaskKindError``) and its
        strategy found among the registered ones (``UnknownNameError``); a resolved config is its own
        resolution."""
        if self._task_spec is not None:
            return self
        resolved = dataclasses.replace(self)
        resolved._task_spec = get_task_spec(self.task)
        resolved._strategy_class = strategy_registry().get(self.strategy).obj
        return resolved

    @property
    def task_spec(self):
        """The task's spec (``tasks/lm_eval_spec.py``), loaded by ``resolve()``."""
        if self._task_spec is None:
            raise UnresolvedConfigError("the task spec of an ApproxConfig")
        return self._task_spec

    @property
    def strategy_class(self):
        """The registered strategy class that ``strategy`` names, found by ``resolve()``."""
        if self._strategy_class is None:
            raise UnresolvedConfigError("the strategy class of an ApproxConfig")
        return self._strategy_class

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
