"""What a retraining's stop signal is measured on, and the probe that measures it.

One place for the two callers that retrain θ0 on a selection under a probe signal
(``TrainingRecipe.uses_probe``): the pipeline (the leaderboard and ``--model approx``) and the
``train`` command (a selection file). Both must draw the same monitor texts, or the same selection
under the same rule would keep a different epoch depending on how it was retrained.

* ``teacher_*``: ``monitor_size`` unselected documents of the candidate pool (only the pipeline
  has a pool).
* ``task_*``: unlabelled texts of the task's own training split, minus any text that was selected;
  or, with ``monitor_source`` other than ``task``, texts sampled from the weights alone
  (``features/generation.py``): what the rule may read under the ``weights`` condition.

Each draw uses the recipe's seed. The models read here (θf's teacher distribution, the samplers of
the monitor texts) run on the caller's ``device`` in its ``dtype`` (the pipeline's ``device`` and
``extract_dtype``, the ``train`` command's ``--device`` and ``--dtype``), as every other model load
of the pipeline does; the dtype changes what they compute, so the keys record it (float32 is left
out: ``cache/keys.py``), the device does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

from lm_eval_approx.cache.keys import MONITOR_KIND, keyed_fields
from lm_eval_approx.cache.stages import run_stage, stage_key
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.devices import CPU, DEFAULT_DTYPE, EXTRACT_DTYPE_KEY
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec, task_key
from lm_eval_approx.training.recipe import (
    POOL_SIGNALS,
    TASK_AGREEMENT,
    TASK_KL,
    TASK_LOSS,
    TASK_MONITOR,
    TASK_SIGNALS,
    TEACHER_AGREEMENT,
    TEACHER_KL,
    TrainingRecipe,
)

TASK_TEXTS = "task:train"
TEACHER_STAGE = "monitor_teacher"  # θf's distributions on a set of monitor texts
TEACHER_FILE = "teacher_logprobs.npy"
PROBE_KEY = "probe"
# The caches of θf's monitor distribution and of the probe values at θ0 are exact (the tests compare
# them with fresh measurements); benchmarks/cell_cost.py turns them off to measure what they save.
CACHE_PROBES = True  # a task_* signal's monitor texts: the task's training split (keyed by the task)


def monitor_texts(spec: TaskSpec, recipe: TrainingRecipe, selected_texts: set[str],
                  pool: tuple[Sequence[str], Sequence[str]] | None = None,
                  selected_ids: set[str] | frozenset[str] = frozenset(), models: tuple[str, str | None] | None = None,
                  add_bos_token: bool | None = None, device: str = CPU, dtype: str = DEFAULT_DTYPE) -> list[str]:
    """The texts ``recipe.stop_on`` is measured on: for a ``teacher_*`` signal, unselected documents
    of ``pool`` (its texts and ids; ``selected_ids`` are left out); for a ``task_*`` signal,
    texts of the task's training split that are not in ``selected_texts``, or ``monitor_size`` texts
    sampled from ``models`` (θ0, θf, on ``device`` in ``dtype``) when ``recipe.monitor_source`` names
    a sampler."""
    from lm_eval_approx.tasks.documents import has_training_texts
    from lm_eval_approx.tasks.lm_eval_spec import LmEvalTaskSpec
    from lm_eval_approx.training.examples import task_examples
    from lm_eval_approx.training.probes import held_out_texts

    if recipe.stop_on in POOL_SIGNALS:
        if pool is None:
            raise ConfigError("stop_on", recipe.stop_on, "a task signal (" + ", ".join(TASK_SIGNALS) + ") or "
                              "validation_loss: a pool signal needs the candidate pool, which a selection file "
                              "alone does not have")
        texts, ids = pool
        return held_out_texts(texts, ids, set(selected_ids), recipe.monitor_size, recipe.seed)
    if recipe.monitor_source != TASK_MONITOR:
        return sampled_monitor_texts(spec, recipe, models, add_bos_token, device=device, dtype=dtype)
    if not isinstance(spec, LmEvalTaskSpec) or not has_training_texts(spec):
        raise ConfigError("stop_on", recipe.stop_on, f"a task with a training split to draw its monitor texts from "
                          f"({spec.name} has none), or stop_on validation_loss")
    examples = task_examples(spec, recipe.monitor_size, recipe.seed)
    texts = [example.text for example in examples if example.text not in selected_texts]
    if not texts:
        raise ConfigError("stop_on", recipe.stop_on, "a task whose training split has texts outside the selection")
    return texts


def monitor_identity(recipe: TrainingRecipe, pool_fingerprint: str) -> str:
    """Where the monitor texts come from, for a training key: the pool (teacher_* signals), the
    task's training split, or a sampler of the weights."""
    if recipe.stop_on not in TASK_SIGNALS:
        return pool_fingerprint
    return TASK_TEXTS if recipe.monitor_source == TASK_MONITOR else f"sampled:{recipe.monitor_source}"


