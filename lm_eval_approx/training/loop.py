"""Train θ0 on a list of examples with one recipe: the expert θf and every approximation alike.

Loss. Example i has loss L_i (summed label-token NLL for classification, mean token NLL for
language modelling, see ``training/rendering.py``) and weight w_i (1 unless the strategy weights examples,
e.g. select_omp). With w̃_i = w_i / mean(w) over the training part, a batch B minimises
(1/|B|) Σ_{i∈B} w̃_i L_i, so the expected gradient is that of Σ_i w_i L_i / Σ_i w_i, the loss of
the weighted data set; with equal weights it is the ordinary mean loss. Validation loss is
Σ w_i L_i / Σ w_i over the held-out part, computed without dropout. Classification runs the output
head only at the positions that predict label tokens (``training/loss.py``; same losses and gradients).

Loop. ``training/prepared.py`` sets a run up (θ0 by the recipe, loaders, AdamW with its warm-up
schedule under Accelerate: CPU here, several processes or mixed precision where present; the
frozen-prefix cache of ``training/prefix_cache.py`` when the recipe asks), ``training/epoch.py``
runs one epoch (gradient accumulation, clipping), and ``training/epoch_choice.py`` applies the
recipe's stop rule: at most ``epochs`` epochs; the ``stop_on`` signal (the validation loss, or a
probe on monitor texts with θ0 as candidate epoch 0) picks the kept epoch; ``patience`` epochs in a
row without a better signal stop the run. After each epoch the trainable weights, optimizer,
scheduler, RNG state and history (``training/history.py``) are checkpointed atomically
(``training/resume.py``: plain tensors and values, read back with ``weights_only=True``) in a work
folder next to the output, keyed by a hash of base, task, selection, recipe and monitor: an
interrupted run resumes from its last finished epoch and ends with the same weights as an
uninterrupted one; a work folder of other inputs is discarded. The kept epoch's weights are the ones
returned.

Output. The folder is assembled in a temporary sibling and renamed into place, so it exists only
when complete: a PEFT adapter (``lm_eval --model hf --model_args pretrained=BASE,peft=DIR``) or,
for full finetuning, a model folder with its tokenizer; plus recipe.json, training.json (hashes,
kept epoch, speed: the history without its steps) and curves.json. LoRA on a head tied to the input
embeddings (SmolLM2, GPT-2) adds A, B only to the output projection; the shared base matrix stays
frozen and is not saved in the adapter, so the input embeddings are untouched. (lm-eval's HFLM then
needs ``harness/tied_head.install()``, which ``lm-eval-approx run`` applies, to load such an adapter.)
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lm_eval_approx.cache.atomic import replace_dir, write_json_atomic
from lm_eval_approx.cache.keys import text_key
from lm_eval_approx.data.selection_file import SelectedExample, selection_hash
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.loading import model_fingerprint, resolve_model
from lm_eval_approx.tasks.kinds import TaskSpec, task_key
from lm_eval_approx.training.epoch import train_epoch
from lm_eval_approx.training.epoch_choice import choose_epoch, keep_theta0
from lm_eval_approx.training.history import PREFIX_PHASE, TrainingHistory, timed
from lm_eval_approx.training.prefix_cache import prefixed_losses
from lm_eval_approx.training.prepared import PreparedTraining, prepare_training
from lm_eval_approx.training.probes import Probe, direction, record_probes
from lm_eval_approx.training.recipe import FULL, TrainingRecipe
from lm_eval_approx.training.resume import (
    CHECKPOINT_FILE,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)
from lm_eval_approx.training.summary import TRAINING_FILE

logger = logging.getLogger(__name__)

RECIPE_FILE = "recipe.json"
CURVES_FILE = "curves.json"
WORK_SUFFIX = ".partial"
MIN_SECONDS = 1e-9  # guards the examples/s division for an empty run


@dataclass
class TrainResult:
    """The trained model in memory (PEFT-wrapped for LoRA) and what happened while training."""

    model: Any
    tokenizer: Any
    history: TrainingHistory = field(default_factory=TrainingHistory)


def training_key(base: str, spec: TaskSpec, examples: list[SelectedExample], recipe: TrainingRecipe,
                 add_bos_token: bool | None = None, monitor: str | None = None) -> str:
    """Hash of everything the trained weights depend on (``add_bos_token`` only when set, so keys
    made before it existed stay valid). ``monitor`` names what a probe stop signal was measured
    with (its texts' source and θf), which picks the kept epoch; a cached stage keys it itself."""
    parts = [resolve_model(base), task_key(spec), selection_hash(examples), recipe.recipe_hash()]
    if add_bos_token is not None:
        parts.append(f"add_bos_token={add_bos_token}")
    if monitor is not None:
        parts.append(f"monitor={monitor}")
    return text_key("\n".join(parts))


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _validation_loss(accelerator, model, loader, kind: str, head_positions: bool, prefix=None) -> float | None:
    """Σ w_i L_i / Σ w_i over the validation loader, in eval mode (no dropout)."""
    if loader is None:
        return None
    model.eval()
    total, weight = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for batch in loader:
            losses = prefixed_losses(model, batch, kind, head_positions, prefix)
            losses, w = accelerator.gather_for_metrics((losses, batch["weight"]))
            total += (losses.double() * w.double()).sum().cpu()
            weight += w.double().sum().cpu()
    model.train()
    return float(total / weight)


def _run_validation(run: PreparedTraining, kind: str, history: TrainingHistory) -> float | None:
    with timed(history.phase_seconds, "validation"):  # type: ignore[arg-type]  # a training history's clocks are set
        return _validation_loss(run.accelerator, run.model, run.val_loader, kind, run.head_positions, run.prefix)


def train_model(
    base: str, spec: TaskSpec, examples: list[SelectedExample], recipe: TrainingRecipe, work_dir: str | Path,
    *, progress: bool = True, on_epoch_end: Callable[[int, TrainingHistory], None] | None = None,
    full_logits: bool = False, probes: Sequence[Probe] = (), add_bos_token: bool | None = None,
    monitor: str | None = None,
) -> TrainResult:
    """Train θ0 (``base``) on ``examples`` under the recipe's stop rule (see the module docstring);
    checkpoints go to ``work_dir`` (resumed when they match).

    ``on_epoch_end(epoch, history)`` is called after each epoch's checkpoint is written. ``probes``
    are measured before training and after every epoch (``history.probes``); ``recipe.stop_on`` may
    name one of their values. ``full_logits=True`` computes full-vocabulary logits everywhere instead
    of the head at label positions only (the slower reference path, same losses).
    """
    from tqdm.auto import tqdm

    if not examples:
        raise ConfigError("examples", examples, "at least one training example")
    work_dir, key = Path(work_dir), training_key(base, spec, examples, recipe, add_bos_token, monitor)
    higher_better = direction(probes, recipe.stop_on) if recipe.uses_probe else False
    run = prepare_training(base, spec, examples, recipe, add_bos_token, full_logits)
    fresh = TrainingHistory.start(key, run.n_train, run.n_validation, recipe.stop_on)
    fresh.phase_seconds["render"] = run.render_seconds  # type: ignore[index]  # start() sets the clocks
    if run.prefix is not None:
        fresh.phase_seconds[PREFIX_PHASE] = run.prefix_seconds  # type: ignore[index]
    checkpoint = work_dir / CHECKPOINT_FILE
    history, best_state = _resume(checkpoint, run, fresh)
    if not history.validation_loss:
        history.initial_validation_loss = _run_validation(run, spec.kind, history)
    if probes and not history.probes:
        record_probes(history, probes, run.unwrapped(), run.tokenizer,
                      start=(model_fingerprint(base), recipe.mixed_precision))
        if recipe.uses_probe:
            keep_theta0(history, recipe)
            best_state = _trainable_state(run.unwrapped())

    batches = len(run.train_loader)
    bar = tqdm(total=batches * recipe.epochs, initial=batches * history.epochs_run, unit="batch",
               disable=not (progress and run.accelerator.is_main_process), desc=f"train {spec.name}")
    for epoch in range(history.epochs_run, recipe.epochs):
        if history.stopped_early:
            break
        train_epoch(run, recipe, spec.kind, history, epoch, bar)
        val_loss = _run_validation(run, spec.kind, history)
        if val_loss is not None:
            history.validation_loss.append(val_loss)
        if probes:
            record_probes(history, probes, run.unwrapped(), run.tokenizer)
        if choose_epoch(history, recipe, higher_better, val_loss):
            best_state = _trainable_state(run.unwrapped())
        if run.accelerator.is_main_process:
            write_checkpoint(checkpoint, _trainable_state(run.unwrapped()), run.optimizer, run.scheduler,
                             history.to_dict(), best_state)
        run.accelerator.wait_for_everyone()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, history)
    bar.close()

    history.examples_per_second = history.examples_seen / max(history.train_seconds, MIN_SECONDS)
    # Without the mixed-precision wrapper: the returned model computes what its saved weights reload to.
    model = run.accelerator.unwrap_model(run.model, keep_fp32_wrapper=False)
    if best_state is not None:
        _load_trainable(model, best_state)
    else:
        history.best_epoch = history.epochs_run
    run.accelerator.free_memory()
    return TrainResult(model=model.eval(), tokenizer=run.tokenizer, history=history)


