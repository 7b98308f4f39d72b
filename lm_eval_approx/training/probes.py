"""Epoch probes: numbers measured on the model being trained after every epoch, one of which may
decide when a retraining stops and which epoch's weights it keeps (``TrainingRecipe.stop_on``).

Why. The goal of a retraining on a selection is to land near θf, not to fit the selection:
fitting the selection's pseudo-labels (its validation loss) kept improving for 8 epochs at the
demo's scale while accuracy fell below θ0 (docs/ARCHITECTURE.md, "Retraining rule"). A probe that
measures the goal directly compares the trained model with θf on held-out *pool* documents, texts
of the candidate corpus that were not selected, so they are never trained on and a user has them:

* ``teacher_kl``: mean over held-out texts x of KL(p_f(·|x) ‖ p_θ(·|x)), where p(c|x) is the
  softmax over the task's choices of the summed continuation log-probs (``pseudo_labels.py``),
  p_f under θf, p_θ under the model being trained. Lower is better.
* ``teacher_agreement``: the share of held-out texts whose argmax choice equals θf's. Higher is better.
* ``task_loss`` (language modelling): the mean task loss (nats per token, rolling windows as
  lm-eval scores) of the model being trained on unlabelled texts of the task's own training split.
  For a perplexity target these texts *are* the target's distribution, so the signal is early
  stopping on a development set that a user has (never the test split). Lower is better.
* ``accuracy``: the share of labelled documents whose argmax choice equals the true label. For
  measuring curves on a development split only; a recipe cannot stop on it.

The teacher signals can also be measured on documents of the target task itself (texts of a
non-test split, their labels unused): ``teacher_probes(..., names=...)`` under other names, which
``benchmarks/epoch_curves.py`` records beside the pool's to compare the two as stop signals.

θf's distributions are computed once, when the probe is built; each epoch then costs one
pseudo-labelling pass over the held-out texts under the current weights (in eval mode, no dropout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec
from lm_eval_approx.training.history import TrainingHistory
from lm_eval_approx.training.recipe import TASK_LOSS, TEACHER_AGREEMENT, TEACHER_KL

ACCURACY = "accuracy"
START_STAGE = "probe_start"  # the probes' values at θ0, shared by every training with the same probes
START_VALUES_FILE = "values.json"


@dataclass(frozen=True)
class Probe:
    """Numbers measured on the current model: ``measure(model, tokenizer)`` returns one value per
    name of ``higher_is_better`` (which says, per name, the direction of improvement). ``key``, when
    set, names everything the values depend on besides the model (texts, θf, settings), so the
    values at θ0 can be cached across trainings (``training/loop.py``)."""

    measure: Callable[[Any, Any], dict[str, float]]
    higher_is_better: dict[str, bool]
    key: str = ""


def improves(higher_is_better: bool, value: float, best: float | None) -> bool:
    """True when ``value`` improves on ``best`` (None: nothing measured yet)."""
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def choice_log_distribution(model, tokenizer, spec: TaskSpec, texts: Sequence[str], batch_size: int,
                            max_length: int, add_bos_token: bool | None = None) -> np.ndarray:
    """log p(c|x) for every text x and choice c, normalised over the task's choices (float64)."""
    import torch

    from lm_eval_approx.features.pseudo_labels import pseudo_label

    if spec.kind != CLASSIFICATION:
        raise ConfigError("task", spec.name, "a classification task (probes compare choice distributions)")
    was_training = model.training
    model.eval()
    try:
        logprobs = pseudo_label(model, tokenizer, spec, list(texts), batch_size, max_length,
                                add_bos_token=add_bos_token).logprobs
    finally:
        model.train(was_training)
    scores = torch.from_numpy(logprobs.astype(np.float64))
    return torch.log_softmax(scores, dim=1).numpy()


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """mean over rows of KL(p ‖ q) = Σ_c p_c (log p_c − log q_c), for row-normalised log-probs."""
    p = np.exp(log_p)
    return float(np.mean(np.sum(p * (log_p - log_q), axis=1)))


