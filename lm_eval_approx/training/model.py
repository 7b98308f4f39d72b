"""θ0 made ready to train by a recipe: LoRA-wrapped on the resolved target modules (or all weights
for full finetuning), with gradient checkpointing when the recipe asks for it."""

from __future__ import annotations

import re
import warnings

import torch

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.loading import is_adapter, load_model, load_tokenizer, resolve_model
from lm_eval_approx.training.dropout import use_fast_dropout
from lm_eval_approx.training.recipe import ALL_LINEAR, FAST_DROPOUT, FULL, HEAD, TrainingRecipe

# PEFT warns whenever a layer tied to the embeddings is targeted; for LoRA on the head that is the
# intended, safe case (training/loop.py's docstring), so this one warning is silenced.
TIED_WARNING = "Model has `tie_word_embeddings=True`"


def block_index(name: str) -> int | None:
    """The transformer block a module belongs to: the first numbered segment of its name
    (``model.layers.29.mlp.up_proj`` → 29, ``transformer.h.3.attn.c_attn`` → 3), else None."""
    match = re.search(r"\.(\d+)\.", f".{name}.")
    return None if match is None else int(match.group(1))


def resolve_target_modules(model, targets: tuple[str, ...], top_blocks: int = 0) -> list[str]:
    """PEFT target names for the recipe's ``target_modules`` on this model (see recipe.py); with
    ``top_blocks`` = L > 0, only those in the top L blocks and the head."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    modules = dict(model.named_modules())
    head_name = next((n for n, m in modules.items() if m is head), None)
    linear = {n for n, m in modules.items() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head}
    full_names: set[str] = set()
    for target in targets:
        if target == ALL_LINEAR:
            full_names |= linear
        elif target == HEAD:
            if head_name is None:
                raise ConfigError("target_modules", target, "module names of a model with an output head")
            full_names.add(head_name)
        else:
            matched = {n for n in modules if n == target or n.endswith("." + target)}
            if not matched:
                known = sorted({n.rsplit(".", 1)[-1] for n in linear | {head_name or ""}} - {""})
                raise ConfigError("target_modules", target, f"{ALL_LINEAR}, {HEAD}, or one of {', '.join(known)}")
            full_names |= matched
    if top_blocks:
        blocks = {i for i in map(block_index, linear) if i is not None}
        if not blocks:
            raise ConfigError("lora_layers", top_blocks, "0 for a model whose layers are not in numbered blocks")
        lowest = max(blocks) + 1 - top_blocks
        full_names = {n for n in full_names
                      if n == head_name or ((index := block_index(n)) is not None and index >= lowest)}
        if not full_names:
            raise ConfigError("lora_layers", top_blocks, "a value that leaves target modules to adapt")
        return sorted(full_names)
    leaves = {n.rsplit(".", 1)[-1] for n in full_names}
    same = {n for n in modules if n.rsplit(".", 1)[-1] in leaves} == full_names
    return sorted(leaves if same else full_names)


def prepare_model(base: str, recipe: TrainingRecipe):
    """θ0 ready to train: LoRA-wrapped (only A, B trainable) or, for full finetuning, all weights."""
    from accelerate.utils import set_seed

    if is_adapter(resolve_model(base)):
        raise ConfigError("base", base, "a full model (folder, hub id, .gguf or alias), not a PEFT adapter")
    set_seed(recipe.seed)
    model = load_model(base)
    tokenizer = load_tokenizer(base)
    if recipe.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings
        # under LoRA are fine; the KV cache is useless in training and conflicts with it.
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if recipe.method == FULL:
        return model.train(), tokenizer
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
        target_modules=resolve_target_modules(model, recipe.target_modules, recipe.lora_layers), task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=f".*{TIED_WARNING}.*")
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        model = get_peft_model(model, config)
    if recipe.dropout_sampler == FAST_DROPOUT:
        use_fast_dropout(model)
    return model.train(), tokenizer
