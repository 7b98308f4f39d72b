"""Packed rows: one forward scores every continuation of a shared prefix (block-causal attention).

A row is a prefix p followed by the inputs x_{<m} of each continuation x (m tokens):

    row       = p | x^1_1..x^1_{m1-1} | x^2_1..x^2_{m2-1} | ...
    position  = 0..|p|-1 on p, and |p|..|p|+m_k-2 on continuation k
    attention : token q sees token t  iff  t <= q  and  (t in p  or  t, q in the same continuation)

so every continuation token sees exactly the keys, at the positions, it would see in the plain
sequence p + x. x^k_1 is scored at the last prefix token, x^k_j (j > 1) at x^k_{j-1}. Rows are
left-padded (padding sees only padding). Used by lm-eval scoring (``harness/fast_hflm.py``) and
by the pseudo-labels (``features/pseudo_labels.py``); both keep an unpacked twin as the oracle.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# Attention implementations that take a custom 4-D mask: sdpa as a boolean, eager as additive.
BOOLEAN_MASK_ATTENTION = ("sdpa",)
ADDITIVE_MASK_ATTENTION = ("eager",)
# Segment ids inside a packed row: the shared prefix, and left padding.
PREFIX_SEGMENT = 0
PADDING_SEGMENT = -1

Request = tuple[tuple[str, str] | None, list[int], list[int]]


@dataclass
class PackedRow:
    """One model input row: a prefix plus the inputs of several continuations, with score slots."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]
    # (item index, continuation tokens, row indices of the logits that predict them)
    slots: list[tuple[int, list[int], list[int]]] = field(default_factory=list)

    @classmethod
    def start(cls, prefix: tuple[int, ...]) -> PackedRow:
        return cls(list(prefix), list(range(len(prefix))), [PREFIX_SEGMENT] * len(prefix))

    @property
    def prefix_length(self) -> int:
        return self.segments.count(PREFIX_SEGMENT)

    def add(self, item: int, continuation: list[int]) -> None:
        """Append a continuation's input tokens x_{<m} and record where each x_j is scored."""
        plen, start = self.prefix_length, len(self.tokens)
        extra = len(continuation) - 1
        self.tokens += continuation[:-1]
        self.positions += range(plen, plen + extra)
        self.segments += [len(self.slots) + 1] * extra
        self.slots.append((item, list(continuation), [plen - 1, *range(start, start + extra)]))


def effective_prefix(context: list[int], continuation: list[int], max_length: int) -> tuple[int, ...]:
    """The context tokens HFLM's input window keeps for this continuation (left truncation)."""
    window = (context + continuation)[-(max_length + 1):]
    return tuple(window[: len(window) - len(continuation)])


def pack_rows(requests: list[Request], max_length: int) -> tuple[list[PackedRow], list[int]]:
    """Pack requests into rows of at most ``max_length`` tokens, longest row first.

    Returns the rows and, per request, the index of its (deduplicated) item; an item is one
    distinct (effective prefix, continuation) pair, scored once in exactly one row slot.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    items: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    conts: list[list[int]] = []
    request_items = []
    for _, context, continuation in requests:
        prefix = effective_prefix(context, continuation, max_length)
        key = (prefix, tuple(continuation))
        if key not in items:
            items[key] = len(conts)
            conts.append(list(continuation))
            groups.setdefault(prefix, []).append(items[key])
        request_items.append(items[key])
    rows = []
    for prefix, members in groups.items():
        row = PackedRow.start(prefix)
        for item in members:
            if row.slots and len(row.tokens) + len(conts[item]) - 1 > max_length:
                rows.append(row)
                row = PackedRow.start(prefix)
            row.add(item, conts[item])
        rows.append(row)
    rows.sort(key=lambda r: -len(r.tokens))
    return rows, request_items


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean mask (True = may attend) of the packing rule in the module docstring."""
    query, key = segments[:, :, None], segments[:, None, :]
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    return (causal & ((key == PREFIX_SEGMENT) | (key == query)))[:, None]


def forward_parameters(model) -> set[str]:
    """Argument names of the transformers model's forward (under a PEFT wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def packing_unsupported_reason(model) -> str | None:
    """Why this causal LM cannot score packed rows (None when it can)."""
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return "prompt-learning adapters prepend virtual tokens"
    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in BOOLEAN_MASK_ATTENTION + ADDITIVE_MASK_ATTENTION:
        return f"attention implementation {attention!r} takes no custom 4-D mask"
    if "position_ids" not in forward_parameters(model):
        return "the model's forward takes no position_ids"
    return None


def packed_model_call(model, input_ids: torch.Tensor, position_ids: torch.Tensor, allowed: torch.Tensor,
                      keep: int, autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, int]:
    """Logits [B, kept, V] of the last ``kept`` positions (all positions when the model cannot
    restrict them), under the block-causal mask ``allowed``."""
    attention = model.config._attn_implementation
    if attention in ADDITIVE_MASK_ATTENTION:
        dtype = model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
    else:
        mask = allowed
    params = forward_parameters(model)
    kwargs: dict[str, object] = {"use_cache": False} if "use_cache" in params else {}
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep
    with torch.no_grad(), torch.autocast(device_type=input_ids.device.type, dtype=autocast_dtype,
                                         enabled=autocast_dtype is not None):
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **kwargs).logits
    return logits, logits.shape[1]


def score_packed_rows(model, rows: list[PackedRow], pad_id: int, device, softmax_dtype=torch.float32,
                      autocast_dtype: torch.dtype | None = None) -> dict[int, tuple[float, bool]]:
    """One forward over left-padded rows; (summed logprob, is_greedy) of every slot's item."""
    width = max(len(r.tokens) for r in rows)
    keep = max(len(r.tokens) - r.prefix_length + 1 for r in rows)
    tokens = [[pad_id] * (width - len(r.tokens)) + r.tokens for r in rows]
    positions = [[0] * (width - len(r.tokens)) + r.positions for r in rows]
    segments = [[PADDING_SEGMENT] * (width - len(r.tokens)) + r.segments for r in rows]
    as_long = dict(dtype=torch.long, device=device)
    logits, kept = packed_model_call(
        model, torch.tensor(tokens, **as_long), torch.tensor(positions, **as_long),
        block_causal_mask(torch.tensor(segments, **as_long)), keep, autocast_dtype,
    )
    logprobs = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)
    greedy = logprobs.argmax(dim=-1)
    offset = width - kept
    batch_idx, pos_idx, token_idx, owners = [], [], [], []
    for b, row in enumerate(rows):
        shift = width - len(row.tokens) - offset
        for item, cont, at in row.slots:
            batch_idx += [b] * len(cont)
            pos_idx += [p + shift for p in at]
            token_idx += cont
            owners.append((item, len(cont)))
    index = (torch.tensor(batch_idx, **as_long), torch.tensor(pos_idx, **as_long))
    targets = torch.tensor(token_idx, **as_long)
    token_lp = logprobs[index].gather(-1, targets[:, None]).squeeze(-1).split([n for _, n in owners])
    token_hit = (greedy[index] == targets).split([n for _, n in owners])
    return {
        item: (float(lp.sum()), bool(hit.all()))
        for (item, _), lp, hit in zip(owners, token_lp, token_hit, strict=True)
    }
