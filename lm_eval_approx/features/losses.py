"""Task losses under a model, batched and streamed; the losses the gradient features differentiate.

- classification: L_i(c) = −Σ_j log p(v_{c,j} | context_i, v_{c,<j}), the *summed* NLL of all
  tokens of the label continuation v_c = delimiter + choice (" Sci/Tech" may be several tokens);
- language modelling: L_i = −(1/n) Σ_{j=1..n} log p(w_j | context, w_{<j}), the mean token NLL of
  the text over its rolling windows (``encoding.py``; the sum of the windows' losses), BOS
  included where lm-eval scores it.

The tokens are those of ``features/encoding.py``, lm-eval HFLM's rule, and these are the losses
training minimises (``training/loss.py`` on ``training/rendering.py`` rows): weight 1 on each label
token, 1/n on each of the n passage tokens.

Texts stream through in chunks of ``STREAM_CHUNK`` documents (any iterable works): only one chunk's
token lists live at a time, so memory is bounded by the chunk plus the per-document outputs
(a few numbers each), whatever the corpus size. Within a chunk, rows are batched by length.

Batches go to the model's device, whatever it is; logits are upcast to float32 before the
log-softmax, so a bfloat16 model's losses are summed in float32 and come back as float32 numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from itertools import islice

import numpy as np
import torch

from lm_eval_approx.config_checks import check_int
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.config import DEFAULT_MAX_LENGTH
from lm_eval_approx.features.encoding import (
    HFLM_ADD_BOS_TOKEN,
    Batch,
    Encoded,
    collate,
    encode_examples,
    flatten,
    gather_positions,
)
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec

DEFAULT_BATCH_SIZE = 16
STREAM_CHUNK = 4096
_END = object()


def batch_losses(logits_at: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-row loss Σ_r w_r · NLL(logits_at[:, r], target_r) from logits already at the loss positions."""
    logits_at = logits_at.float()
    nll = torch.logsumexp(logits_at, dim=-1) - logits_at.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    return (nll * batch.weights).sum(dim=1)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _losses_of(model, tokenizer, documents: list[list[Encoded]], batch_size: int) -> np.ndarray:
    """Loss of every document (the sum over its windows), windows batched sorted by length (less
    padding), returned in input order."""
    if batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer ≥ 1")
    encoded, counts = flatten(documents)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    windows = np.zeros(len(encoded), dtype=np.float64)
    device = model_device(model)
    for lo in range(0, len(order), batch_size):
        rows = order[lo : lo + batch_size]
        batch = collate([encoded[i] for i in rows], tokenizer.pad_token_id, device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        windows[rows] = batch_losses(gather_positions(logits, batch.positions), batch).cpu().numpy()
    out = np.zeros(len(documents), dtype=np.float64)
    np.add.at(out, np.repeat(np.arange(len(documents)), counts), windows)
    return out.astype(np.float32)


def _chunk_size(chunk_size: int | None) -> int:
    """``chunk_size``, or the module's ``STREAM_CHUNK`` (read at call time) when None."""
    size = STREAM_CHUNK if chunk_size is None else chunk_size
    return check_int("chunk_size", size, minimum=1, accepted="an integer ≥ 1 (documents encoded at a time)")


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
    if isinstance(texts, Sized) and hasattr(labels, "__len__") and len(labels) != len(texts):
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
                   chunk_size: int | None = None, add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> np.ndarray:
    """The task loss of each text (with its label for classification), float32[N].

    ``texts`` (and ``labels``) may be any iterables; they are encoded ``chunk_size`` documents at a
    time (default ``STREAM_CHUNK``), so memory does not grow with N beyond the output.
    ``add_bos_token`` is the value lm-eval's HFLM gets (``encoding.py``).
    """
    size = _chunk_size(chunk_size)
    paired = _labelled_chunks(texts, labels if spec.kind == CLASSIFICATION else None, size)
    encoded = (encode_examples(tokenizer, spec, chunk, given, max_length, add_bos_token) for chunk, given in paired)
    parts = [_losses_of(model, tokenizer, chunk, batch_size) for chunk in encoded]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


