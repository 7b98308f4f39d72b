"""A cheaper LoRA dropout for CPUs: the same distribution up to p rounded to 2⁻¹⁵.

Why. PEFT puts an ``nn.Dropout`` before every LoRA ``A``; torch draws its mask with a Bernoulli
sampler that, on a CPU, costs far more than the multiplication it feeds. Profiled on a SmolLM2-135M
training step (batch 16, LoRA r = 16 on all 211 projections and the head; ``docs/PERFORMANCE.md``):
``bernoulli_`` alone was 19% of the step's CPU time, more than attention.

What. ``FastDropout`` draws 32 random bits per two elements (``random_`` on int32, which torch's
CPU generator fills fastest), keeps 15 uniform bits per element (the low half's lower 15 bits and the
high half, which ``random_`` leaves in [0, 2¹⁵)), and drops an element when they fall below
t = round(p · 2¹⁵). It scales kept elements by 2¹⁵ / (2¹⁵ − t), so E[output] = x exactly. The drop
probability is t / 2¹⁵ instead of p (0.05 → 0.04998779…). Same global generator as torch's dropout,
so seeding and the checkpointed RNG state make runs reproducible and resumable as before; the masks
are other draws, so the recipe records the sampler (``TrainingRecipe.dropout_sampler``).
"""

from __future__ import annotations

import torch

BITS = 15
LEVELS = 1 << BITS
LOW_BITS = LEVELS - 1


def drop_threshold(p: float) -> int:
    """t with P(drop) = t / 2¹⁵, the nearest such probability to ``p``."""
    return round(p * LEVELS)


class FastDropout(torch.nn.Module):
    """Inverted dropout with 15-bit masks (see the module docstring); identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p={p!r} is not accepted: a probability in [0, 1)")
        self.p = p
        self.threshold = drop_threshold(p)
        self.scale = LEVELS / (LEVELS - self.threshold)

    def keep_mask(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """True where an element is kept, P(keep) = 1 − t / 2¹⁵ per element, independently."""
        n = shape.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=device).random_()
        return bits.view(torch.int16)[:n].bitwise_and_(LOW_BITS).view(shape).ge(self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        return x.mul(self.scale).mul_(self.keep_mask(x.shape, x.device))

    def extra_repr(self) -> str:
        return f"p={self.p}, threshold={self.threshold}/{LEVELS}"


def use_fast_dropout(model) -> int:
    """Replace every ``nn.Dropout`` inside the model's LoRA dropout containers with ``FastDropout``
    of the same p; returns how many were replaced."""
    replaced = 0
    for name, module in model.named_modules():
        if not name.endswith("lora_dropout") or not isinstance(module, torch.nn.ModuleDict):
            continue
        for key, dropout in module.items():
            if isinstance(dropout, torch.nn.Dropout):
                module[key] = FastDropout(dropout.p)
                replaced += 1
    return replaced
