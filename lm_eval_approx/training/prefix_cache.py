"""The frozen prefix, computed once: training through the top ``lora_layers`` blocks only.

With ``lora_layers`` = L > 0 (``training/model.py``) the adapters sit in the top L of N blocks and
the head; blocks 0 … k−1 (k = N − L) and the embeddings keep θ0's weights. When nothing below block
k draws random numbers (no dropout there), the hidden states h_k(x) entering block k depend on the
input ids alone, so they are the same at every step of every epoch. The loss, and the gradient of
every adapter weight (all of them at or above block k), depend on the input only through h_k, so
feeding the cached h_k to block k gives the forward and backward of the full model, up to float
rounding (a row's states are computed in another batch than the one it trains in). The backward
already stopped at block k; what the cache saves is the forward of k blocks per step: a training of
E epochs runs N + E·L block forwards per example instead of E·N.

A batch is right-padded and every block is causal, so a row's states at its real positions are the
same in any batch; a shorter row's padding positions get zeros (they feed only ignored labels). The
states are computed once per rendered row, without gradients, through the prepared model, so under
the recipe's mixed precision exactly as the full path computes them, and kept on the CPU as produced
(about T·hidden floats per row: 128 × 576 × 4 bytes = 0.3 MB for SmolLM2-135M).

How. While a batch runs, a forward pre-hook on block k swaps its hidden-states input for the cached
states, and blocks 0 … k−1 return their input untouched; the rest of the model's forward (position
ids, rotary tables, attention masks, final norm, head, ``logits_to_keep``) runs as always, so any
decoder family whose blocks sit in one list of ``num_hidden_layers`` and return their hidden states
as a tensor works (Llama, Mistral, Qwen2, Gemma2, Phi-3, GPT-NeoX in transformers 5). Families whose
blocks return tuples (Falcon, BLOOM) and models with dropout below block k (GPT-2's and OPT's
defaults) are refused with ``PrefixCacheError``, which says why.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lm_eval_approx.errors import ApproxError
from lm_eval_approx.training.loss import batch_example_losses
from lm_eval_approx.training.rendering import RenderedExample, training_batch

PREFIX_STATES = "prefix_states"  # the batch entry holding each row's cached h_k
# Config fields that name a dropout; the ones of heads a causal LM does not run are not counted.
DROPOUT_FIELD = re.compile(r"dropout|pdrop")
OTHER_HEADS = ("classifier_", "summary_")


class PrefixCacheError(ApproxError, ValueError):
    """The frozen-prefix cache cannot reproduce this model's training (see the message)."""


