"""Everything a training run holds before its first step: θ0 made ready by the recipe, the examples
rendered into loaders, AdamW and its schedule under Accelerate, and, when the recipe asks for it,
each example's frozen-prefix states (``training/prefix_cache.py``)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import torch

from lm_eval_approx.data.selection_file import SelectedExample
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.head_positions import supports_head_positions
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec
from lm_eval_approx.training.batching import BucketedBatches
from lm_eval_approx.training.model import prepare_model
from lm_eval_approx.training.precision import accelerator_for
from lm_eval_approx.training.prefix_cache import FrozenPrefix, prefixed_batch
from lm_eval_approx.training.recipe import BALANCED, BUCKETED, NO_BALANCE, TrainingRecipe
from lm_eval_approx.training.rendering import (
    EpochShuffle,
    balance_classes,
    normalise_weights,
    render_examples,
    split_validation,
    training_batch,
)

SHUFFLE_STRIDE = 1_000_003


@dataclass
class PreparedTraining:
    """A training run's parts, as Accelerate prepared them (``model`` may be wrapped; see ``unwrapped``)."""

    accelerator: Any
    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    train_loader: Any
    val_loader: Any | None
    head_positions: bool  # classification losses from the head at label positions only (training/loss.py)
    prefix: FrozenPrefix | None
    n_train: int
    n_validation: int
    render_seconds: float
    prefix_seconds: float

    def unwrapped(self):
        """The model itself (PEFT-wrapped for LoRA), for probes, checkpoints and saving."""
        return self.accelerator.unwrap_model(self.model)


def _loader(rows, batch_size: int, collate, sampler=None):
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, sampler=sampler, collate_fn=collate)


def _train_loader(rows, lengths: list[int], recipe: TrainingRecipe, collate):
    """The epoch loader: the seeded permutation in batches as it comes, or length-bucketed."""
    sampler = EpochShuffle(len(rows), recipe.seed, SHUFFLE_STRIDE)
    if recipe.batch_order != BUCKETED:
        return _loader(rows, recipe.batch_size, collate, sampler)
    batches = BucketedBatches(sampler, lengths, recipe.batch_size)
    return torch.utils.data.DataLoader(rows, batch_sampler=batches, collate_fn=collate)


def prepare_training(base: str, spec: TaskSpec, examples: list[SelectedExample], recipe: TrainingRecipe,
                     add_bos_token: bool | None = None, full_logits: bool = False) -> PreparedTraining:
    """θ0 and the data of a training of ``examples`` under ``recipe``, ready for its first epoch."""
    from transformers import get_scheduler

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
    pad_id = tokenizer.pad_token_id
    accelerator = accelerator_for(recipe)
    prefix, prefix_seconds = None, 0.0
    train_items: list[Any] = train_data  # rows, or (row, prefix states) pairs under prefix_cache
    val_items: list[Any] = val_data
    collate = functools.partial(training_batch, pad_id=pad_id)
    if recipe.prefix_cache:
        # The states come from the model as Accelerate prepares it (placed, under the mixed precision);
        # preparing it again below returns it as it is.
        prefix = FrozenPrefix.of(model, recipe.lora_layers)
        model = accelerator.prepare(model)
        began = time.perf_counter()
        train_items = list(zip(train_data, prefix.states(model, train_data, recipe.batch_size, pad_id)))
        val_items = list(zip(val_data, prefix.states(model, val_data, recipe.batch_size, pad_id)))
        prefix_seconds = time.perf_counter() - began
        collate = functools.partial(prefixed_batch, pad_id=pad_id)
    train_loader = _train_loader(train_items, [len(r.input_ids) for r in train_data], recipe, collate)
    val_loader = _loader(val_items, recipe.batch_size, collate) if val_items else None

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps_per_epoch = -(-len(train_loader) // recipe.gradient_accumulation)
    total_steps = steps_per_epoch * recipe.epochs
    scheduler = get_scheduler(recipe.scheduler, optimizer, num_warmup_steps=int(recipe.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    return PreparedTraining(accelerator, model, tokenizer, optimizer, scheduler, train_loader, val_loader,
                            head_positions, prefix, len(train_data), len(val_data), render_seconds, prefix_seconds)
