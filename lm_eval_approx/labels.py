"""Task losses and pseudo-labels, batched, with the task's own template and verbalisers.

Losses (the same ones the gradient features differentiate):

- classification: L_i(c) = −Σ_j log p(v_{c,j} | context_i, v_{c,<j}), the *summed* NLL of all
  tokens of the label continuation v_c = delimiter + choice (" Sci/Tech" may be several tokens);
- language modelling: L_i = −(1/n) Σ_{j=1..n} log p(w_j | prefix, w_{<j}), the mean token NLL of
  the clipped text, with the tokenizer's BOS (or EOS) as a prefix so that every text token is
  predicted, as lm-eval's rolling log-likelihood does.

The logit at position t predicts token t+1: a loss token at position p is scored by the logits of
position p − 1. Sequences are right-padded with an attention mask; each row records the positions
of its own loss tokens, so padding never shifts or contributes to a loss.

Pseudo-label (DESIGN.md step 2): ŷ_i = argmax_c −L_i(c) under θf, ties to the lowest label.
Context and continuation are tokenised as lm-eval does (trailing spaces move to the continuation;
the continuation is the tail of the joint encoding), and a context too long for ``max_length`` is
clipped on the left.

Texts stream through in chunks of ``STREAM_CHUNK`` documents (any iterable works): only one chunk's
token lists live at a time, so memory is bounded by the chunk plus the per-document outputs
(a few numbers each), whatever the corpus size. Within a chunk, rows are batched by length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch

from .errors import ConfigError
from .task_specs import CLASSIFICATION, TaskSpec

DEFAULT_MAX_LENGTH = 256
DEFAULT_BATCH_SIZE = 16
STREAM_CHUNK = 4096
_END = object()


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


@dataclass
class LabelResult:
    """Pseudo-labels, their loss (summed label NLL) and the log-prob of every choice."""

    labels: np.ndarray
    loss: np.ndarray
    logprobs: np.ndarray


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


def batch_losses(logits_at: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-row loss Σ_r w_r · NLL(logits_at[:, r], target_r) from logits already at the loss positions."""
    logits_at = logits_at.float()
    nll = torch.logsumexp(logits_at, dim=-1) - logits_at.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    return (nll * batch.weights).sum(dim=1)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _losses_of(model, tokenizer, encoded: list[Encoded], batch_size: int) -> np.ndarray:
    """Loss of every encoding, in batches sorted by length (less padding), returned in input order."""
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer ≥ 1")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    out = np.zeros(len(encoded), dtype=np.float32)
    device = model_device(model)
    for lo in range(0, len(order), batch_size):
        rows = order[lo : lo + batch_size]
        batch = collate([encoded[i] for i in rows], tokenizer.pad_token_id, device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        out[rows] = batch_losses(gather_positions(logits, batch.positions), batch).cpu().numpy()
    return out


def _chunk_size(chunk_size: int | None) -> int:
    """``chunk_size``, or the module's ``STREAM_CHUNK`` (read at call time) when None."""
    size = STREAM_CHUNK if chunk_size is None else chunk_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError("chunk_size", size, "an integer ≥ 1 (documents encoded at a time)")
    return size


def text_chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of at most ``size`` texts, read lazily from any iterable."""
    items = iter(texts)
    while chunk := list(islice(items, size)):
        yield chunk


def _labelled_chunks(texts: Iterable[str], labels, size: int) -> Iterator[tuple[list[str], list | None]]:
    """Chunks of texts with the matching chunk of labels (None when ``labels`` is None); a count
    mismatch raises ``ConfigError`` naming both counts."""
    if labels is None:
        yield from ((chunk, None) for chunk in text_chunks(texts, size))
        return
    if hasattr(texts, "__len__") and hasattr(labels, "__len__") and len(labels) != len(texts):
        raise ConfigError("labels", f"{len(labels)} labels", f"{len(texts)} (one per text)")
    label_items, seen = iter(labels), 0
    for chunk in text_chunks(texts, size):
        part = list(islice(label_items, len(chunk)))
        seen += len(part)
        if len(part) != len(chunk):
            raise ConfigError("labels", f"{seen} labels", f"one per text (more than {seen} texts)")
        yield chunk, part
    if next(label_items, _END) is not _END:
        raise ConfigError("labels", f"more than {seen} labels", f"{seen} (one per text)")


def example_losses(model, tokenizer, spec: TaskSpec, texts: Iterable[str], labels=None,
                   batch_size: int = DEFAULT_BATCH_SIZE, max_length: int = DEFAULT_MAX_LENGTH,
                   chunk_size: int | None = None) -> np.ndarray:
    """The task loss of each text (with its label for classification), float32[N].

    ``texts`` (and ``labels``) may be any iterables; they are encoded ``chunk_size`` documents at a
    time (default ``STREAM_CHUNK``), so memory does not grow with N beyond the output.
    """
    size = _chunk_size(chunk_size)
    paired = _labelled_chunks(texts, labels if spec.kind == CLASSIFICATION else None, size)
    parts = [_losses_of(model, tokenizer, encode_examples(tokenizer, spec, chunk, given, max_length), batch_size)
             for chunk, given in paired]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _carrier_rows(encodings: list[Encoded]) -> tuple[list[list[int]], list[list[tuple[int, int, int]]]]:
    """Rows that score every choice of one document, and per row the (position, target, choice)
    triples to read. A choice of one token needs no row of its own: the logit predicting it sits at
    the last context position of any row that starts with the same context, since attention is
    causal. Multi-token choices keep their own row (context + continuation)."""
    rows: list[list[int]] = []
    reads: list[list[tuple[int, int, int]]] = []
    shared: dict[tuple[int, ...], int] = {}
    single = []
    for choice, enc in enumerate(encodings):
        if len(enc.ids) - enc.start == 1:
            single.append(choice)
            continue
        shared.setdefault(tuple(enc.ids[: enc.start]), len(rows))
        rows.append(enc.ids)
        reads.append([(p - 1, enc.ids[p], choice) for p in range(enc.start, len(enc.ids))])
    for choice in single:
        enc = encodings[choice]
        row = shared.get(tuple(enc.ids[: enc.start]))
        if row is None:
            row = shared[tuple(enc.ids[: enc.start])] = len(rows)
            rows.append(enc.ids[: enc.start])
            reads.append([])
        reads[row].append((enc.start - 1, enc.ids[enc.start], choice))
    return rows, reads


@torch.no_grad()
def _choice_logprobs(model, tokenizer, per_text: list[list[Encoded]], batch_size: int) -> np.ndarray:
    """log p(choice | context) for every text and choice, from as few forward rows as possible."""
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer ≥ 1")
    rows, reads = [], []
    for text_index, encodings in enumerate(per_text):
        text_rows, text_reads = _carrier_rows(encodings)
        rows += text_rows
        reads += [[(pos, target, text_index, choice) for pos, target, choice in r] for r in text_reads]
    out = np.zeros((len(per_text), len(per_text[0]) if per_text else 0), dtype=np.float64)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    device = model_device(model)
    for lo in range(0, len(order), batch_size):
        chunk = order[lo : lo + batch_size]
        length = max(len(rows[i]) for i in chunk)
        ids = torch.full((len(chunk), length), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for b, i in enumerate(chunk):
            ids[b, : len(rows[i])] = torch.tensor(rows[i])
            mask[b, : len(rows[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        picks = [(b, pos, target, t, c) for b, i in enumerate(chunk) for pos, target, t, c in reads[i]]
        if not picks:
            continue
        b_idx, pos, target, text_idx, choice = (torch.tensor(col) for col in zip(*picks))
        at = logits[b_idx.to(device), pos.to(device)].float()
        logp = at.gather(-1, target.to(device).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(at, dim=-1)
        np.add.at(out, (text_idx.numpy(), choice.numpy()), logp.cpu().double().numpy())
    return out


def _chunk_labels(model, tokenizer, spec: TaskSpec, texts: list[str], batch_size: int, max_length: int,
                  shared_context: bool) -> LabelResult:
    """``pseudo_label`` of one chunk of texts (log-probs summed in float64, stored as float32)."""
    per_text = [[encode_classification(tokenizer, spec, text, label, max_length) for label in range(spec.num_classes)]
                for text in texts]
    if shared_context:
        logprobs = _choice_logprobs(model, tokenizer, per_text, batch_size)
    else:
        flat = [enc for encodings in per_text for enc in encodings]
        logprobs = -_losses_of(model, tokenizer, flat, batch_size).reshape(len(texts), spec.num_classes)
        logprobs = logprobs.astype(np.float64)
    labels = np.argmax(logprobs, axis=1).astype(np.int64)
    loss = (-logprobs[np.arange(len(texts)), labels]).astype(np.float32)
    return LabelResult(labels=labels, loss=loss, logprobs=logprobs.astype(np.float32))


def pseudo_label(model, tokenizer, spec: TaskSpec, texts: Iterable[str], batch_size: int = DEFAULT_BATCH_SIZE,
                 max_length: int = DEFAULT_MAX_LENGTH, shared_context: bool = True,
                 chunk_size: int | None = None) -> LabelResult:
    """θf's choice for each text: argmax over labels of the summed log-prob of the verbaliser.

    ``shared_context`` (default) scores all one-token choices of a document from one forward row
    (AG News: one row per document instead of four); False runs one row per (document, choice),
    the slow twin the tests compare against. ``texts`` may be any iterable; it is encoded
    ``chunk_size`` documents at a time (default ``STREAM_CHUNK``), so memory stays bounded.
    """
    if spec.kind != CLASSIFICATION:
        raise ConfigError("task", spec.name, "a classification task (language-modelling tasks need no labels)")
    size = _chunk_size(chunk_size)
    parts = [_chunk_labels(model, tokenizer, spec, chunk, batch_size, max_length, shared_context)
             for chunk in text_chunks(texts, size)]
    if not parts:
        return LabelResult(labels=np.zeros(0, dtype=np.int64), loss=np.zeros(0, dtype=np.float32),
                           logprobs=np.zeros((0, spec.num_classes), dtype=np.float32))
    return LabelResult(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("labels", "loss", "logprobs")))
