"""The whole approximation, one stage after another, each cached (see ``cache/stages.py``):

corpus → pseudo-labels (θf) → [θ0 losses] → [gradient features] → selection → retraining of θ0.

Bracketed stages run only when the strategy needs them (``Strategy.requires``). The result is
the folder of a PEFT adapter (or full model) that lm-eval scores with ``peft=`` on top of θ0.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from lm_eval_approx.cache.stages import StageRecord, run_stage
from lm_eval_approx.data.corpus import load_corpus
from lm_eval_approx.data.selection_file import (
    read_selection,
    selection_hash,
    write_selection,
)
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.config import DEFAULT_DIM, PROJECTIONS, FeatureConfig
from lm_eval_approx.features.generation import FINETUNED, SOURCES, GenerationSettings, generated_texts
from lm_eval_approx.models.loading import load_model, load_tokenizer, model_fingerprint
from lm_eval_approx.models.pairs import check_model_pair
from lm_eval_approx.models.parameter_sets import HEAD, PARAMS_ACCEPTED, check_params
from lm_eval_approx.strategies.base import (
    BASE_ENCODER,
    FEATURES,
    LABELS,
    LOSS_BASE,
    LOSS_FINETUNED,
    SENTENCE_ENCODER,
    TARGET_TEXTS,
)
from lm_eval_approx.strategies.pool import build_pool, selection_rows
from lm_eval_approx.strategies.registry import select, strategy_registry
from lm_eval_approx.tasks.kinds import CLASSIFICATION, task_key
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec
from lm_eval_approx.training.recipe import TASK_MONITOR, TrainingRecipe
from lm_eval_approx.training.stop_signals import monitor_identity
from lm_eval_approx.validation import (
    MIN_MAX_LENGTH,
    check_choice,
    check_int,
    check_text,
    help_field,
)

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.npy"
LOSS_FILE = "loss.npy"
SELECTION_FILE = "selection.jsonl"
LABEL_STAGE = "labels"
BASE_LOSS_STAGE = "base_loss"
FEATURE_STAGE = "features"
SELECTION_STAGE = "selection"
TRAINING_STAGE = "training"
FEATURE_DIR = "features"
TASK_TARGETS = "task"
TARGET_SOURCES = (TASK_TARGETS, *SOURCES)
TARGET_SEED = 0  # one draw of target texts per grid: rows and seeds aim at the same texts, like select


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

    def __post_init__(self) -> None:
        if self.strategy_options is None:
            self.strategy_options = {}
        for name in ("base", "finetuned", "corpus", "strategy", "task"):
            check_text(name, getattr(self, name))
        get_task_spec(self.task)
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
        if self.add_bos_token is not None and not isinstance(self.add_bos_token, bool):
            raise ConfigError("add_bos_token", self.add_bos_token, "true, false or None")
        if not isinstance(self.strategy_options, dict) or not all(isinstance(o, str) for o in self.strategy_options):
            raise ConfigError("strategy_options", self.strategy_options, "a mapping of option names to values")
        strategy_registry().get(self.strategy)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ApproxResult:
    """The adapter folder, the selection file and every stage's record."""

    adapter: Path
    selection: Path
    stages: list[StageRecord]

    def labels(self) -> list[str]:
        """Each stage's name, with ``@α`` for the feature stages of synthetic checkpoints before θf
        (``features@1/3``), so the records of one run stay apart."""
        return [s.name if "alpha" not in s.info else f"{s.name}{STAGE_ALPHA_SEPARATOR}{s.info['alpha']}"
                for s in self.stages]

    def stage(self, name: str) -> StageRecord:
        """The record of the stage called ``name`` (the last one, for a repeated name)."""
        found = [s for s in self.stages if s.name == name]
        if not found:
            raise KeyError(f"no stage {name!r} in this run (stages: {', '.join(self.labels())})")
        return found[-1]

    def info(self) -> dict[str, Any]:
        labels = self.labels()
        return {
            "stage_keys": {label: s.key for label, s in zip(labels, self.stages)},
            "stage_seconds": {label: round(s.seconds, 3) for label, s in zip(labels, self.stages)},
            "stage_cached": {label: s.cached for label, s in zip(labels, self.stages)},
            "selected": self.stage(SELECTION_STAGE).info.get("selected"),
        }


