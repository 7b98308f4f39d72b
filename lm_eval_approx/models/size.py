"""A model's parameter count without loading its weights, for the cost estimate (``leaderboard/estimate.py``).

Tried in order, each cheap and offline:

1. ``KNOWN_PARAMETERS``: the models the shipped presets name, so a preset is costed on a machine
   that has never downloaded them (the hub may be offline, and a gated model cannot be fetched);
2. the safetensors headers of a local model folder or of a cached hub snapshot: the exact count of
   the stored tensors (a tied head is stored once), read from each file's JSON header only;
3. the folder's or snapshot's ``config.json``, the model built on torch's ``meta`` device (shapes
   without memory) and its parameters counted (tied weights once).

``None`` when none of them answers: an uncached hub id offline, a ``.gguf`` file not converted
yet, a PEFT adapter folder, an unreadable config. Nothing here resolves, converts or downloads.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

from lm_eval_approx.cache.safe_paths import expand_user

SMOLLM2_135M_PARAMETERS = 134_515_008
# Counted from each model's config (tied embeddings once): SmolLM2-135M (30 blocks, width 576, GQA
# 9/3 heads, MLP 1,536, vocabulary 49,152), GPT-2 small (12 blocks, width 768, vocabulary 50,257)
# and Llama-3.2-1B (16 blocks, width 2,048, GQA 32/8 heads, MLP 8,192, vocabulary 128,256).
KNOWN_PARAMETERS = {
    "smollm2-135m": SMOLLM2_135M_PARAMETERS,
    "HuggingFaceTB/SmolLM2-135M": SMOLLM2_135M_PARAMETERS,
    "openai-community/gpt2": 124_439_808,
    "gpt2": 124_439_808,
    "meta-llama/Llama-3.2-1B": 1_235_814_400,
}
MAX_HEADER_BYTES = 100 << 20  # a safetensors header larger than this is not one
METADATA_KEY = "__metadata__"


@lru_cache(maxsize=64)
def parameter_count(name: str) -> int | None:
    """θ's parameter count by any model name ``resolve_model`` accepts, or None (see the module docstring)."""
    if not isinstance(name, str) or not name:
        return None
    if name in KNOWN_PARAMETERS:
        return KNOWN_PARAMETERS[name]
    folder = _local_folder(name)
    if folder is None or (folder / "adapter_config.json").is_file():
        return None
    return safetensors_count(folder) or config_count(folder)


def _local_folder(name: str) -> Path | None:
    """The folder holding ``name``'s files: itself when it is a directory, else the cached hub
    snapshot of a hub id (None when neither is on this machine)."""
    try:
        path = expand_user(name)
    except (ValueError, OSError):
        return None
    if path.is_dir():
        return path
    if path.suffix == ".gguf" or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except (ImportError, ValueError):
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def safetensors_count(folder: Path) -> int | None:
    """Σ over the tensors of the folder's weight files of their element counts, from the headers.
    The ``model*.safetensors`` files when there are any (a repository may also hold other exports),
    else every ``*.safetensors``; None when there is none or a header is not a safetensors header."""
    files = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        try:
            with file.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= MAX_HEADER_BYTES:
                    return None
                header = json.loads(fh.read(size))
            total += sum(math.prod(info["shape"]) for key, info in header.items() if key != METADATA_KEY)
        except (OSError, ValueError, TypeError, KeyError):
            return None
    return total or None


def config_count(folder: Path) -> int | None:
    """The parameter count of the causal LM ``folder/config.json`` describes, built on the meta
    device (no weights are allocated or read); None when transformers cannot build it."""
    if not (folder / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        return config_parameters(config)
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return None


def config_parameters(config) -> int:
    """Parameters of a causal LM built from a transformers config, on the meta device (tied once)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return sum(p.numel() for p in model.parameters())
