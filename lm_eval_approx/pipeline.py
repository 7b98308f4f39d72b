"""The whole approximation, one stage after another, each cached (see ``cache/stages.py``):

corpus → pseudo-labels (θf) → [θ0 losses] → [gradient features] → selection → retraining of θ0.

Bracketed stages run only when the strategy needs them (``Strategy.requires``). The result is
the folder of a PEFT adapter (or full model) that lm-eval scores with ``peft=`` on top of θ0.
What one approximation is, ``ApproxConfig``, lives in ``approx_config.py``.

With ``fused_labels`` (``_fuses_labels``) θf runs once for its pseudo-labels and its own feature
store: the labels stage runs the α = 1 feature stage, whose forward reads the labels
(``features/fused.py``), and keeps that store's labels and losses; the feature stage then finds the
store cached. Both keys record it (``fused``), so no key of the two passes changes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from lm_eval_approx.cache.stages import StageRecord, run_stage, stage_key
from lm_eval_approx.data.corpus import load_corpus
from lm_eval_approx.data.selection_file import (
    read_selection,
    selection_hash,
    write_selection,
)
from lm_eval_approx.approx_config import TASK_TARGETS, ApproxConfig
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.config import FeatureConfig
from lm_eval_approx.features.generation import GenerationSettings, generated_texts
from lm_eval_approx.models.devices import EXTRACT_DTYPE_KEY, check_device_available
from lm_eval_approx.models.loading import load_model, load_tokenizer, model_fingerprint
from lm_eval_approx.models.pairs import check_model_pair
from lm_eval_approx.models.parameter_sets import HEAD_LABELS
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
from lm_eval_approx.strategies.registry import select
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec, task_key
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.training.stop_signals import monitor_inputs

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.npy"
LOSS_FILE = "loss.npy"
SELECTION_FILE = "selection.jsonl"
LABEL_STAGE = "labels"
# In a labels stage's info when θf's own feature store was built in its forward: that store's seconds.
FUSED_STORE_SECONDS = "fused_store_seconds"
BASE_LOSS_STAGE = "base_loss"
FEATURE_STAGE = "features"
SELECTION_STAGE = "selection"
TRAINING_STAGE = "training"
FEATURE_DIR = "features"
TARGET_SEED = 0  # one draw of target texts per grid: rows and seeds aim at the same texts, like select


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


def _fuses_labels(config: ApproxConfig, spec) -> bool:
    """Whether θf's pseudo-labels come from the forward of its own feature store: asked for
    (``fused_labels``), a classification task whose choices one carrier row scores (at most one
    verbaliser longer than one token) and features whose loss is the task's (not ``head_labels``).
    The strategy plays no part: the labels stage holds the same bytes whichever cell made it."""
    from lm_eval_approx.features.fused import task_has_carriers  # torch: only when asked for

    return (config.fused_labels and spec.kind == CLASSIFICATION and config.params != HEAD_LABELS
            and task_has_carriers(load_tokenizer(config.base), spec, config.add_bos_token))


def _label_pass(config, spec, corpus) -> tuple[np.ndarray, np.ndarray]:
    """θf's own pass over the candidates: its pseudo-labels and their losses (classification), or
    no labels and its LM losses (language modelling)."""
    from lm_eval_approx.features.losses import (
        example_losses,  # torch: only when computing
    )
    from lm_eval_approx.features.pseudo_labels import pseudo_label

    model, tokenizer = load_model(config.finetuned, config.extract_dtype, config.device), load_tokenizer(config.base)
    if spec.kind == CLASSIFICATION:
        result = pseudo_label(model, tokenizer, spec, corpus.texts, config.extract_batch_size,
                              config.extract_max_length, add_bos_token=config.add_bos_token)
        return result.labels, result.loss
    loss = example_losses(model, tokenizer, spec, corpus.texts, None, config.extract_batch_size,
                          config.extract_max_length, add_bos_token=config.add_bos_token)
    return np.full(len(corpus), -1, dtype=np.int64), loss


def _label_stage(config, spec, corpus, models, fused: bool = False) -> StageRecord:
    """θf's pseudo-labels and losses (classification), or θf's LM losses (language modelling);
    ``fused``: those that θf's own feature store read in its forward (``_fuses_labels``)."""
    from lm_eval_approx.features.build import open_feature_stores

    inputs = {"finetuned": models["finetuned"], "task": task_key(spec), "corpus": corpus.fingerprint(),
              "max_length": config.extract_max_length, **_extract_input(config)}
    if fused:  # only then: the two passes keep their key; the forward is the feature pass of these params
        inputs["fused"] = {"params": config.params}

    def compute(folder: Path) -> dict:
        info: dict[str, Any] = {}
        if fused:  # the store's stage takes its own lock and resumes on its own, inside this one's
            stage = _feature_stage(config, spec, corpus, models, (stage_key(LABEL_STAGE, inputs), folder),
                                   Fraction(1), fused=True)
            store = open_feature_stores(stage.path / FEATURE_DIR)[-1]
            labels, loss = np.array(store.labels, dtype=np.int64), np.array(store.loss, dtype=np.float32)
            # This stage's seconds include the store's; a cell that counts both stages takes them out once.
            info[FUSED_STORE_SECONDS] = 0.0 if stage.cached else stage.seconds
        else:
            labels, loss = _label_pass(config, spec, corpus)
        np.save(folder / LABELS_FILE, labels)
        np.save(folder / LOSS_FILE, loss)
        counts = np.bincount(labels[labels >= 0], minlength=spec.num_classes).tolist() if spec.num_classes else []
        return {"label_counts": counts, **info}

    return run_stage(LABEL_STAGE, inputs, compute)


