"""Whether a model can run its output head at chosen positions only (``logits_to_keep``).

Training (``training/loss.py``) keeps the positions of supervised tokens as a boolean (B, T) mask,
gradient features (``features/gradients.py``) their (B, R) loss positions as indices; transformers'
``slice_logits_to_keep`` understands both. A model class whose module does not use that helper may
slice positions its own way, so callers take their full-logits path for it.
"""

from __future__ import annotations

import inspect

import torch

from lm_eval_approx.errors import ApproxError

KEEP_ARGUMENT = "logits_to_keep"
# transformers' helper that understands a (B, T) mask or (B, R) positions as ``logits_to_keep``; a model class whose
# module does not use it may slice positions its own way, so it gets the full path.
SLICE_HELPER = "slice_logits_to_keep"


class HeadPositionsError(ApproxError, RuntimeError):
    """A model accepted ``logits_to_keep`` but did not return one logit row per kept position."""


def causal_lm(model):
    """The transformers model under PEFT / DDP wrappers (whose forward only passes kwargs on)."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def supports_head_positions(model) -> bool:
    """True when ``model`` (possibly PEFT-wrapped) takes ``logits_to_keep`` as a boolean (B, T) mask or (B, R) positions."""
    base = causal_lm(model)
    forward = type(base).forward
    if KEEP_ARGUMENT not in inspect.signature(forward).parameters:
        return False
    module = inspect.getmodule(inspect.unwrap(forward))
    return module is not None and hasattr(module, SLICE_HELPER)
