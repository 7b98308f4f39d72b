"""The one encoding rule: how a task example becomes model input ids and the tokens its loss reads.

Pseudo-labels, task losses, gradient features and training all encode through this module, and it
reproduces lm-eval's ``HFLM`` (lm_eval 0.4.13, causal backend) token for token, so every stage
reads the tokens that lm-eval scores. ``add_bos_token`` is HFLM's model argument of the same name,
with its default None; pass the value HFLM gets.

- ``tok_encode(s)`` (``HFLM.tok_encode``): None keeps the tokenizer's own special tokens (a
  Llama-family tokenizer prepends BOS, GPT-2 and SmolLM2 add nothing); True gives BOS + the tokens
  of s (HFLM reloads its tokenizer with ``add_bos_token=True``, which rewrites the post-processor
  to prepend BOS, whatever the tokenizer did before); False gives the tokens of s alone. A string
  that already starts with the text of the prefix token gets no special tokens in every case.
- The prefix token (``HFLM.prefix_token_id``) is BOS, else EOS.
- A (context, continuation) pair (``LM._encode_pair`` and ``LM.loglikelihood``): trailing
  whitespace of the context moves to the continuation; the context ids are tok_encode(context),
  the continuation ids the tail of tok_encode(context + continuation) after as many tokens. An
  empty context becomes [prefix] before the continuation's tokens (no special tokens), unless
  those start with the prefix token, which then serves as the context.
- A language-modelling text (``HFLM.loglikelihood_rolling``): every token of tok_encode(text) is
  predicted, the first one from the prefix token. With a BOS-adding tokenizer and
  ``add_bos_token`` unset that input starts BOS BOS and BOS itself is a scored token; so it is here.
  A text longer than ``max_length − 1`` tokens is cut into HFLM's rolling windows
  (``lm_eval.utils.get_rolling_token_windows`` with context 1, made disjoint) at a window length of
  ``max_length − 1``: every token is predicted exactly once, each window is one model input of at
  most ``max_length`` ids, and the document is the list of its windows. Its loss is the mean NLL of
  all its tokens, so each window token weighs 1/n (n = the document's tokens): window losses and
  per-window gradients add up to the document's. These are HFLM's windows when HFLM runs with
  ``max_length − 1``; at a larger HFLM max_length the later windows see more context there.

A classification pair whose ids exceed ``max_length`` loses the beginning of its context (HFLM
truncates the same way at its own, larger, max_length). Inputs within ``max_length`` are HFLM's exactly.

The logit at position t predicts token t+1: a loss token at position p is scored by the logits of
position p − 1. Sequences are right-padded with an attention mask; each row records the positions
of its own loss tokens, so padding never shifts or contributes to a loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lm_eval_approx.config_checks import MIN_MAX_LENGTH, check_int
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec

# HFLM's default for its ``add_bos_token`` model argument: the tokenizer's own special tokens.
HFLM_ADD_BOS_TOKEN = None


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


def prefix_token_id(tokenizer) -> int:
    """The token HFLM conditions on when there is no context: BOS, else EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ConfigError("tokenizer", type(tokenizer).__name__, "a tokenizer with a BOS or EOS token")
    return int(token)


def _check_add_bos_token(add_bos_token) -> None:
    if add_bos_token is not None and not isinstance(add_bos_token, bool):
        raise ConfigError("add_bos_token", add_bos_token, "None (the tokenizer's own special tokens, HFLM's "
                          "default), True or False, as given to HFLM")


def tok_encode(tokenizer, text: str, add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> list[int]:
    """The ids HFLM's ``tok_encode(text)`` returns under the same ``add_bos_token`` (module docstring)."""
    _check_add_bos_token(add_bos_token)
    if add_bos_token is not False and text.startswith(tokenizer.decode(prefix_token_id(tokenizer))):
        add_bos_token = False
    if add_bos_token is None:
        return list(tokenizer(text)["input_ids"])
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not add_bos_token:
        return plain
    if tokenizer.bos_token_id is None:
        raise ConfigError("add_bos_token", True, f"a tokenizer with a BOS token ({type(tokenizer).__name__} has "
                          "none), or add_bos_token unset")
    return [int(tokenizer.bos_token_id)] + plain


def encode_pair(tokenizer, context: str, continuation: str,
                add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> tuple[list[int], list[int]]:
    """Context and continuation ids of one lm-eval ``loglikelihood`` request, as HFLM passes them
    to ``_loglikelihood_tokens`` (empty context included)."""
    if not context:
        cont = tok_encode(tokenizer, continuation, add_bos_token=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok_encode(tokenizer, context + continuation, add_bos_token)
    ctx = tok_encode(tokenizer, context, add_bos_token)
    return ctx, whole[len(ctx):]


def encode_classification(tokenizer, spec: TaskSpec, text: str, label: int, max_length: int,
                          add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> Encoded:
    """Context + continuation of ``label`` for one document, context clipped on the left."""
    ctx, cont = encode_pair(tokenizer, spec.context(text), spec.continuations()[label], add_bos_token)
    if not cont:
        raise ConfigError("task", spec.name, f"continuations of at least one token (label {label} has none)")
    if len(cont) >= max_length:
        raise ConfigError("max_length", max_length, f"more than the {len(cont)} tokens of label {label}")
    ctx = ctx[-(max_length - len(cont)):] or [prefix_token_id(tokenizer)]
    return Encoded(ctx + cont, len(ctx), 1.0)


def encode_lm(tokenizer, spec: TaskSpec, text: str, max_length: int,
              add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> list[Encoded]:
    """The rolling windows of one text (module docstring): the first is the prefix token + the
    text's first ``max_length − 1`` tokens; every window token has loss weight 1/n (mean NLL)."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = tok_encode(tokenizer, spec.context(text), add_bos_token)
    prefix = prefix_token_id(tokenizer)
    if not tokens:
        return [Encoded([prefix], 1, 1.0)]
    weight = 1.0 / len(tokens)
    windows = (make_disjoint_window(w) for w in get_rolling_token_windows(tokens, prefix, max_length - 1, 1))
    return [Encoded(context + continuation, len(context), weight) for context, continuation in windows]


def encode_examples(tokenizer, spec: TaskSpec, texts: list[str], labels, max_length: int,
                    add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> list[list[Encoded]]:
    """The model inputs of each example under the task loss, one list per text: one input for
    classification (labels required), the rolling windows for language modelling."""
    check_int("max_length", max_length, minimum=MIN_MAX_LENGTH)
    if spec.kind != CLASSIFICATION:
        return [encode_lm(tokenizer, spec, text, max_length, add_bos_token) for text in texts]
    if labels is None:
        raise ConfigError("labels", None, f"one label per text for classification task {spec.name!r}")
    labels = [int(x) for x in labels]
    if len(labels) != len(texts):
        raise ConfigError("labels", f"{len(labels)} labels", f"{len(texts)} (one per text)")
    bad = [x for x in labels if not 0 <= x < spec.num_classes]
    if bad:
        raise ConfigError("labels", bad[0], f"0 ≤ label < {spec.num_classes} for task {spec.name!r}")
    return [[encode_classification(tokenizer, spec, t, y, max_length, add_bos_token)]
            for t, y in zip(texts, labels)]


def flatten(documents: list[list[Encoded]]) -> tuple[list[Encoded], list[int]]:
    """Every window of every document in order, and how many windows each document has."""
    return [window for windows in documents for window in windows], [len(windows) for windows in documents]


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