def _resume(checkpoint: Path, run: PreparedTraining, fresh: TrainingHistory) -> tuple[TrainingHistory, dict | None]:
    """Restore weights, optimizer, scheduler and RNG from a checkpoint of the same inputs (same
    ``key``); returns (history, best_state), or (``fresh``, None) when there is nothing to resume."""
    saved = read_checkpoint(checkpoint)
    if saved is None:
        return fresh, None
    if saved["history"].get("key") != fresh.key:
        logger.info("discarding a checkpoint of other inputs in %s", checkpoint.parent)
        return fresh, None
    _load_trainable(run.unwrapped(), saved["trainable"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    restore_rng(saved)
    history = TrainingHistory.resumed(saved["history"])
    logger.info("resuming training from epoch %d (%s)", history.epochs_run, checkpoint)
    return history, saved["best_state"]


def work_dir_for(out_dir: str | Path) -> Path:
    """The checkpoint folder of a training whose result goes to ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}{WORK_SUFFIX}"


def is_complete(out_dir: str | Path, key: str | None = None) -> bool:
    """True when ``out_dir`` holds a finished training (of inputs hashing to ``key``, if given)."""
    record = Path(out_dir) / TRAINING_FILE
    if not record.is_file():
        return False
    return key is None or json.loads(record.read_text(encoding="utf-8")).get("key") == key


def train_adapter(
    base: str, spec: TaskSpec, examples: list[SelectedExample], recipe: TrainingRecipe, out_dir: str | Path,
    *, progress: bool = True, on_epoch_end: Callable[[int, TrainingHistory], None] | None = None,
    probes: Sequence[Probe] = (), add_bos_token: bool | None = None, monitor: str | None = None,
) -> Path:
    """Train and save to ``out_dir`` (see the module docstring); a finished folder of the same
    inputs is returned as it is."""
    out_dir = Path(out_dir).expanduser().resolve()
    if is_complete(out_dir, training_key(base, spec, examples, recipe, add_bos_token, monitor)):
        logger.info("%s already holds this training; reusing it", out_dir)
        return out_dir
    work_dir = work_dir_for(out_dir)
    result = train_model(base, spec, examples, recipe, work_dir, progress=progress, on_epoch_end=on_epoch_end,
                         probes=probes, add_bos_token=add_bos_token, monitor=monitor)
    save_training(result, base, spec, examples, recipe, out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir


def save_training(result: TrainResult, base: str, spec: TaskSpec, examples: list[SelectedExample],
                  recipe: TrainingRecipe, out_dir: str | Path) -> Path:
    """Write the trained model and its records to a temporary sibling of ``out_dir``, then rename it
    into place: ``out_dir`` is either absent, the previous complete folder, or the new one."""
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp."))
    history = result.history
    try:
        if recipe.method == FULL:
            result.model.save_pretrained(staging, safe_serialization=True)
            result.tokenizer.save_pretrained(staging)
        else:
            result.model.save_pretrained(staging, save_embedding_layers=False)
        recipe.save(staging / RECIPE_FILE)
        write_json_atomic(staging / CURVES_FILE, history.curves())
        write_json_atomic(staging / TRAINING_FILE, {
            "base": base, "task": spec.name, "selection_hash": selection_hash(examples),
            "recipe_hash": recipe.recipe_hash(), "method": recipe.method, **history.to_dict(steps=False),
        })
        return replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