def monitor_inputs(recipe: TrainingRecipe, pool_fingerprint: str, finetuned: str,
                   dtype: str = DEFAULT_DTYPE) -> dict[str, str]:
    """What a probe stop signal adds to a training's key, since it picks the kept epoch: where its
    monitor texts come from, and θf's fingerprint (``finetuned`` names θf) and the dtype it ran in
    when θf measures the signal or samples the texts (float32 is left out: ``cache/keys.py``). The
    pipeline's training stage keys these inputs, the ``train`` command's training key their JSON
    (sorted keys): one encoding for both."""
    from lm_eval_approx.models.loading import model_fingerprint

    monitor = {"corpus": monitor_identity(recipe, pool_fingerprint)}
    if recipe.uses_teacher or recipe.monitor_source != TASK_MONITOR:
        monitor["finetuned"] = model_fingerprint(finetuned)
        monitor[EXTRACT_DTYPE_KEY] = dtype
    return keyed_fields(MONITOR_KIND, monitor)


def probes_for_selection(spec: TaskSpec, recipe: TrainingRecipe, selected: Sequence, *, base: str,
                         finetuned: str | None, pool: tuple[Sequence[str], Sequence[str]] | None = None,
                         batch_size: int = 16, max_length: int = 128, add_bos_token: bool | None = None,
                         device: str = CPU, dtype: str = DEFAULT_DTYPE) -> list:
    """The probe of ``recipe.stop_on`` for a retraining on ``selected`` (rows with ``id`` and
    ``text``), for the pipeline and the ``train`` command alike: checked first (``check_teacher``),
    then measured on ``monitor_texts`` (``pool``: the candidate pool's texts and ids, which only
    the pipeline has) by ``probes_for_texts``; θf and the samplers run on ``device`` in ``dtype``."""
    check_teacher(spec, recipe, finetuned)  # before any text is drawn or model loaded
    texts = monitor_texts(spec, recipe, {row.text for row in selected}, pool=pool,
                          selected_ids={row.id for row in selected}, models=(base, finetuned),
                          add_bos_token=add_bos_token, device=device, dtype=dtype)
    return probes_for_texts(spec, recipe, texts, base=base, finetuned=finetuned, batch_size=batch_size,
                            max_length=max_length, add_bos_token=add_bos_token, device=device, dtype=dtype)


def sampled_monitor_texts(spec: TaskSpec, recipe: TrainingRecipe, models: tuple[str, str | None] | None,
                          add_bos_token: bool | None = None, *, device: str = CPU,
                          dtype: str = DEFAULT_DTYPE) -> list[str]:
    """``recipe.monitor_size`` texts sampled by ``recipe.monitor_source`` with the recipe's seed (one
    draw per retraining seed, as the task texts are) from models loaded on ``device`` in ``dtype``,
    cached as a ``generations`` stage (keyed by the dtype, not the device)."""
    from lm_eval_approx.features.generation import BASE, GenerationSettings, generated_texts

    base, finetuned = models if models is not None else (None, None)
    if base is None or (finetuned is None and recipe.monitor_source != BASE):
        raise ConfigError("monitor_source", recipe.monitor_source, f"{TASK_MONITOR}, or θ0 and θf to sample "
                          "monitor texts from (a selection file alone names neither: pass --finetuned)")
    texts, _ = generated_texts(base, finetuned or base, spec, recipe.monitor_size, recipe.seed,
                               GenerationSettings(source=recipe.monitor_source), add_bos_token=add_bos_token,
                               device=device, dtype=dtype)
    return texts