def _base_loss_stage(config, spec, corpus, models, labels_stage) -> StageRecord:
    from lm_eval_approx.features.losses import example_losses

    def compute(folder: Path) -> dict:
        labels = np.load(labels_stage.path / LABELS_FILE)
        given = labels if spec.kind == CLASSIFICATION else None
        model = load_model(config.base, config.extract_dtype, config.device)
        loss = example_losses(model, load_tokenizer(config.base), spec, corpus.texts, given,
                              config.extract_batch_size, config.extract_max_length,
                              add_bos_token=config.add_bos_token)
        np.save(folder / LOSS_FILE, loss)
        return {}

    inputs = {"base": models["base"], "labels": labels_stage.key, "max_length": config.extract_max_length,
              **_extract_input(config)}
    return run_stage(BASE_LOSS_STAGE, inputs, compute)


STAGE_ALPHA_SEPARATOR = "@"


def _bos_input(config: ApproxConfig) -> dict:
    """``add_bos_token`` as a stage input (unset, keys leave it out: ``cache/keys.py`` ``KEY_RULES``)."""
    return {"add_bos_token": config.add_bos_token}


def _extract_input(config: ApproxConfig) -> dict:
    """What a stage running θ0 or θf records beyond its data: ``add_bos_token`` and the models' dtype
    (keyed when set, and when not float32). The device is not recorded: it changes where, not what,
    is computed."""
    return {**_bos_input(config), EXTRACT_DTYPE_KEY: config.extract_dtype}


def _feature_stages(config, spec, corpus, models, labels_stage, fused: bool = False) -> list[StageRecord]:
    """One stage per synthetic checkpoint α = j/M, keyed by α in lowest terms: the α = 1 store (θf's
    own features) is the plain ``checkpoints = 1`` stage, shared by select and every M, and α = 1/2
    is shared by M = 2 and M = 4. ``fused``: the α = 1 store is the one the labels stage made."""
    alphas = [Fraction(j, config.checkpoints) for j in range(1, config.checkpoints + 1)]
    labels = (labels_stage.key, labels_stage.path)
    return [_feature_stage(config, spec, corpus, models, labels, alpha, fused) for alpha in alphas]