def agreement(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """The share of rows whose argmax is the same under both (ties to the lowest choice)."""
    return float(np.mean(np.argmax(log_p, axis=1) == np.argmax(log_q, axis=1)))


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    texts = list(texts)
    if not texts:
        raise ConfigError(what, texts, "at least one document to measure on")
    return texts


def teacher_probes(teacher, tokenizer, spec: TaskSpec, texts: Sequence[str], batch_size: int = 16,
                   max_length: int = 128, add_bos_token: bool | None = None, *,
                   names: tuple[str, str] = (TEACHER_KL, TEACHER_AGREEMENT), labels: Sequence[int] | None = None,
                   accuracy_name: str = ACCURACY, target: np.ndarray | None = None) -> Probe:
    """``teacher_kl`` and ``teacher_agreement`` (or the two ``names`` given) against ``teacher`` (θf)
    on ``texts``, from one pass per epoch; θf's distributions are computed here, once, so θf need
    not stay in memory, or given as ``target`` (``choice_log_distribution`` of θf on ``texts``; then
    ``teacher`` is not used). With ``labels`` (development documents only), the same pass also
    measures accuracy as ``accuracy_name``."""
    texts = _check_texts(texts, "monitor documents")
    truth = None if labels is None else _check_labels(spec, texts, labels)
    if target is None:
        target = choice_log_distribution(teacher, tokenizer, spec, texts, batch_size, max_length, add_bos_token)
    elif target.shape != (len(texts), spec.num_classes):
        raise ConfigError("target", target.shape, f"θf's log-distribution over {spec.num_classes} choices for each of "
                          f"the {len(texts)} texts")
    kl_name, agreement_name = names

    def measure(model, tok) -> dict[str, float]:
        log_q = choice_log_distribution(model, tok, spec, texts, batch_size, max_length, add_bos_token)
        values = {kl_name: kl_divergence(target, log_q), agreement_name: agreement(target, log_q)}
        if truth is not None:
            values[accuracy_name] = float(np.mean(np.argmax(log_q, axis=1) == truth))
        return values

    directions = {kl_name: False, agreement_name: True}
    if truth is not None:
        directions[accuracy_name] = True
    return Probe(measure, directions)


def _check_labels(spec: TaskSpec, texts: list[str], labels: Sequence[int]) -> np.ndarray:
    truth = np.asarray(labels, dtype=np.int64)
    if truth.shape != (len(texts),) or truth.min() < 0 or truth.max() >= spec.num_classes:
        raise ConfigError("labels", list(labels)[:5], f"one label in [0, {spec.num_classes}) per document")
    return truth


def accuracy_probe(spec: TaskSpec, texts: Sequence[str], labels: Sequence[int], batch_size: int = 16,
                   max_length: int = 128, name: str = ACCURACY) -> Probe:
    """The share of ``texts`` whose argmax choice is their true label."""
    texts = _check_texts(texts, "labelled documents")
    truth = _check_labels(spec, texts, labels)

    def measure(model, tok) -> dict[str, float]:
        log_q = choice_log_distribution(model, tok, spec, texts, batch_size, max_length)
        return {name: float(np.mean(np.argmax(log_q, axis=1) == truth))}

    return Probe(measure, {name: True})


def loss_probe(spec: TaskSpec, texts: Sequence[str], batch_size: int = 16, max_length: int = 128,
               add_bos_token: bool | None = None, name: str = TASK_LOSS) -> Probe:
    """The mean task loss of a language-modelling task on ``texts`` (``features/losses.py``, the
    encoding lm-eval scores with), measured in eval mode."""
    from lm_eval_approx.features.losses import example_losses

    if spec.kind == CLASSIFICATION:
        raise ConfigError("stop_on", name, "task_agreement or task_kl for a classification task "
                          f"({spec.name}); {name} measures a language-modelling task's own texts")
    texts = _check_texts(texts, "monitor documents")

    def measure(model, tok) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            losses = example_losses(model, tok, spec, texts, batch_size=batch_size, max_length=max_length,
                                    add_bos_token=add_bos_token)
        finally:
            model.train(was_training)
        return {name: float(np.mean(losses.astype(np.float64)))}

    return Probe(measure, {name: False})


def held_out_texts(texts: Sequence[str], ids: Sequence[str], selected: set[str], size: int, seed: int) -> list[str]:
    """Up to ``size`` texts of the pool whose id is not ``selected``, drawn with ``seed``, in pool order."""
    free = [i for i, doc_id in enumerate(ids) if doc_id not in selected]
    if not free:
        raise ConfigError("monitor_size", size, "a pool with documents left over after the selection")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(free), size=min(size, len(free)), replace=False))
    return [texts[free[i]] for i in keep]


def run_probes(probes: Sequence[Probe], model, tokenizer) -> dict[str, float]:
    """Every probe's values on the current weights."""
    values: dict[str, float] = {}
    for probe in probes:
        values.update(probe.measure(model, tokenizer))
    return values


def direction(probes: Sequence[Probe], name: str) -> bool:
    """Whether a higher ``name`` is better; a name no probe measures is a ConfigError."""
    for probe in probes:
        if name in probe.higher_is_better:
            return probe.higher_is_better[name]
    measured = sorted(n for probe in probes for n in probe.higher_is_better)
    raise ConfigError("stop_on", name, "validation_loss, or a probe given to this training: "
                      + (", ".join(measured) or "none was given (teacher probes need θf and held-out pool documents)"))


def record_probes(history: TrainingHistory, probes: Sequence[Probe], model, tokenizer,
                  start: tuple[str, str] | None = None) -> None:
    """Measure the probes on the current weights into ``history`` (its ``probes`` and ``probe_seconds``).
    ``start`` = (θ0's fingerprint, mixed precision) marks the measurement before the first epoch:
    then the model computes θ0's outputs exactly, whatever the seed (LoRA's B starts at zero, so
    B·A·x adds exact zeros; full finetuning starts from θ0), and probes with a ``key`` read their
    values from a stage cached under these, so a grid measures θ0 once per set of monitor texts
    instead of once per cell."""
    import json
    import time
    from pathlib import Path

    from lm_eval_approx.cache.atomic import write_json_atomic
    from lm_eval_approx.cache.stages import run_stage

    began = time.perf_counter()
    if start is not None and all(probe.key for probe in probes):
        inputs = {"base": start[0], "mixed_precision": start[1], "probes": [probe.key for probe in probes]}

        def compute(folder: Path) -> dict:
            write_json_atomic(folder / START_VALUES_FILE, run_probes(probes, model, tokenizer))
            return {}

        stage = run_stage(START_STAGE, inputs, compute)
        values = json.loads((stage.path / START_VALUES_FILE).read_text(encoding="utf-8"))
    else:
        values = run_probes(probes, model, tokenizer)
    for name, value in values.items():
        history.probes.setdefault(name, []).append(value)
    history.probe_seconds += time.perf_counter() - began