def _models_key(config: ApproxConfig) -> dict[str, str]:
    return {"base": model_fingerprint(config.base), "finetuned": model_fingerprint(config.finetuned)}


def _label_stage(config, spec, corpus, models) -> StageRecord:
    """θf's pseudo-labels and losses (classification), or θf's LM losses (language modelling)."""
    from lm_eval_approx.features.losses import (
        example_losses,  # torch: only when computing
    )
    from lm_eval_approx.features.pseudo_labels import pseudo_label

    def compute(folder: Path) -> dict:
        model, tokenizer = load_model(config.finetuned), load_tokenizer(config.base)
        if spec.kind == CLASSIFICATION:
            result = pseudo_label(model, tokenizer, spec, corpus.texts, config.extract_batch_size, config.extract_max_length,
                                  add_bos_token=config.add_bos_token)
            labels, loss = result.labels, result.loss
        else:
            labels = np.full(len(corpus), -1, dtype=np.int64)
            loss = example_losses(model, tokenizer, spec, corpus.texts, None, config.extract_batch_size,
                                  config.extract_max_length, add_bos_token=config.add_bos_token)
        np.save(folder / LABELS_FILE, labels)
        np.save(folder / LOSS_FILE, loss)
        counts = np.bincount(labels[labels >= 0], minlength=spec.num_classes).tolist() if spec.num_classes else []
        return {"label_counts": counts}

    inputs = {"finetuned": models["finetuned"], "task": task_key(spec), "corpus": corpus.fingerprint(),
              "max_length": config.extract_max_length, **_bos_input(config)}
    return run_stage(LABEL_STAGE, inputs, compute)


def _base_loss_stage(config, spec, corpus, models, labels_stage) -> StageRecord:
    from lm_eval_approx.features.losses import example_losses

    def compute(folder: Path) -> dict:
        labels = np.load(labels_stage.path / LABELS_FILE)
        given = labels if spec.kind == CLASSIFICATION else None
        loss = example_losses(load_model(config.base), load_tokenizer(config.base), spec, corpus.texts, given,
                              config.extract_batch_size, config.extract_max_length,
                              add_bos_token=config.add_bos_token)
        np.save(folder / LOSS_FILE, loss)
        return {}

    inputs = {"base": models["base"], "labels": labels_stage.key, "max_length": config.extract_max_length,
              **_bos_input(config)}
    return run_stage(BASE_LOSS_STAGE, inputs, compute)


STAGE_ALPHA_SEPARATOR = "@"


def _bos_input(config: ApproxConfig) -> dict:
    """``add_bos_token`` as a stage input when set (unset keeps the keys stages always had)."""
    return {} if config.add_bos_token is None else {"add_bos_token": config.add_bos_token}


def _feature_stages(config, spec, corpus, models, labels_stage) -> list[StageRecord]:
    """One stage per synthetic checkpoint α = j/M, keyed by α in lowest terms: the α = 1 store (θf's
    own features) is the plain ``checkpoints = 1`` stage, shared by select and every M, and α = 1/2
    is shared by M = 2 and M = 4."""
    alphas = [Fraction(j, config.checkpoints) for j in range(1, config.checkpoints + 1)]
    return [_feature_stage(config, spec, corpus, models, labels_stage, alpha) for alpha in alphas]


