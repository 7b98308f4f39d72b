"""Exact head gradients of the label-restricted classification loss (``params=head_labels``).

The released code of the paper (jxmorris12/reverse-training) scores a classification example with
a softmax over the C label tokens only. With v_1..v_C the first token of each verbaliser (the
continuation " World", " Sports", ... of ``encoding.encode_classification``), h_i the head's input
at the position that predicts the first label token (the same position and token the pseudo-label
of ``pseudo_labels.pseudo_label`` scores first), W_V the C head rows of those tokens (effective weight, a
LoRA update included) and y_i the document's label:

    L_i = −log softmax(W_V h_i)[y_i],      ∇_{W_V} L_i = (p_i − e_{y_i}) h_iᵀ  (C×H, rank one),

with p_i = softmax(W_V h_i); every other head row has zero gradient. C·H is small (AG News on
SmolLM2: 4 × 576 = 2,304), so the features are the exact flattened gradients (identity
projection, no JL noise), ‖g_i‖² = ‖p_i − e_{y_i}‖² ‖h_i‖² exactly, and the target is θ0 − θf on
the same rows: (W0 − Wf)[V] for a full finetune (tied head: the embedding rows), −s·B[V] A for a
PEFT LoRA update of the head — the sign convention of ``gradients.weight_delta``, as for ``head``.
The store's loss column holds L_i (the restricted loss the features differentiate).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from lm_eval_approx.errors import ConfigError, ModelPairError
from lm_eval_approx.features.config import DEFAULT_MAX_LENGTH, check_label_task
from lm_eval_approx.features.encoding import Batch, Encoded, encode_classification
from lm_eval_approx.features.gradients import LayerFactors, head_capture, head_output_delta
from lm_eval_approx.features.projection import IdentityProjector
from lm_eval_approx.models.layers import (
    WeightDelta,
    layer_shape,
    resolve_modules,
    weight_delta,
)
from lm_eval_approx.models.parameter_sets import HEAD_LABELS
from lm_eval_approx.tasks.kinds import TaskSpec

KEEP_ARGUMENT = "logits_to_keep"
FIRST_LABEL = 0


def label_token_ids(tokenizer, spec: TaskSpec) -> list[int]:
    """v_c: the first token of each verbaliser after the task template, in label order; distinct."""
    check_label_task(spec)
    ids = []
    for label in range(spec.num_classes):
        enc = encode_classification(tokenizer, spec, "", label, DEFAULT_MAX_LENGTH)
        ids.append(enc.ids[enc.start])
    if len(set(ids)) != len(ids):
        raise ConfigError("params", HEAD_LABELS, f"verbalisers of task {spec.name!r} with distinct first tokens "
                          f"(they start with token ids {ids})")
    return ids


def first_label_encodings(encoded: list[Encoded]) -> list[Encoded]:
    """Each encoding cut after its first label token: the restricted loss reads one position only."""
    return [Encoded(e.ids[: e.start + 1], e.start, e.weight) for e in encoded]


def label_rows_delta(delta: WeightDelta, rows: list[int]) -> WeightDelta:
    """θ0 − θf of one layer restricted to ``rows`` (out rows); a low-rank term L R keeps R whole."""
    index = torch.as_tensor(rows, dtype=torch.long)
    return WeightDelta([(left[index.to(left.device)], right) for left, right in delta.terms])


def label_head_projector(head0: nn.Module, head_f: nn.Module, name: str, rows: list[int], device,
                         pair: tuple[str, str]) -> tuple[IdentityProjector, torch.Tensor]:
    """The identity projector of the C×H label rows of the head ``name`` and the target
    (θ0 − θf)[rows] flattened; ModelPairError when θf leaves those rows unchanged."""
    shapes = {name: (len(rows), layer_shape(head_f)[1])}
    projector = IdentityProjector(shapes, shapes[name][0] * shapes[name][1], 0, device)
    delta = label_rows_delta(weight_delta(head0, head_f), rows)
    target = projector.project_delta({name: delta}) if delta.terms else None
    if target is None or not torch.any(target):
        raise ModelPairError(pair[0], pair[1], f"params={HEAD_LABELS}",
                             f"θf equals θ0 on the label rows {rows} of {name}, so the target θ0 − θf is zero")
    return projector, target


def _keep_supported(model: nn.Module) -> bool:
    plain = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]  # nn.Module types attributes as Tensor | Module
    return KEEP_ARGUMENT in inspect.signature(plain.forward).parameters


def label_head_factors(model: nn.Module, batch: Batch, head: str, rows: list[int], labels,
                       keep_positions: bool = True) -> tuple[torch.Tensor, dict[str, LayerFactors]]:
    """Per-example restricted loss L_i and factors (δ = p − e_y: (B, 1, C), x = h: (B, 1, H)) of the
    head's label rows, from one forward pass (see the module docstring).

    ``keep_positions`` runs the head on each row's label position only (``logits_to_keep`` as a
    (B, 1) index; the logits of every other position are never formed); False runs it on every position, the slow
    twin. ``batch`` must hold the first label token of each row at slot 0 (``first_label_encodings``).
    δ goes through whatever the model does to the head's output (Gemma2's soft-capping:
    ``gradients.head_output_delta``).
    """
    module = resolve_modules(model, [head])[head]
    device = batch.input_ids.device
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=device)
    labels_t = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    first = batch.targets[:, FIRST_LABEL]
    if not torch.equal(first, rows_t[labels_t]):
        raise ConfigError("task", "verbaliser tokens", f"label tokens {rows} at the first label position in "
                          f"every example (found {first.tolist()} for labels {labels_t.tolist()})")
    positions = batch.positions[:, FIRST_LABEL]
    kwargs = {}
    if keep_positions and _keep_supported(model):
        kwargs[KEEP_ARGUMENT] = positions.unsqueeze(1)
        slot = torch.zeros_like(positions)
    else:
        slot = positions
    with head_capture(model, module) as captured:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs).logits
    pick = torch.arange(len(slot), device=device)

    def select(values: torch.Tensor) -> torch.Tensor:
        return values[pick, slot][:, rows_t]

    with torch.no_grad():
        z = select(logits).float()
        logp = torch.log_softmax(z, dim=-1)
        loss = -logp[pick, labels_t]
        delta = logp.exp()
        delta[pick, labels_t] -= 1.0
    delta = head_output_delta(logits, captured["output"], select, delta)
    h = captured["input"][pick, slot].detach().float()
    return loss, {head: LayerFactors(delta.unsqueeze(1), h.unsqueeze(1))}
