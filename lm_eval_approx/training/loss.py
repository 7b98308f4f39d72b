"""Per-example training losses from one forward pass, with the output head run only where needed.

A batch (right-padded, see ``training.rendering.training_batch``) has labels y[b, t] (IGNORE_INDEX where
not supervised); the model's logits z[b, t] at position t predict y[b, t + 1]. The loss of example b
is Σ_t NLL(z[b, t], y[b, t + 1]) over supervised t + 1 (classification), or that sum divided by the
number of supervised tokens (language modelling): ``example_losses_from_logits``. These are the
losses the gradient features differentiate (``features/losses.py``: weight 1 per label token, 1/n
per passage token), on the tokens of the same encoding rule.

Classification supervises only the 1-3 label tokens of each example, yet the full path computes
z = head(h) at all B·T positions: a (B·T × hidden) · (hidden × V) product with V = 49,152 for
SmolLM2, plus a log-softmax and its gradient over B·T·V floats. The head path passes
``logits_to_keep = P`` with P[b, t] = (y[b, t + 1] is supervised), a boolean (B, T) mask that
transformers' ``slice_logits_to_keep`` applies to the final hidden states before the head, so
the model returns z only for the N = Σ P rows (N × V, in row-major order of P). The body runs on
the same right-padded tensors with the same positions, so every hidden state, and every dropout
draw inside the body, is the one of the full path; NLL of those rows, scattered back to their
examples with ``index_add``, gives the same losses and gradients up to float rounding (on
SmolLM2 the head path's NLL over contiguous (N, V) rows is within ~1e-6 of float64, the full
path's over the strided V axis of (B, V, T) within ~3e-5). Going
through the model's own ``forward`` (not its submodules) keeps the LoRA-wrapped head, any
architecture-specific logit processing, Accelerate's autocast and DDP gradient sync in the loop.

One difference: LoRA dropout on the head input draws N·hidden random numbers instead of B·T·hidden,
so with ``lora_dropout > 0`` on the head a seed gives another (equally distributed) dropout
sample than the full path; with no head dropout both paths train the same weights.

Language modelling supervises every position, so it keeps the full path.
"""

from __future__ import annotations

import torch

from lm_eval_approx.models.head_positions import HeadPositionsError, causal_lm
from lm_eval_approx.tasks.kinds import CLASSIFICATION, LANGUAGE_MODELLING
from lm_eval_approx.training.rendering import IGNORE_INDEX


def example_losses_from_logits(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example training loss (B,) from logits (B, T, V) and labels (B, T): summed token NLL of the
    label (classification), mean token NLL of the passage (language modelling)."""
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    total = nll.sum(dim=1)
    if kind == LANGUAGE_MODELLING:
        return total / (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return total


def full_example_losses(model, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Per-example losses from full-vocabulary logits at every position (the reference path)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return example_losses_from_logits(logits, batch["labels"], kind)


def head_position_mask(labels: torch.Tensor) -> torch.Tensor:
    """P[b, t] = True where position t predicts a supervised token labels[b, t + 1]."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def head_example_losses(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed label-token NLL per example, with the head applied only at predicting positions."""
    labels = batch["labels"]
    keep = head_position_mask(labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits
    targets = labels[:, 1:][keep[:, :-1]]
    if logits.shape[:-1] != targets.shape:
        raise HeadPositionsError(f"{type(causal_lm(model)).__name__} returned logits of shape {tuple(logits.shape)} for a "
                           f"boolean logits_to_keep of {targets.numel()} positions; expected ({targets.numel()}, V)")
    nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    rows = keep.nonzero()[:, 0]
    return torch.zeros(labels.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)


def batch_example_losses(model, batch: dict[str, torch.Tensor], kind: str, head_positions: bool) -> torch.Tensor:
    """Per-example losses of a collated batch: the head path for classification when
    ``head_positions`` (see ``supports_head_positions``), the full path otherwise."""
    if head_positions and kind == CLASSIFICATION:
        return head_example_losses(model, batch)
    return full_example_losses(model, batch, kind)