def _feature_stage(config, spec, corpus, models, labels_stage, alpha: Fraction) -> StageRecord:
    from lm_eval_approx.features.build import build_feature_stores

    checkpoint = None if alpha.denominator == 1 else alpha.numerator
    feature_config = FeatureConfig(
        base=config.base, finetuned=config.finetuned, task=spec.name, params=config.params, dim=config.dim,
        projection=config.projection, seed=config.projection_seed, checkpoints=alpha.denominator,
        checkpoint=checkpoint, batch_size=config.extract_batch_size, max_length=config.extract_max_length,
        corpus=config.corpus, corpus_limit=config.corpus_size, corpus_seed=config.corpus_seed,
        add_bos_token=config.add_bos_token,
    )

    def compute(folder: Path) -> dict:
        labels = np.load(labels_stage.path / LABELS_FILE)
        given = labels if spec.kind == CLASSIFICATION else None
        stores = build_feature_stores(feature_config, corpus, given, folder / FEATURE_DIR)
        return {"stores": [str(s.path) for s in stores], **({} if checkpoint is None else {"alpha": str(alpha)})}

    inputs = {**models, "labels": labels_stage.key, "params": config.params, "dim": config.dim,
              "projection": config.projection, "projection_seed": config.projection_seed,
              "checkpoints": alpha.denominator, "max_length": config.extract_max_length, **_bos_input(config)}
    if checkpoint is not None:  # θf's own store keeps the key it had before stages were per α
        inputs["checkpoint"] = checkpoint
    return run_stage(FEATURE_STAGE, inputs, compute)


def _stop_probes(config: ApproxConfig, spec, corpus, rows, recipe: TrainingRecipe) -> list:
    """The probe of a recipe's stop signal on its monitor texts (``training/stop_signals.py``): the
    task loss (``task_loss``), or θf against the retrained model (the teacher signals)."""
    from lm_eval_approx.training.stop_signals import (
        check_teacher,
        monitor_texts,
        stop_probes,
    )

    check_teacher(spec, recipe, config.finetuned)
    texts = monitor_texts(spec, recipe, {row.text for row in rows}, pool=(corpus.texts, corpus.ids),
                          selected_ids={row.id for row in rows}, models=(config.base, config.finetuned),
                          add_bos_token=config.add_bos_token)
    return stop_probes(spec, recipe, texts, base=config.base, finetuned=config.finetuned,
                       batch_size=config.extract_batch_size, max_length=config.extract_max_length,
                       add_bos_token=config.add_bos_token)


def _target_texts(config: ApproxConfig, spec) -> tuple[list[str], StageRecord | str]:
    """The texts a target-matching baseline aims at, and what identifies them: the generation stage
    (sampled from the weights) or a key of the task's training texts drawn."""
    from lm_eval_approx.training.examples import task_examples

    if config.target_source == TASK_TARGETS:
        texts = [example.text for example in task_examples(spec, config.target_size, TARGET_SEED)]
        return texts, f"{task_key(spec)}:train:{config.target_size}:{TARGET_SEED}"
    return generated_texts(config.base, config.finetuned, spec, config.target_size, TARGET_SEED,
                           GenerationSettings(source=config.target_source), add_bos_token=config.add_bos_token)


def _encoders(config: ApproxConfig, needs: frozenset[str]) -> dict:
    """The encoders a strategy asked for: θ0's pooled hidden states and the shipped sentence model."""
    from lm_eval_approx.data.similarity import sentence_embeddings
    from lm_eval_approx.features.pooled import base_encoder

    encoders: dict = {}
    if BASE_ENCODER in needs:
        encoders["base_encoder"] = base_encoder(config.base, config.extract_batch_size, config.extract_max_length,
                                                config.add_bos_token)
    if SENTENCE_ENCODER in needs:
        encoders["sentence_encoder"] = sentence_embeddings
    return encoders


@dataclass
class Selected:
    """Everything up to the selection: the task, the candidate pool, the stages run so far and the
    selected rows (what ``run_approximation`` retrains θ0 on)."""

    spec: Any
    corpus: Any
    stages: list[StageRecord]
    rows: list

    @property
    def selection_path(self) -> Path:
        return self.stages[-1].path / SELECTION_FILE