def _feature_stage(config, spec, corpus, models, labels: tuple[str, Path], alpha: Fraction,
                   fused: bool = False) -> StageRecord:
    """The store of checkpoint α for the labels stage (key, folder) ``labels``. ``fused`` at α = 1:
    θf's own store reads θf's pseudo-labels in its forward (the labels stage's source, so it never
    reads the labels stage's files: the labels stage may be computing it)."""
    from lm_eval_approx.features.build import build_feature_stores

    labels_key, labels_path = labels
    own_forward = fused and alpha == 1
    checkpoint = None if alpha.denominator == 1 else alpha.numerator
    feature_config = FeatureConfig(
        base=config.base, finetuned=config.finetuned, task=spec.name, params=config.params, dim=config.dim,
        projection=config.projection, seed=config.projection_seed, checkpoints=alpha.denominator,
        checkpoint=checkpoint, batch_size=config.extract_batch_size, max_length=config.extract_max_length,
        corpus=config.corpus, corpus_limit=config.corpus_size, corpus_seed=config.corpus_seed,
        add_bos_token=config.add_bos_token, dtype=config.extract_dtype, device=config.device,
    )

    def compute(folder: Path) -> dict:
        if own_forward:
            stores = build_feature_stores(feature_config, corpus, None, folder / FEATURE_DIR, fused=True)
        else:
            given = np.load(labels_path / LABELS_FILE) if spec.kind == CLASSIFICATION else None
            stores = build_feature_stores(feature_config, corpus, given, folder / FEATURE_DIR)
        return {"stores": [str(s.path) for s in stores], **({} if checkpoint is None else {"alpha": str(alpha)})}

    inputs = {**models, "labels": labels_key, "params": config.params, "dim": config.dim,
              "projection": config.projection, "projection_seed": config.projection_seed,
              "checkpoints": alpha.denominator, "max_length": config.extract_max_length, **_extract_input(config)}
    inputs["checkpoint"] = checkpoint  # None (θf's own store) is left out of the key: cache/keys.py KEY_RULES
    if own_forward:  # only then: every store of the two passes keeps its key
        inputs["fused"] = True
    return run_stage(FEATURE_STAGE, inputs, compute)


def _probes_from_config(config: ApproxConfig, spec, corpus, rows, recipe: TrainingRecipe) -> list:
    """The probe of a recipe's stop signal on its monitor texts (``training/stop_signals.py``): the
    task loss (``task_loss``), or θf against the retrained model (the teacher signals); θf and the
    samplers of monitor texts run on the config's device in its ``extract_dtype``."""
    from lm_eval_approx.training.stop_signals import probes_for_selection

    return probes_for_selection(spec, recipe, rows, base=config.base, finetuned=config.finetuned,
                                pool=(corpus.texts, corpus.ids), batch_size=config.extract_batch_size,
                                max_length=config.extract_max_length, add_bos_token=config.add_bos_token,
                                device=config.device, dtype=config.extract_dtype)


def _target_texts(config: ApproxConfig, spec) -> tuple[list[str], StageRecord | str]:
    """The texts a target-matching baseline aims at, and what identifies them: the generation stage
    (sampled from the weights) or a key of the task's training texts drawn."""
    from lm_eval_approx.training.examples import task_examples

    if config.target_source == TASK_TARGETS:
        texts = [example.text for example in task_examples(spec, config.target_size, TARGET_SEED)]
        return texts, f"{task_key(spec)}:train:{config.target_size}:{TARGET_SEED}"
    return generated_texts(config.base, config.finetuned, spec, config.target_size, TARGET_SEED,
                           GenerationSettings(source=config.target_source), add_bos_token=config.add_bos_token,
                           device=config.device, dtype=config.extract_dtype)