def check_teacher(spec: TaskSpec, recipe: TrainingRecipe, finetuned: str | None) -> None:
    """A named error, before any text is drawn, when ``recipe.stop_on`` cannot be measured here: a
    teacher signal on a language-modelling task, or a teacher signal without θf."""
    if not recipe.uses_teacher:
        return
    if spec.kind != CLASSIFICATION:
        raise ConfigError("stop_on", recipe.stop_on, "validation_loss or task_loss for a language-modelling task "
                          "(teacher signals compare choice distributions of a classification task)")
    if finetuned is None:
        raise ConfigError("finetuned", None, f"θf (a model folder, hub id or .gguf file): stop_on {recipe.stop_on} "
                          "compares the retrained model with it")


def probes_for_texts(spec: TaskSpec, recipe: TrainingRecipe, texts: Sequence[str], *, base: str,
                     finetuned: str | None = None, batch_size: int = 16, max_length: int = 128,
                     add_bos_token: bool | None = None, device: str = CPU, dtype: str = DEFAULT_DTYPE) -> list:
    """The probe of ``recipe.stop_on`` on ``texts``: the task loss itself (``task_loss``, language
    modelling), or θf against the model being retrained (``teacher_*``, ``task_kl``,
    ``task_agreement``: classification; θf is loaded on ``device`` in ``dtype``, read once, and
    released here). The task loss reads only the model being retrained, so neither is in its key."""
    from lm_eval_approx.models.loading import load_model, load_tokenizer, model_fingerprint
    from lm_eval_approx.training.probes import loss_probe, teacher_probes

    settings = {"task": task_key(spec), "texts": texts_hash(texts), "batch_size": batch_size, "max_length": max_length,
                "add_bos_token": add_bos_token, "signal": recipe.stop_on}
    if recipe.stop_on == TASK_LOSS:
        probe = loss_probe(spec, texts, batch_size, max_length, add_bos_token=add_bos_token)
        return [dataclasses.replace(probe, key=stage_key(PROBE_KEY, settings) if CACHE_PROBES else "")]
    check_teacher(spec, recipe, finetuned)
    names = (TASK_KL, TASK_AGREEMENT) if recipe.stop_on in TASK_SIGNALS else (TEACHER_KL, TEACHER_AGREEMENT)
    if not CACHE_PROBES:
        teacher = load_model(finetuned, dtype, device)  # type: ignore[arg-type]  # check_teacher refused None
        probe = teacher_probes(teacher, load_tokenizer(base), spec, texts, batch_size, max_length,
                               add_bos_token=add_bos_token, names=names)
        del teacher
        return [probe]
    settings.update({"finetuned": model_fingerprint(finetuned), EXTRACT_DTYPE_KEY: dtype})  # type: ignore[arg-type]
    target = teacher_distribution(spec, texts, finetuned, base, settings, device)  # type: ignore[arg-type]
    probe = teacher_probes(None, load_tokenizer(base), spec, texts, batch_size, max_length,
                           add_bos_token=add_bos_token, names=names, target=target)
    return [dataclasses.replace(probe, key=stage_key(PROBE_KEY, settings))]


def texts_hash(texts: Sequence[str]) -> str:
    """A hash of the monitor texts, in order (a probe's values depend on exactly these)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()


def teacher_distribution(spec: TaskSpec, texts: Sequence[str], finetuned: str, base: str, settings: dict,
                         device: str = CPU):
    """θf's log-distribution over the task's choices on the monitor texts, computed once per θf, texts
    and settings (θf's dtype among them, ``settings[EXTRACT_DTYPE_KEY]``) and cached as a stage
    (``teacher_<key>``): every cell of a grid that draws the same monitor texts (one draw per
    retraining seed) reads it instead of loading θf and scoring again. θf runs on ``device``."""
    import numpy as np

    from lm_eval_approx.models.loading import load_model, load_tokenizer
    from lm_eval_approx.training.probes import choice_log_distribution

    def compute(folder: Path) -> dict:
        teacher = load_model(finetuned, settings[EXTRACT_DTYPE_KEY], device)
        target = choice_log_distribution(teacher, load_tokenizer(base), spec, texts, settings["batch_size"],
                                         settings["max_length"], settings["add_bos_token"])
        np.save(folder / TEACHER_FILE, target)
        return {"texts": len(texts)}

    stage = run_stage(TEACHER_STAGE, settings, compute)
    return np.load(stage.path / TEACHER_FILE)
