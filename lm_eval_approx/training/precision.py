"""``mixed_precision: auto``: bfloat16 autocast where the hardware computes it natively, else fp32.

Measured on this project's 2-core AMD EPYC (AVX512-BF16): a SmolLM2-135M LoRA training step under
bf16 autocast took 0.75x the fp32 time (``benchmarks/cell_cost.py``). Without native bf16 dot
products (AVX512-BF16 or AMX on a CPU; compute capability 8.0+ on a GPU) the conversions cost more
than they save, so ``auto`` keeps fp32 there. The recipe stores the resolved value, never ``auto``:
a recipe's hash and record say what was computed, and two machines that resolve ``auto``
differently train different recipes, as they should.
"""

from __future__ import annotations

from pathlib import Path

AUTO = "auto"
BF16 = "bf16"
FP32 = "no"
# CPU flags (Linux /proc/cpuinfo) of native bfloat16 dot products.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (False where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def native_bf16() -> bool:
    """Whether the device training will run on (a GPU when one is visible, else the CPU) computes
    bfloat16 natively."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def resolve_precision(value: str) -> str:
    """``auto`` → ``bf16`` where ``native_bf16()``, else ``no``; any other value as it is."""
    if value != AUTO:
        return value
    return BF16 if native_bf16() else FP32


def accelerator_for(recipe):
    """An Accelerator for ``recipe`` (its gradient accumulation and mixed precision). Accelerate
    keeps one process-wide state and refuses a second mixed precision in one process; a leaderboard
    trains its expert and its cells in one process under different recipes, so a state of another
    precision is dropped (the process group, which lives in PartialState, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, recipe.mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(gradient_accumulation_steps=recipe.gradient_accumulation, mixed_precision=recipe.mixed_precision)