class _Captured(Exception):
    """Raised by the capture hook once block k's input is in hand: the blocks above are not run."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states = states


def _hidden_states(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _pass_through(*args, **kwargs) -> torch.Tensor:
    """A bypassed block: its output is its input (block k discards it for the cached states)."""
    return _hidden_states(args, kwargs)


def decoder_blocks(model) -> torch.nn.ModuleList:
    """The model's list of transformer blocks: its one ModuleList of ``num_hidden_layers`` modules."""
    config = getattr(model, "config", None)
    count = getattr(config.get_text_config() if config is not None else None, "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
    if len(lists) != 1:
        raise PrefixCacheError(f"{type(model).__name__}: found {len(lists)} block lists of num_hidden_layers={count} "
                               "modules; prefix_cache needs a decoder whose blocks sit in one list")
    return lists[0]


def dropout_below(model, blocks: torch.nn.ModuleList, first: int) -> list[str]:
    """What draws dropout in the frozen part: config dropout fields above zero (they apply to every
    block) and Dropout modules with p > 0 outside the blocks from ``first`` on and the adapters."""
    config = model.config.get_text_config()
    found = [f"{name}={value}" for name, value in sorted(config.to_dict().items())
             if DROPOUT_FIELD.search(name) and not name.startswith(OTHER_HEADS)
             and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0]
    trained = {id(m) for block in list(blocks)[first:] for m in block.modules()}
    found += [f"{name} (p={module.p})" for name, module in model.named_modules()
              if isinstance(module, torch.nn.Dropout) and module.p > 0 and id(module) not in trained
              and "lora_" not in name]
    return found


@dataclass
class FrozenPrefix:
    """Blocks 0 … ``first``−1 of ``blocks``: computed once per row by ``states``, skipped by ``feeding``."""

    blocks: torch.nn.ModuleList
    first: int

    @classmethod
    def of(cls, model, lora_layers: int) -> FrozenPrefix:
        """The frozen prefix of ``model`` (unwrapped, LoRA on its top ``lora_layers`` blocks), or a
        ``PrefixCacheError`` saying why its states cannot be cached."""
        blocks = decoder_blocks(model)
        first = len(blocks) - lora_layers
        if first < 1:
            raise PrefixCacheError(f"lora_layers={lora_layers} adapts every one of the {len(blocks)} blocks: no frozen "
                                   "prefix to cache (prefix_cache: false, or fewer lora_layers)")
        dropout = dropout_below(model, blocks, first)
        if dropout:
            raise PrefixCacheError(f"{type(model).__name__} draws dropout below block {first} ({', '.join(dropout)}), "
                                   "so its states change at every step; prefix_cache needs those at zero")
        return cls(blocks, first)

    def states(self, model, rows: Sequence[RenderedExample], batch_size: int, pad_id: int) -> list[torch.Tensor]:
        """h_k of every row, (len(row.input_ids), hidden) each, in ``rows`` order: ``model`` (as
        prepared for training, so under its mixed precision) run in eval mode without gradients up to
        block k, rows batched by length."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
        out: list[torch.Tensor | None] = [None] * len(rows)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for lo in range(0, len(order), batch_size):
                    chosen = order[lo:lo + batch_size]
                    batch = training_batch([rows[i] for i in chosen], pad_id)
                    device = next(self.blocks[self.first].parameters()).device
                    states = self._capture(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                    for row, i in enumerate(chosen):
                        out[i] = states[row, :len(rows[i].input_ids)].to("cpu", copy=True)
        finally:
            model.train(was_training)
        return out  # type: ignore[return-value]  # the batches cover every row

    def _capture(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One forward up to block k; its input hidden states."""
        returned: list[type] = []

        def stop(module, args, kwargs):
            raise _Captured(_hidden_states(args, kwargs))

        def note(module, args, output):
            returned.append(type(output))

        handles = [self.blocks[self.first].register_forward_pre_hook(stop, with_kwargs=True),
                   self.blocks[self.first - 1].register_forward_hook(note)]
        try:
            model(input_ids=input_ids, attention_mask=attention_mask)
        except _Captured as captured:
            states = captured.states
        else:
            raise PrefixCacheError(f"{type(self.blocks[self.first]).__name__} (block {self.first}) never ran in the "
                                   "model's forward; prefix_cache needs a decoder that runs its block list in order")
        finally:
            for handle in handles:
                handle.remove()
        if returned and not issubclass(returned[0], torch.Tensor):
            raise PrefixCacheError(f"{type(self.blocks[0]).__name__} returns a {returned[0].__name__}, not its hidden "
                                   "states as a tensor; prefix_cache supports decoders whose blocks do (Llama-like)")
        return states

    @contextlib.contextmanager
    def feeding(self, states: torch.Tensor):
        """Within the block, the model's forward takes ``states`` (B, T, hidden) as block k's input
        and skips blocks 0 … k−1; everything is restored on leaving, even on an error."""

        def substitute(module, args, kwargs):
            if args:
                return (states, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": states}

        bypassed = list(self.blocks)[:self.first]
        own = [block.__dict__.get("forward") for block in bypassed]  # e.g. an Accelerate hook's forward
        handle = self.blocks[self.first].register_forward_pre_hook(substitute, with_kwargs=True)
        try:
            for block in bypassed:
                block.forward = _pass_through
            yield
        finally:
            handle.remove()
            for block, forward in zip(bypassed, own):
                if forward is None:
                    block.__dict__.pop("forward", None)
                else:
                    block.forward = forward


def prefixed_batch(items: Sequence[tuple[RenderedExample, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """``training_batch`` of the rows plus ``PREFIX_STATES``: their cached states, zero-padded to
    the batch's width."""
    rows, states = zip(*items)
    batch = training_batch(list(rows), pad_id)
    width = batch["input_ids"].shape[1]
    padded = states[0].new_zeros((len(states), width, states[0].shape[-1]))
    for i, state in enumerate(states):
        padded[i, :len(state)] = state
    batch[PREFIX_STATES] = padded
    return batch


def prefixed_losses(model, batch: dict[str, torch.Tensor], kind: str, head_positions: bool,
                    prefix: FrozenPrefix | None) -> torch.Tensor:
    """``batch_example_losses``, through the cached prefix when the batch carries its states."""
    if prefix is None or PREFIX_STATES not in batch:
        return batch_example_losses(model, batch, kind, head_positions)
    with prefix.feeding(batch[PREFIX_STATES]):
        return batch_example_losses(model, batch, kind, head_positions)
