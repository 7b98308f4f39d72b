"""One training epoch: every batch forward and backward (in micro-batch slices), an optimizer step
per accumulated batch, and the epoch's loss, steps, tokens and seconds into the history.

A batch minimises (1/|B|) Σ_{i∈B} w̃_i L_i (``training/loop.py``'s module docstring); ``backward_in_parts``
adds it to the gradients slice by slice, so only one slice's activations are alive at a time.
"""

from __future__ import annotations

import time

from lm_eval_approx.training.history import TrainingHistory, timed
from lm_eval_approx.training.prefix_cache import FrozenPrefix, prefixed_losses
from lm_eval_approx.training.prepared import PreparedTraining
from lm_eval_approx.training.recipe import TrainingRecipe


def backward_in_parts(accelerator, model, batch: dict, kind: str, head_positions: bool, part_size: int,
                      clock: dict[str, float] | None = None, prefix: FrozenPrefix | None = None) -> float:
    """Backpropagate the batch loss (1/|B|) Σ w̃_i L_i in slices of ``part_size`` examples (0: one
    slice): each slice adds its share Σ_{i∈slice} w̃_i L_i / |B| to the gradients, so the update is
    the whole batch's. Returns the loss; ``clock`` gets the forward and backward seconds; with
    ``prefix``, the batch's cached states stand in for the frozen blocks (``training/prefix_cache.py``)."""
    size, clock = len(batch["weight"]), {} if clock is None else clock
    parts = [batch] if not 0 < part_size < size else [
        {key: value[lo:lo + part_size] for key, value in batch.items()} for lo in range(0, size, part_size)]
    total = 0.0
    for part in parts:
        if len(parts) > 1:
            width = int(part["attention_mask"].sum(dim=1).max())  # right padding: drop the slice's extra columns
            part = {key: value[:, :width] if value.dim() >= 2 else value for key, value in part.items()}
        with timed(clock, "forward"):
            loss = (prefixed_losses(model, part, kind, head_positions, prefix) * part["weight"]).sum() / size
        with timed(clock, "backward"):
            accelerator.backward(loss)
        total += loss.item()
    return total


def train_epoch(run: PreparedTraining, recipe: TrainingRecipe, kind: str, history: TrainingHistory, epoch: int,
                bar) -> None:
    """Epoch ``epoch`` (0-based) of ``run``: its batches in the seeded order, the optimizer stepping
    as ``recipe`` says (accumulation, clipping), the loss curve and counters into ``history``."""
    accelerator, model, optimizer, scheduler = run.accelerator, run.model, run.optimizer, run.scheduler
    run.train_loader.set_epoch(epoch)
    epoch_loss, epoch_batches, began = 0.0, 0, time.perf_counter()
    for batch in run.train_loader:
        with accelerator.accumulate(model):
            loss = backward_in_parts(accelerator, model, batch, kind, run.head_positions, recipe.micro_batch_size,
                                     history.phase_seconds, run.prefix)
            with timed(history.phase_seconds, "optimizer"):  # type: ignore[arg-type]  # a training history's clocks are set
                if accelerator.sync_gradients and recipe.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
        history.count_tokens(int(batch["attention_mask"].sum()), batch["attention_mask"].numel())
        epoch_loss, epoch_batches = epoch_loss + loss, epoch_batches + 1
        history.examples_seen += len(batch["weight"]) * accelerator.num_processes
        history.steps.append({"epoch": epoch + 1, "loss": loss, "lr": scheduler.get_last_lr()[0]})
        speed = history.examples_seen / (history.train_seconds + time.perf_counter() - began)
        bar.set_postfix({"loss": f"{epoch_loss / epoch_batches:.4f}", "ex/s": f"{speed:.1f}"})
        bar.update(1)
    history.train_seconds += time.perf_counter() - began
    history.train_loss.append(epoch_loss / epoch_batches)
    history.epochs_run = epoch + 1
