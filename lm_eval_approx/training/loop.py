"""Train θ0 on a list of examples with one recipe: the expert θf and every approximation alike.

Loss. Example i has loss L_i (summed label-token NLL for classification, mean token NLL for
language modelling, see ``training/data.py``) and weight w_i (1 unless the strategy weights examples,
e.g. select_omp). With w̃_i = w_i / mean(w) over the training part, a batch B minimises
(1/|B|) Σ_{i∈B} w̃_i L_i, so the expected gradient is that of Σ_i w_i L_i / Σ_i w_i, the loss of
the weighted data set; with equal weights it is the ordinary mean loss. Validation loss is
Σ w_i L_i / Σ w_i over the held-out part, computed without dropout. Classification runs the output
head only at the positions that predict label tokens (``training/loss.py``; same losses and gradients).

Loop. Accelerate runs AdamW with a warm-up schedule, gradient accumulation and clipping (CPU here;
several processes or mixed precision where present). After each epoch the trainable weights,
optimizer, scheduler, RNG state and curves are checkpointed atomically (``training/resume.py``: plain
tensors and values, read back with ``weights_only=True``) in a work folder next to
the output, keyed by a hash of base, task, selection and recipe: an interrupted run resumes from
its last finished epoch and ends with the same weights as an uninterrupted one; a work folder of
other inputs is discarded. The weights of the epoch with the lowest validation loss are kept, and
training stops after ``patience`` epochs without improvement.

Output. The folder is assembled in a temporary sibling and renamed into place, so it exists only
when complete: a PEFT adapter (``lm_eval --model hf --model_args pretrained=BASE,peft=DIR``) or,
for full finetuning, a model folder with its tokenizer; plus recipe.json, training.json (hashes,
best epoch, speed) and curves.json. LoRA on a head tied to the input embeddings (SmolLM2,
GPT-2) adds A, B only to the output projection; the shared base matrix stays frozen and is not
saved in the adapter, so the input embeddings are untouched. (lm-eval's HFLM then needs
``harness/tied_head.install()``, which ``lm-eval-approx run`` applies, to load such an adapter.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lm_eval_approx.cache.atomic import replace_dir, write_json_atomic
from lm_eval_approx.data.selection_file import SelectedExample, selection_hash
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.loading import model_fingerprint, resolve_model
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec, task_key
from lm_eval_approx.training.data import (
    EpochShuffle,
    balance_classes,
    normalise_weights,
    render_examples,
    split_validation,
    training_batch,
)
from lm_eval_approx.models.head_positions import supports_head_positions
from lm_eval_approx.training.loss import batch_example_losses
from lm_eval_approx.training.precision import accelerator_for
from lm_eval_approx.training.probes import Probe, direction, improves, record_probes
from lm_eval_approx.training.batching import BucketedBatches
from lm_eval_approx.training.model import prepare_model
from lm_eval_approx.training.recipe import BALANCED, BUCKETED, FULL, NO_BALANCE, TrainingRecipe
from lm_eval_approx.training.summary import TRAINING_FILE
from lm_eval_approx.training.resume import (
    CHECKPOINT_FILE,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)

logger = logging.getLogger(__name__)

RECIPE_FILE = "recipe.json"
CURVES_FILE = "curves.json"
WORK_SUFFIX = ".partial"
SHUFFLE_STRIDE = 1_000_003
KEY_CHARS = 16
MIN_SECONDS = 1e-9  # guards the examples/s division for an empty run
# Where a training's time goes (history["phase_seconds"]); the probes keep their own "probe_seconds".
PHASES = ("render", "forward", "backward", "optimizer", "validation")


@dataclass
class TrainResult:
    """The trained model in memory (PEFT-wrapped for LoRA) and what happened while training."""

    model: Any
    tokenizer: Any
    history: dict[str, Any] = field(default_factory=dict)


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
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:KEY_CHARS]


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _validation_loss(accelerator, model, loader, kind: str, head_positions: bool) -> float | None:
    """Σ w_i L_i / Σ w_i over the validation loader, in eval mode (no dropout)."""
    if loader is None:
        return None
    model.eval()
    total, weight = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for batch in loader:
            losses = batch_example_losses(model, batch, kind, head_positions)
            losses, w = accelerator.gather_for_metrics((losses, batch["weight"]))
            total += (losses.double() * w.double()).sum().cpu()
            weight += w.double().sum().cpu()
    model.train()
    return float(total / weight)


def _loader(rows, batch_size: int, pad_id: int, sampler=None):
    return torch.utils.data.DataLoader(
        rows, batch_size=batch_size, sampler=sampler, collate_fn=lambda b: training_batch(b, pad_id)
    )


def _train_loader(rows, recipe: TrainingRecipe, pad_id: int):
    """The epoch loader: the seeded permutation in batches as it comes, or length-bucketed."""
    sampler = EpochShuffle(len(rows), recipe.seed, SHUFFLE_STRIDE)
    if recipe.batch_order != BUCKETED:
        return _loader(rows, recipe.batch_size, pad_id, sampler)
    batches = BucketedBatches(sampler, [len(r.input_ids) for r in rows], recipe.batch_size)
    return torch.utils.data.DataLoader(rows, batch_sampler=batches, collate_fn=lambda b: training_batch(b, pad_id))


def train_model(
    base: str, spec: TaskSpec, examples: list[SelectedExample], recipe: TrainingRecipe, work_dir: str | Path,
    *, progress: bool = True, on_epoch_end: Callable[[int, dict], None] | None = None, full_logits: bool = False,
    probes: Sequence[Probe] = (), add_bos_token: bool | None = None, monitor: str | None = None,
) -> TrainResult:
    """Train θ0 (``base``) on ``examples``; checkpoints go to ``work_dir`` (resumed when they match).

    ``on_epoch_end(epoch, history)`` is called after each epoch's checkpoint is written.
    ``probes`` are measured before training and after every epoch (``history["probes"]``); when
    ``recipe.stop_on`` names one of their values, that value, not the validation loss, picks the
    kept epoch (θ0 itself, epoch 0, included) and counts the patience.
    Classification losses come from the output head at the label-predicting positions only
    (``training/loss.py``); ``full_logits=True`` computes full-vocabulary logits everywhere instead
    (the slower reference path, same losses).
    """
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    if not examples:
        raise ConfigError("examples", examples, "at least one training example")
    work_dir, key = Path(work_dir), training_key(base, spec, examples, recipe, add_bos_token, monitor)
    on_signal = recipe.uses_probe
    higher_better = direction(probes, recipe.stop_on) if on_signal else False
    model, tokenizer = prepare_model(base, recipe)
    head_positions = not full_logits and supports_head_positions(model)
    if recipe.class_balance == BALANCED:
        if spec.kind != CLASSIFICATION:
            raise ConfigError("class_balance", recipe.class_balance, f"{NO_BALANCE!r} for the {spec.kind} task {spec.name}")
        examples = balance_classes(examples)
    train_rows, val_rows = split_validation(examples, recipe.validation_fraction, recipe.seed)
    began = time.perf_counter()
    train_data = normalise_weights(render_examples(tokenizer, spec, train_rows, recipe.max_length, add_bos_token))
    val_data = render_examples(tokenizer, spec, val_rows, recipe.max_length, add_bos_token)
    render_seconds = time.perf_counter() - began
    train_loader = _train_loader(train_data, recipe, tokenizer.pad_token_id)
    val_loader = _loader(val_data, recipe.batch_size, tokenizer.pad_token_id) if val_data else None

    accelerator = accelerator_for(recipe)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps_per_epoch = -(-len(train_loader) // recipe.gradient_accumulation)
    total_steps = steps_per_epoch * recipe.epochs
    scheduler = get_scheduler(recipe.scheduler, optimizer, num_warmup_steps=int(recipe.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    history: dict[str, Any] = {
        "key": key, "n_train": len(train_data), "n_validation": len(val_data), "epochs_run": 0,
        "train_loss": [], "validation_loss": [], "steps": [], "best_epoch": None, "best_validation_loss": None,
        "stopped_early": False, "resumed_from_epoch": None, "train_seconds": 0.0, "examples_seen": 0,
        "stop_on": recipe.stop_on, "probes": {}, "probe_seconds": 0.0,
        "phase_seconds": dict.fromkeys(PHASES, 0.0), "tokens": {"real": 0, "padded": 0},
    }
    history["phase_seconds"]["render"] = render_seconds
    checkpoint = work_dir / CHECKPOINT_FILE
    history, best_state = _resume(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler, history)
    clock = history.setdefault("phase_seconds", dict.fromkeys(PHASES, 0.0))
    if not history["validation_loss"]:
        with _timed(clock, "validation"):
            history["initial_validation_loss"] = _validation_loss(accelerator, model, val_loader, spec.kind,
                                                                  head_positions)
    if probes and not history["probes"]:
        record_probes(history, probes, accelerator.unwrap_model(model), tokenizer,
                       start=(model_fingerprint(base), recipe.mixed_precision))
        if on_signal:
            history["best_epoch"], history["best_signal"] = 0, history["probes"][recipe.stop_on][0]
            best_state = _trainable_state(accelerator.unwrap_model(model))

    start = history["epochs_run"]
    bar = tqdm(total=len(train_loader) * recipe.epochs, initial=len(train_loader) * start,
               disable=not (progress and accelerator.is_main_process), desc=f"train {spec.name}", unit="batch")
    for epoch in range(start, recipe.epochs):
        if history["stopped_early"]:
            break
        train_loader.set_epoch(epoch)
        epoch_loss, epoch_batches, began = 0.0, 0, time.perf_counter()
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = _backward_in_parts(accelerator, model, batch, spec.kind, head_positions, recipe.micro_batch_size,
                                          clock)
                with _timed(clock, "optimizer"):
                    if accelerator.sync_gradients and recipe.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
            tokens = history.setdefault("tokens", {"real": 0, "padded": 0})
            tokens["real"] += int(batch["attention_mask"].sum())
            tokens["padded"] += batch["attention_mask"].numel()
            epoch_loss, epoch_batches = epoch_loss + loss, epoch_batches + 1
            history["examples_seen"] += len(batch["weight"]) * accelerator.num_processes
            history["steps"].append({"epoch": epoch + 1, "loss": loss, "lr": scheduler.get_last_lr()[0]})
            speed = history["examples_seen"] / (history["train_seconds"] + time.perf_counter() - began)
            bar.set_postfix({"loss": f"{epoch_loss / epoch_batches:.4f}", "ex/s": f"{speed:.1f}"})
            bar.update(1)
        history["train_seconds"] += time.perf_counter() - began
        history["train_loss"].append(epoch_loss / epoch_batches)
        history["epochs_run"] = epoch + 1
        with _timed(clock, "validation"):
            val_loss = _validation_loss(accelerator, model, val_loader, spec.kind, head_positions)
        if val_loss is not None:
            history["validation_loss"].append(val_loss)
        if probes:
            record_probes(history, probes, accelerator.unwrap_model(model), tokenizer)
        if on_signal:
            signal = history["probes"][recipe.stop_on][-1]
            better = improves(higher_better, signal, history["best_signal"])
            if val_loss is not None and improves(False, val_loss, history["best_validation_loss"]):
                history["best_validation_loss"] = val_loss
        else:
            signal = val_loss
            better = val_loss is not None and improves(False, val_loss, history["best_validation_loss"])
        if signal is not None:
            if better:
                history["best_epoch"] = epoch + 1
                history["best_signal" if on_signal else "best_validation_loss"] = signal
                best_state = _trainable_state(accelerator.unwrap_model(model))
            elif recipe.patience and epoch + 1 - history["best_epoch"] >= recipe.patience:
                history["stopped_early"] = True
        if accelerator.is_main_process:
            write_checkpoint(checkpoint, _trainable_state(accelerator.unwrap_model(model)), optimizer, scheduler,
                             history, best_state)
        accelerator.wait_for_everyone()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, history)
    bar.close()

    history["examples_per_second"] = history["examples_seen"] / max(history["train_seconds"], MIN_SECONDS)
    # Without the mixed-precision wrapper: the returned model computes what its saved weights reload to.
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if best_state is not None:
        _load_trainable(model, best_state)
    else:
        history["best_epoch"] = history["epochs_run"]
    accelerator.free_memory()
    return TrainResult(model=model.eval(), tokenizer=tokenizer, history=history)


def _backward_in_parts(accelerator, model, batch: dict, kind: str, head_positions: bool, part_size: int,
                       clock: dict[str, float] | None = None) -> float:
    """Backpropagate the batch loss (1/|B|) Σ w̃_i L_i in slices of ``part_size`` examples (0: one
    slice): each slice adds its share Σ_{i∈slice} w̃_i L_i / |B| to the gradients, so the update is
    the whole batch's, while only one slice's activations are alive at a time. Returns the loss;
    ``clock`` gets the forward and backward seconds."""
    size, clock = len(batch["weight"]), {} if clock is None else clock
    parts = [batch] if not 0 < part_size < size else [
        {key: value[lo:lo + part_size] for key, value in batch.items()} for lo in range(0, size, part_size)]
    total = 0.0
    for part in parts:
        if len(parts) > 1:
            width = int(part["attention_mask"].sum(dim=1).max())  # right padding: drop the slice's extra columns
            part = {key: value[:, :width] if value.dim() == 2 else value for key, value in part.items()}
        with _timed(clock, "forward"):
            loss = (batch_example_losses(model, part, kind, head_positions) * part["weight"]).sum() / size
        with _timed(clock, "backward"):
            accelerator.backward(loss)
        total += loss.item()
    return total


@contextlib.contextmanager
def _timed(clock: dict[str, float], phase: str):
    began = time.perf_counter()
    try:
        yield
    finally:
        clock[phase] = clock.get(phase, 0.0) + time.perf_counter() - began


def _resume(checkpoint: Path, model, optimizer, scheduler, fresh: dict) -> tuple[dict, dict | None]:
    """Restore weights, optimizer, scheduler and RNG from a checkpoint of the same inputs (same
    ``key``); returns (history, best_state), or (``fresh``, None) when there is nothing to resume."""
    saved = read_checkpoint(checkpoint)
    if saved is None:
        return fresh, None
    if saved["history"]["key"] != fresh["key"]:
        logger.info("discarding a checkpoint of other inputs in %s", checkpoint.parent)
        return fresh, None
    _load_trainable(model, saved["trainable"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    restore_rng(saved)
    history = saved["history"]
    history["resumed_from_epoch"] = history["epochs_run"]
    logger.info("resuming training from epoch %d (%s)", history["epochs_run"], checkpoint)
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
    *, progress: bool = True, on_epoch_end: Callable[[int, dict], None] | None = None, probes: Sequence[Probe] = (),
    add_bos_token: bool | None = None, monitor: str | None = None,
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
        write_json_atomic(staging / CURVES_FILE, {
            "train_loss": history["train_loss"], "validation_loss": history["validation_loss"],
            "initial_validation_loss": history.get("initial_validation_loss"), "steps": history["steps"],
            "probes": history.get("probes", {}),
        })
        write_json_atomic(staging / TRAINING_FILE, {
            "base": base, "task": spec.name, "selection_hash": selection_hash(examples),
            "recipe_hash": recipe.recipe_hash(), "method": recipe.method,
            **{k: v for k, v in history.items() if k != "steps"},
        })
        return replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
