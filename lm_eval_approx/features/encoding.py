"""The one encoding rule: how a task example becomes model input ids and the tokens its loss reads.

Context and continuation are tokenised as lm-eval does (trailing spaces move to the continuation;
the continuation is the tail of the joint encoding), and a context too long for ``max_length`` is
clipped on the left. A language-modelling text gets the tokenizer's BOS (or EOS) as a prefix so
that every text token is predicted, as lm-eval's rolling log-likelihood does.

The logit at position t predicts token t+1: a loss token at position p is scored by the logits of
position p − 1. Sequences are right-padded with an attention mask; each row records the positions
of its own loss tokens, so padding never shifts or contributes to a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.tasks.specs import CLASSIFICATION, TaskSpec

DEFAULT_MAX_LENGTH = 256


@dataclass
class Encoded:
    """One model input: token ids and the loss tokens, which are ``ids[start:]`` each with ``weight``."""

    ids: list[int]
    start: int
    weight: float


@dataclass
class Batch:
    """Right-padded inputs plus, per row, the R loss positions (logit position predicting a loss
    token), their target tokens and weights; unused slots have weight 0 and position 0."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor


def _tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_classification(tokenizer, spec: TaskSpec, text: str, label: int, max_length: int) -> Encoded:
    """Context + continuation of ``label`` for one document, context clipped on the left."""
    context, continuation = spec.context(text), spec.continuations()[label]
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = _tokens(tokenizer, context + continuation)
    ctx_len = len(_tokens(tokenizer, context))
    cont = whole[ctx_len:]
    if not cont or len(cont) >= max_length:
        raise ConfigError("max_length", max_length, f"more than the {len(cont)} tokens of label {label}")
    ctx = whole[:ctx_len][-(max_length - len(cont)):] or [_prefix_token(tokenizer)]
    return Encoded(ctx + cont, len(ctx), 1.0)


def encode_lm(tokenizer, spec: TaskSpec, text: str, max_length: int) -> Encoded:
    """Prefix token + the clipped text, cut to ``max_length``; loss weight 1/n (mean NLL)."""
    tokens = _tokens(tokenizer, spec.context(text))[: max_length - 1]
    return Encoded([_prefix_token(tokenizer)] + tokens, 1, 1.0 / max(len(tokens), 1))


def _prefix_token(tokenizer) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ConfigError("tokenizer", type(tokenizer).__name__, "a tokenizer with a BOS or EOS token")
    return int(token)


def encode_examples(tokenizer, spec: TaskSpec, texts: list[str], labels, max_length: int) -> list[Encoded]:
    """The model input of each example under the task loss (labels required for classification)."""
    if max_length < 2:
        raise ConfigError("max_length", max_length, "an integer ≥ 2")
    if spec.kind != CLASSIFICATION:
        return [encode_lm(tokenizer, spec, text, max_length) for text in texts]
    if labels is None:
        raise ConfigError("labels", None, f"one label per text for classification task {spec.name!r}")
    labels = [int(x) for x in labels]
    if len(labels) != len(texts):
        raise ConfigError("labels", f"{len(labels)} labels", f"{len(texts)} (one per text)")
    bad = [x for x in labels if not 0 <= x < spec.num_classes]
    if bad:
        raise ConfigError("labels", bad[0], f"0 ≤ label < {spec.num_classes} for task {spec.name!r}")
    return [encode_classification(tokenizer, spec, t, y, max_length) for t, y in zip(texts, labels)]


def collate(encoded: list[Encoded], pad_id: int, device="cpu") -> Batch:
    """Right-pad a list of encodings into a ``Batch`` (see its docstring)."""
    length = max(len(e.ids) for e in encoded)
    rank = max(max(len(e.ids) - e.start, 1) for e in encoded)
    b = len(encoded)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    positions = torch.zeros((b, rank), dtype=torch.long)
    targets = torch.zeros((b, rank), dtype=torch.long)
    weights = torch.zeros((b, rank), dtype=torch.float32)
    for row, enc in enumerate(encoded):
        n, k = len(enc.ids), len(enc.ids) - enc.start
        input_ids[row, :n] = torch.tensor(enc.ids)
        mask[row, :n] = 1
        positions[row, :k] = torch.arange(enc.start - 1, n - 1)
        targets[row, :k] = torch.tensor(enc.ids[enc.start:])
        weights[row, :k] = enc.weight
    return Batch(*(t.to(device) for t in (input_ids, mask, positions, targets, weights)))


def gather_positions(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """values (B, T, D) at positions (B, R) → (B, R, D)."""
    return values.gather(1, positions.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
