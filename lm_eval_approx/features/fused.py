"""θf's pseudo-label read in the same forward that yields the gradient factors at θf.

Extracting features at θf with pseudo-labels used to run θf twice over every document: once to
score the choices (``pseudo_labels.py``), once for the factors of the chosen label's example.
A document whose choices all read from one row needs the first pass no more:

- its **carrier** is the encoding of its longest choice (ties to the lowest label), when every
  other choice is one token after the same context ids. The carrier's logits at the last context
  position score every one-token choice (attention is causal, so what follows in the row does not
  change them), and its own continuation positions score its own tokens, so the one row holds
  every log p(choice | context). AG News under the SmolLM2 tokenizer qualifies (" World",
  " Sports", " Business" are one token, " Sci/Tech" three); a task with two multi-token choices
  (DBpedia) does not, and keeps the two passes.
- the feature forward runs the carriers, and ``PseudoLabelChoice`` (a ``gradients.Choose``) reads
  log p(c) = Σ_k [z_k(t_k) − logsumexp(z_k)] per choice from the float logits at the loss
  positions (per token in float32, summed in float64 in token order, ties to the lowest label: the
  definition of ``pseudo_labels.pseudo_label``), then points the row's loss at the chosen label:
  the carrier's own tokens, or the first slot only (target v_c) with the other slots weighted 0.

The loss then reads exactly the logits the chosen label's own encoding would read: every position
it scores lies before the carrier's extra tokens, so those positions get δ = 0 and add nothing to
G = Σ_t δ_t x_tᵀ. When every choice is one token the carrier has the chosen encoding's length and
the batches are the two-pass batches, so the factors are bit for bit the two-pass ones; a carrier
longer than the chosen encoding changes the batch's padded length, which moves the features by
float rounding only. The labels are those of the two-pass path unless two choices' log-probs lie
within float rounding of each other (the two passes read them from different forwards).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.config import DEFAULT_MAX_LENGTH
from lm_eval_approx.features.encoding import HFLM_ADD_BOS_TOKEN, Batch, Encoded, encode_classification
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec

NO_CHOICE = -1


@dataclass
class Carrier:
    """One document's carrier row: the encoding of choice ``own``, whose loss positions score every
    choice; ``first[c]`` is the first continuation token of choice c."""

    encoding: Encoded
    own: int
    first: list[int]


def _continuation(enc: Encoded) -> list[int]:
    return enc.ids[enc.start:]


def carrier_of(encodings: list[Encoded]) -> Carrier | None:
    """The carrier of one document from the encodings of its choices (label order), or None when
    one row cannot score them all (two multi-token choices, or contexts clipped differently)."""
    own = max(range(len(encodings)), key=lambda c: (len(_continuation(encodings[c])), -c))
    context = encodings[own].ids[: encodings[own].start]
    for c, enc in enumerate(encodings):
        if c != own and (len(_continuation(enc)) != 1 or enc.ids[: enc.start] != context):
            return None
    return Carrier(encodings[own], own, [_continuation(enc)[0] for enc in encodings])


def carriers(tokenizer, spec: TaskSpec, texts: list[str], max_length: int,
             add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> list[Carrier | None]:
    """``carrier_of`` for each text's choices, encoded as ``pseudo_labels`` encodes them."""
    return [carrier_of([encode_classification(tokenizer, spec, text, c, max_length, add_bos_token)
                        for c in range(spec.num_classes)]) for text in texts]


def task_has_carriers(tokenizer, spec: TaskSpec, add_bos_token: bool | None = HFLM_ADD_BOS_TOKEN) -> bool:
    """Whether a short document of this classification task has a carrier (at most one verbaliser
    longer than one token): if not, no document has, and the two passes are the only way. A prompt
    that cannot render the empty text says nothing here; the two passes then meet it on their own."""
    if spec.kind != CLASSIFICATION:
        return False
    try:
        return carriers(tokenizer, spec, [""], DEFAULT_MAX_LENGTH, add_bos_token)[0] is not None
    except ConfigError:
        return False


class PseudoLabelChoice:
    """A ``gradients.Choose`` for a batch of carriers (None: a row whose label is already set):
    records θf's pseudo-label of each carried row in ``labels`` (NO_CHOICE elsewhere) and the
    per-choice log-probs in ``logprobs`` (float64, NaN elsewhere)."""

    def __init__(self, rows: list[Carrier | None], device):
        self.active = torch.tensor([r is not None for r in rows], device=device)
        width = max((len(r.first) for r in rows if r is not None), default=0)
        self.first = torch.tensor([r.first if r is not None else [0] * width for r in rows], dtype=torch.long,
                                  device=device).reshape(len(rows), width)
        self.own = torch.tensor([r.own if r is not None else 0 for r in rows], dtype=torch.long, device=device)
        self.labels = np.full(len(rows), NO_CHOICE, dtype=np.int64)
        self.logprobs = np.full((len(rows), width), np.nan)

    def __call__(self, batch: Batch, z: torch.Tensor) -> Batch:
        with torch.no_grad():
            lse = torch.logsumexp(z, dim=-1)
            token = z.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1) - lse
            own = torch.zeros(len(token), dtype=torch.float64, device=z.device)
            for k in range(token.shape[1]):  # in token order, as pseudo_labels adds them
                own += torch.where(batch.weights[:, k] > 0, token[:, k].double(), 0.0)
            logprobs = (z[:, 0].gather(-1, self.first) - lse[:, :1]).double()
            logprobs.scatter_(1, self.own.unsqueeze(1), own.unsqueeze(1))
            labels = logprobs.argmax(dim=1)
            moved = self.active & (labels != self.own)
            targets, weights = batch.targets.clone(), batch.weights.clone()
            targets[:, 0] = torch.where(moved, self.first.gather(1, labels.unsqueeze(1)).squeeze(1), targets[:, 0])
            weights[:, 1:] = torch.where(moved.unsqueeze(1), 0.0, weights[:, 1:])
        active = self.active.cpu().numpy()
        self.labels[active] = labels.cpu().numpy()[active]
        self.logprobs[active] = logprobs.cpu().numpy()[active]
        return dataclasses.replace(batch, targets=targets, weights=weights)
