"""Synthetic checkpoints θ_α = θ0 + α(θf − θ0) between a base model and its finetune.

For a full finetune every floating parameter that differs is interpolated; for a PEFT LoRA
finetune θf = θ0 + s·B A per layer, so θ_α is obtained exactly by scaling s to α·s. Both are done
in place on the θf model and undone on exit, so no third copy of the weights is ever made.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.models.layers import canonical_name, lora_layer_type


def _parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {canonical_name(n): p for n, p in model.named_parameters() if ".lora_" not in n}


@contextlib.contextmanager
def interpolated(model0: nn.Module, model_f: nn.Module, alpha: float):
    """Turn ``model_f`` into θ0 + α(θf − θ0) inside the block; restore θf afterwards."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError("alpha", alpha, "a checkpoint position between 0 (θ0) and 1 (θf)")
    if alpha == 1.0:
        yield model_f
        return
    base = _parameters(model0)
    saved: dict[str, torch.Tensor] = {}
    scales: list[tuple[dict, str, float]] = []
    lora = lora_layer_type()
    with torch.no_grad():
        for name, param in _parameters(model_f).items():
            if name in base and param.is_floating_point() and not torch.equal(param, base[name]):
                saved[name] = param.detach().clone()
                param.copy_(base[name] + alpha * (param - base[name]))
        for module in model_f.modules():
            if lora and isinstance(module, lora):
                for adapter, scale in list(module.scaling.items()):
                    scales.append((module.scaling, adapter, scale))
                    module.scaling[adapter] = scale * alpha
    try:
        yield model_f
    finally:
        params = _parameters(model_f)
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
        for scaling, adapter, scale in scales:
            scaling[adapter] = scale
