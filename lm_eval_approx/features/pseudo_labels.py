"""Pseudo-labels: θf's choice among the task's verbalisers for each candidate text.

ŷ_i = argmax_c −L_i(c) under θf, ties to the lowest label, where L_i(c) is the classification loss
of ``losses.py`` (summed NLL of the continuation delimiter + choice c).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.config import DEFAULT_MAX_LENGTH
from lm_eval_approx.features.encoding import (
    HFLM_ADD_BOS_TOKEN,
    Encoded,
    encode_classification,
)
from lm_eval_approx.features.losses import (
    DEFAULT_BATCH_SIZE,
    _chunk_size,
    _losses_of,
    model_device,
    text_chunks,
)
from lm_eval_approx.models.packing import Request, pack_rows, packing_unsupported_reason, score_packed_rows
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec

logger = logging.getLogger(__name__)

# The packing self-check: documents compared, and the largest accepted |packed − carrier| log-prob.
PACKING_CHECK_TEXTS = 4
PACKING_ATOL = 1e-3


@dataclass
class LabelResult:
    """Pseudo-labels, their loss (summed label NLL) and the log-prob of every choice."""

    labels: np.ndarray
    loss: np.ndarray
    logprobs: np.ndarray


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


@torch.no_grad()
def _packed_choice_logprobs(model, tokenizer, per_text: list[list[Encoded]], batch_size: int,
                            max_length: int) -> np.ndarray:
    """log p(choice | context) for every text and choice, all choices of a text in one packed row
    (``models/packing.py``): one forward per document whatever the number of multi-token choices."""
    requests: list[Request] = [(None, enc.ids[: enc.start], enc.ids[enc.start:]) for encodings in per_text for enc in encodings]
    rows, request_items = pack_rows(requests, max_length)
    answers: dict[int, tuple[float, bool]] = {}
    for lo in range(0, len(rows), batch_size):
        answers.update(score_packed_rows(model, rows[lo: lo + batch_size], tokenizer.pad_token_id, model_device(model)))
    flat = np.array([answers[item][0] for item in request_items], dtype=np.float64)
    return flat.reshape(len(per_text), len(per_text[0]) if per_text else 0)


@contextmanager
def _without_mixed_precision(model):
    """The model's own forward for the duration: Accelerate's mixed precision wraps ``forward`` in
    an autocast of its own (keeping the original as ``_original_forward``), which an outer
    ``torch.autocast(enabled=False)`` cannot turn off."""
    original = getattr(model, "_original_forward", None)
    if original is None:
        yield
        return
    wrapped = model.forward
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped


def _packing_agrees(model, tokenizer, per_text: list[list[Encoded]], batch_size: int, max_length: int) -> bool:
    """Packed against carrier-row log-probs on the first few documents: a position or attention
    scheme the packing does not model (``models/packing.py``) shows up as a disagreement."""
    sample = per_text[:PACKING_CHECK_TEXTS]
    # In full precision, whatever autocast the caller runs under: the check asks whether the packing
    # models this architecture's positions and attention, and bf16 rounding (up to 0.08 here) is not that.
    with torch.autocast(model_device(model).type, enabled=False), _without_mixed_precision(model):
        packed = _packed_choice_logprobs(model, tokenizer, sample, batch_size, max_length)
        reference = _choice_logprobs(model, tokenizer, sample, batch_size)
    worst = float(np.max(np.abs(packed - reference))) if packed.size else 0.0
    if worst > PACKING_ATOL:
        logger.warning("pseudo-labels: packed log-probs differ from unpacked ones by %.3g (> %.3g) on %s; "
                       "scoring without packing", worst, PACKING_ATOL, type(model).__name__)
    return worst <= PACKING_ATOL


def _chunk_labels(model, tokenizer, spec: TaskSpec, texts: list[str], batch_size: int, max_length: int,
                  shared_context: bool, add_bos_token: bool | None, packing: dict) -> LabelResult:
    """``pseudo_label`` of one chunk of texts (log-probs summed in float64, stored as float32).
    ``packing`` carries the verdict of the packing self-check across chunks."""
    per_text = [[encode_classification(tokenizer, spec, text, label, max_length, add_bos_token)
                 for label in range(spec.num_classes)] for text in texts]
    if shared_context and packing.get("ok") is None:
        packing["ok"] = packing_unsupported_reason(model) is None and _packing_agrees(
            model, tokenizer, per_text, batch_size, max_length)
    if shared_context and packing["ok"]:
        logprobs = _packed_choice_logprobs(model, tokenizer, per_text, batch_size, max_length)
    elif shared_context:
        logprobs = _choice_logprobs(model, tokenizer, per_text, batch_size)
    else:
        flat = [[enc] for encodings in per_text for enc in encodings]
        logprobs = -_losses_of(model, tokenizer, flat, batch_size).reshape(len(texts), spec.num_classes)
        logprobs = logprobs.astype(np.float64)
    labels = np.argmax(logprobs, axis=1).astype(np.int64)
    loss = (-logprobs[np.arange(len(texts)), labels]).astype(np.float32)
    return LabelResult(labels=labels, loss=loss, logprobs=logprobs.astype(np.float32))


def pseudo_label(model, tokenizer, spec: TaskSpec, texts: Iterable[str], batch_size: int = DEFAULT_BATCH_SIZE,
                 max_length: int = DEFAULT_MAX_LENGTH, shared_context: bool = True,
                 chunk_size: int | None = None, add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> LabelResult:
    """θf's choice for each text: argmax over labels of the summed log-prob of the verbaliser.

    ``shared_context`` (default) scores all choices of a document from one packed forward row
    (block-causal attention, ``models/packing.py``; AG News: one row per document instead of four,
    DBpedia's 14 mostly multi-token names: one instead of fourteen), checked against carrier rows
    (one-token choices read at the context's last position, each multi-token choice its own row) on
    the first documents, which it falls back to for models the packing cannot serve; False runs one
    row per (document, choice), the slow twin the tests compare against. ``texts`` may be any iterable; it is encoded
    ``chunk_size`` documents at a time (default ``STREAM_CHUNK``), so memory stays bounded.
    ``add_bos_token`` is the value lm-eval's HFLM gets (``encoding.py``).
    """
    if spec.kind != CLASSIFICATION:
        raise ConfigError("task", spec.name, "a classification task (language-modelling tasks need no labels)")
    size, packing = _chunk_size(chunk_size), dict[str, bool]()
    parts = [_chunk_labels(model, tokenizer, spec, chunk, batch_size, max_length, shared_context, add_bos_token,
                           packing)
             for chunk in text_chunks(texts, size)]
    if not parts:
        return LabelResult(labels=np.zeros(0, dtype=np.int64), loss=np.zeros(0, dtype=np.float32),
                           logprobs=np.zeros((0, spec.num_classes), dtype=np.float32))
    return LabelResult(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("labels", "loss", "logprobs")))