def run_selection(config: ApproxConfig) -> Selected:
    """Run (or reuse) every stage up to and including the selection.

    θ0 and θf are checked as a pair first (``models/pairs.py``), so a pair that cannot be approximated fails
    in seconds, before any labelling or extraction."""
    from lm_eval_approx.features.build import open_feature_stores

    spec = get_task_spec(config.task)
    strategy_cls = strategy_registry().get(config.strategy).obj
    needs = strategy_cls.requires
    check_model_pair(config.base, config.finetuned, config.params if FEATURES in needs else None)
    corpus = load_corpus(config.corpus, config.corpus_size, config.corpus_seed)
    models = _models_key(config)
    stages = [_label_stage(config, spec, corpus, models)]
    labels = np.load(stages[0].path / LABELS_FILE)
    loss_f = np.load(stages[0].path / LOSS_FILE)
    loss_b, stores = None, []
    if LOSS_BASE in needs:
        stages.append(_base_loss_stage(config, spec, corpus, models, stages[0]))
        loss_b = np.load(stages[-1].path / LOSS_FILE)
    if FEATURES in needs:
        feature_stages = _feature_stages(config, spec, corpus, models, stages[0])
        stages += feature_stages
        stores = [store for stage in feature_stages for store in open_feature_stores(stage.path / FEATURE_DIR)]
    targets = None
    if TARGET_TEXTS in needs:
        targets, target_key = _target_texts(config, spec)
        if isinstance(target_key, StageRecord):
            stages.append(target_key)
            target_key = target_key.key
    upstream = [s.key for s in stages]

    def compute_selection(folder: Path) -> dict:
        pool = build_pool(
            corpus, stores,
            labels=labels if spec.kind == CLASSIFICATION else None,
            loss_finetuned=loss_f if LOSS_FINETUNED in needs or not stores else None,
            loss_base=loss_b, num_classes=spec.num_classes or None,
        )
        pool = dataclasses.replace(pool, target_texts=targets, **_encoders(config, needs))
        selection = select(config.strategy, pool, config.k, config.seed, config.strategy_options)
        write_selection(folder / SELECTION_FILE, selection_rows(pool, selection, spec))
        return {"selected": int(len(selection.indices)), **{k: v for k, v in selection.info.items()
                                                           if isinstance(v, (int, float, str, bool))}}

    selection_inputs = {"upstream": upstream, "strategy": config.strategy, "options": config.strategy_options,
                        "k": config.k, "seed": config.seed, "labels_needed": LABELS in needs}
    if targets is not None:  # only then: every other selection keeps the key it always had
        selection_inputs["targets"] = target_key
    stages.append(run_stage(SELECTION_STAGE, selection_inputs, compute_selection))
    rows = read_selection(stages[-1].path / SELECTION_FILE)
    if not rows:
        raise ConfigError("k", config.k, "at least one selected document to train on")
    return Selected(spec, corpus, stages, rows)


def run_approximation(config: ApproxConfig, recipe: TrainingRecipe, out_dir: str | Path | None = None) -> ApproxResult:
    """Run (or reuse) every stage (``run_selection``, then the retraining); ``out_dir`` gets a copy
    of the selection file when given."""
    from lm_eval_approx.training.loop import train_adapter

    selected = run_selection(config)
    spec, corpus, rows, stages = selected.spec, selected.corpus, selected.rows, list(selected.stages)
    models = _models_key(config)

    def compute_training(folder: Path) -> dict:
        probes = _stop_probes(config, spec, corpus, rows, recipe) if recipe.uses_probe else ()
        train_adapter(config.base, spec, rows, recipe, folder / "adapter", probes=probes,
                      add_bos_token=config.add_bos_token)
        return {"examples": len(rows)}

    training_inputs = {"base": models["base"], "task": task_key(spec), "selection": selection_hash(rows),
                       "recipe": recipe.recipe_hash(), **_bos_input(config)}
    if recipe.uses_probe:  # the kept epoch then depends on the monitor texts (and θf, for a teacher)
        training_inputs["monitor"] = {"corpus": monitor_identity(recipe, corpus.fingerprint())}
        if recipe.uses_teacher or recipe.monitor_source != TASK_MONITOR:
            training_inputs["monitor"]["finetuned"] = models["finetuned"]
    stages.append(run_stage(TRAINING_STAGE, training_inputs, compute_training))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_selection(out / SELECTION_FILE, rows)
    return ApproxResult(stages[-1].path / "adapter", selected.selection_path, stages)
