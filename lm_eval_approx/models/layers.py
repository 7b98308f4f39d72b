"""The linear layers of a causal LM by canonical name, and θ0 − θf of each one.

Layers are ``nn.Linear``, GPT-2's ``Conv1D`` (weight stored in×out; weights here are always in the
out×in orientation) and PEFT LoRA layers, whose weight is the effective W + s·B A. Module names are
canonical: those of the plain transformers model (PEFT's ``base_model.model.`` prefix and
``.base_layer`` infix removed), so θ0, θf and a PEFT-wrapped θf name the same layer alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lm_eval_approx.errors import ConfigError, UnknownNameError

PEFT_PREFIX = "base_model.model."
BASE_LAYER = ".base_layer"
LORA_PARTS = (".lora_", ".base_layer")


@dataclass
class WeightDelta:
    """θ0 − θf of one layer (out×in) as a sum of terms: (M, None) is the full matrix M,
    (L, R) the low-rank product L @ R (a LoRA update, never multiplied out here)."""

    terms: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list)

    def materialise(self) -> torch.Tensor:
        """The full matrix; a 0-d zero (broadcasting as one) for a layer θf leaves unchanged (no terms)."""
        return sum((m if r is None else m @ r for m, r in self.terms), torch.zeros(()))


def canonical_name(name: str) -> str:
    """The module name of the plain transformers model, for PEFT-wrapped and plain models alike."""
    name = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
    return name.replace(BASE_LAYER, "")


def lora_layer_type():
    """The PEFT LoRA layer class, or () when peft is not installed (nothing is then a LoRA layer)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return ()
    return LoraLayer


def conv1d_type():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear, Conv1D and LoRA layer of ``model`` by canonical name (LoRA internals skipped)."""
    lora, conv1d = lora_layer_type(), conv1d_type()
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(part in name for part in LORA_PARTS):
            continue
        if (lora and isinstance(module, lora)) or isinstance(module, (nn.Linear, conv1d)):
            found[canonical_name(name)] = module
    return found


def oriented_weight(module: nn.Module) -> torch.Tensor:
    """The (base) weight of a layer in out×in orientation."""
    lora = lora_layer_type()
    if lora and isinstance(module, lora):
        return oriented_weight(module.get_base_layer())
    return module.weight.t() if isinstance(module, conv1d_type()) else module.weight  # type: ignore[return-value]  # a layer's weight


def layer_shape(module: nn.Module) -> tuple[int, int]:
    out, inp = oriented_weight(module).shape
    return out, inp


def _lora_updates(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    lora = lora_layer_type()
    if not (lora and isinstance(module, lora)) or module.disable_adapters:
        return []
    return [(module.lora_B[a].weight, module.lora_A[a].weight, float(module.scaling[a]))
            for a in module.active_adapters if a in module.lora_A]


@torch.no_grad()
def weight_delta(module0: nn.Module, module_f: nn.Module) -> WeightDelta:
    """θ0 − θf of one layer; LoRA updates stay factored as (−s·B, A)."""
    delta = WeightDelta()
    w0, wf = oriented_weight(module0).float(), oriented_weight(module_f).float()
    if not torch.equal(w0, wf):
        delta.terms.append((w0 - wf, None))
    for b, a, scale in _lora_updates(module_f):
        if torch.count_nonzero(b) and torch.count_nonzero(a):
            delta.terms.append((-scale * b.float(), a.float()))
    return delta


def changed_modules(model0: nn.Module, model_f: nn.Module) -> list[str]:
    """Canonical names of the linear layers whose weights differ between θ0 and θf, in model order."""
    base = linear_modules(model0)
    changed = []
    for name, module in linear_modules(model_f).items():
        if name in base and weight_delta(base[name], module).terms:
            changed.append(name)
    return changed


def head_name(model: nn.Module) -> str:
    """Canonical name of the output head (the module that produces the logits)."""
    plain = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]  # nn.Module types attributes as Tensor | Module
    head = plain.get_output_embeddings()  # type: ignore[operator]
    for name, module in plain.named_modules():
        if module is head:
            return canonical_name(name)
    raise ConfigError("model", type(plain).__name__, "a causal LM with an output head (get_output_embeddings)")


def resolve_modules(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """The modules of ``names``; an unknown name lists the linear layers that exist."""
    known = linear_modules(model)
    for name in names:
        if name not in known:
            raise UnknownNameError("linear layer", name, known)
    return {name: known[name] for name in names}
