"""Loading a LoRA adapter on a tied output head (SmolLM2, GPT-2) into lm-eval's HFLM.

HFLM calls ``model.tie_weights()`` right after ``PeftModel.from_pretrained``. Under transformers 5
that re-assigns ``lm_head.weight = embed_tokens.weight``; when PEFT has wrapped ``lm_head`` in a
LoRA layer, ``weight`` is a read-only property of the wrapper and the assignment raises
``KeyError: "attribute 'weight' already exists"`` (the same for ``modules_to_save`` and
``target_parameters``; upstream: huggingface/peft#2864). The weights are in fact still tied: the
wrapper's base layer holds the very tensor of the input embeddings. ``install()`` gives
``PeftModel`` a ``tie_weights`` that does nothing in exactly that case and defers to the base
model otherwise; ``lm-eval-approx run`` and the ``approx`` models install it before HFLM is built.
"""

from __future__ import annotations

_MARK = "_lm_eval_approx_tied_head_patch"


def head_already_tied(model) -> bool:
    """True when the output head is a PEFT layer whose base weight *is* the input embedding weight."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    if not isinstance(head, BaseTunerLayer):
        return False
    if isinstance(embeddings, BaseTunerLayer):
        embeddings = embeddings.get_base_layer()
    return getattr(head.get_base_layer(), "weight", None) is getattr(embeddings, "weight", None)


def _tie_weights(self, *args, **kwargs):
    base = self.get_base_model()
    if head_already_tied(base):
        return None
    return base.tie_weights(*args, **kwargs)


def install() -> None:
    """Give ``peft.PeftModel`` the tolerant ``tie_weights`` (idempotent)."""
    from peft import PeftModel

    if getattr(PeftModel, _MARK, False):
        return
    PeftModel.tie_weights = _tie_weights
    setattr(PeftModel, _MARK, True)