def _encoders(config: ApproxConfig, needs: frozenset[str]) -> dict:
    """The encoders a strategy asked for, on the config's device and dtype: θ0's pooled hidden
    states and the shipped sentence model."""
    from functools import partial

    from lm_eval_approx.data.similarity import sentence_embeddings
    from lm_eval_approx.features.pooled import base_encoder

    encoders: dict = {}
    placement: dict[str, Any] = {"device": config.device, "dtype": config.extract_dtype}
    if BASE_ENCODER in needs:
        encoders["base_encoder"] = base_encoder(config.base, config.extract_batch_size, config.extract_max_length,
                                                config.add_bos_token, **placement)
    if SENTENCE_ENCODER in needs:
        encoders["sentence_encoder"] = partial(sentence_embeddings, **placement)
    return encoders


@dataclass
class Selected:
    """Everything up to the selection: the task, the candidate pool, the stages run so far and the
    selected rows (what ``run_approximation`` retrains θ0 on)."""

    spec: TaskSpec
    corpus: Any
    stages: list[StageRecord]
    rows: list

    @property
    def selection_path(self) -> Path:
        return self.stages[-1].path / SELECTION_FILE


def run_selection(config: ApproxConfig) -> Selected:
    """Run (or reuse) every stage up to and including the selection.

    θ0 and θf are checked as a pair first (``models/pairs.py``), so a pair that cannot be approximated fails
    in seconds, before any labelling or extraction, and so is a device this machine lacks."""
    from lm_eval_approx.features.build import open_feature_stores

    check_device_available("device", config.device)
    config = config.resolve()  # the task (and its data) and the strategy, before any model is loaded
    spec, strategy_cls = config.task_spec, config.strategy_class
    needs = strategy_cls.requires
    # Fused labels make θf's feature store whatever the strategy, so its parameters are checked then too.
    extracts = FEATURES in needs or (config.fused_labels and spec.kind == CLASSIFICATION)
    check_model_pair(config.base, config.finetuned, config.params if extracts else None)
    fused = _fuses_labels(config, spec)
    corpus = load_corpus(config.corpus, config.corpus_size, config.corpus_seed)
    models = _models_key(config)
    stages = [_label_stage(config, spec, corpus, models, fused)]
    labels = np.load(stages[0].path / LABELS_FILE)
    loss_f = np.load(stages[0].path / LOSS_FILE)
    loss_b, stores = None, []
    if LOSS_BASE in needs:
        stages.append(_base_loss_stage(config, spec, corpus, models, stages[0]))
        loss_b = np.load(stages[-1].path / LOSS_FILE)
    if FEATURES in needs:
        feature_stages = _feature_stages(config, spec, corpus, models, stages[0], fused)
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

    config = config.resolve()
    selected = run_selection(config)
    spec, corpus, rows, stages = selected.spec, selected.corpus, selected.rows, list(selected.stages)
    models = _models_key(config)

    def compute_training(folder: Path) -> dict:
        probes = _probes_from_config(config, spec, corpus, rows, recipe) if recipe.uses_probe else ()
        train_adapter(config.base, spec, rows, recipe, folder / "adapter", probes=probes,
                      add_bos_token=config.add_bos_token)
        return {"examples": len(rows)}

    training_inputs = {"base": models["base"], "task": task_key(spec), "selection": selection_hash(rows),
                       "recipe": recipe.recipe_hash(), **_bos_input(config)}
    if recipe.uses_probe:  # the kept epoch then depends on the monitor texts (and θf and its dtype, for a teacher)
        training_inputs["monitor"] = monitor_inputs(recipe, corpus.fingerprint(), config.finetuned,
                                                    config.extract_dtype)
    stages.append(run_stage(TRAINING_STAGE, training_inputs, compute_training))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_selection(out / SELECTION_FILE, rows)
    return ApproxResult(stages[-1].path / "adapter", selected.selection_path, stages)
