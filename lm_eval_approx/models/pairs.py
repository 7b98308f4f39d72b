"""Can θf be approximated from θ0? Checks run before any long compute, each ending in ModelPairError.

SELECT needs θ0 and θf to be one architecture with one vocabulary (θf's pseudo-labels and every
gradient are taken with θ0's tokenizer), a PEFT θf must sit on θ0 itself (``load_model`` loads an
adapter onto its *recorded* base, so another base would silently shift the target θ0 − θf), and
θ0 − θf must be non-zero on the chosen parameters (else the target is the zero vector).

The checks stay cheap: ``config.json``, the tokenizers' token→id maps, ``adapter_config.json`` and
the adapter's small LoRA tensors. A full θf's weights are read only for the chosen parameters,
memory-mapped, one tensor at a time, and the scan stops at the first tensor that differs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from lm_eval_approx.cache.keys import short_hash
from lm_eval_approx.errors import ConfigError, ModelPairError, ModelResolutionError
from lm_eval_approx.models.loading import ADAPTER_CONFIG, is_adapter, resolve_model
from lm_eval_approx.models.parameter_sets import CHANGED, HEAD_SETS, explicit_layers

logger = logging.getLogger(__name__)

ARCH_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_BASE_KEY = "base_model_name_or_path"
PEFT_PREFIX = "base_model.model."
LORA_MARK = ".lora_"
# PEFT saves the frozen base weight of a tied embedding/head next to its LoRA factors; not a change.
BASE_LAYER_MARK = ".base_layer"
# LoRA factor pairs as PEFT names them in a saved adapter: the update of a layer is B @ A.
LORA_PAIRS = (("B", "A"), ("embedding_B", "embedding_A"))


@dataclass(frozen=True)
class ModelFiles:
    """Where a model name leads: its resolved path, and the folder holding the full weights and
    config (the model itself, or the recorded base of an adapter)."""

    name: str
    resolved: Path
    weights: Path
    adapter: bool


def _same_path(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _read_config(name: str, folder: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelResolutionError(f"cannot read the config of model {name!r} in {str(folder)!r}: {exc}") from None


def _adapter_base(base_name: str, finetuned_name: str, folder: Path) -> str:
    try:
        record = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPairError(base_name, finetuned_name, ADAPTER_CONFIG, f"unreadable ({exc})") from None
    recorded = record.get(ADAPTER_BASE_KEY) if isinstance(record, dict) else None
    if not isinstance(recorded, str) or not recorded.strip():
        raise ModelPairError(base_name, finetuned_name, ADAPTER_BASE_KEY,
                             f"the adapter records no base model (got {recorded!r})")
    return recorded


def _tokenizer_folder(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def tokenizer_digest(folder: Path) -> tuple[int, str, int]:
    """(number of tokens, hash of the token→id map, largest id) of the tokenizer saved in ``folder``."""
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(folder)).get_vocab()
    digest = short_hash(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return len(vocab), digest, max(vocab.values(), default=-1)


def _check_architecture(base: ModelFiles, finetuned: ModelFiles):
    config0 = _read_config(base.name, base.weights)
    config_f = _read_config(finetuned.name, finetuned.weights)
    for field in ARCH_FIELDS:
        a, b = getattr(config0, field, None), getattr(config_f, field, None)
        if a != b:
            raise ModelPairError(base.name, finetuned.name, field,
                                 f"θ0 has {a!r}, θf has {b!r} (the same architecture and vocabulary are needed)")
    return config0


def _check_tokenizers(base: ModelFiles, finetuned: ModelFiles, vocab_size: int) -> None:
    if not _tokenizer_folder(base.resolved):
        return
    size0, hash0, top0 = tokenizer_digest(base.resolved)
    if top0 >= vocab_size:
        raise ConfigError("base", base.name, f"a tokenizer whose ids fit the model's vocab_size={vocab_size} "
                                             f"(its largest token id is {top0})")
    if finetuned.resolved == base.resolved or not _tokenizer_folder(finetuned.resolved):
        return
    size_f, hash_f, _ = tokenizer_digest(finetuned.resolved)
    if size0 != size_f:
        raise ModelPairError(base.name, finetuned.name, "tokenizer vocabulary size",
                             f"θ0's tokenizer has {size0} tokens, θf's has {size_f}")
    if hash0 != hash_f:
        raise ModelPairError(base.name, finetuned.name, "tokenizer token→id map",
                             f"θ0's hashes to {hash0}, θf's to {hash_f} (same size, different tokens or ids)")


def _safetensors_index(folder: Path) -> dict[str, Path] | None:
    """Tensor name → file over every ``*.safetensors`` file of a folder; None when there is none."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    index = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            index.update(dict.fromkeys(handle.keys(), file))
    return index


def _tensor(index: dict[str, Path], key: str):
    from safetensors import safe_open

    with safe_open(str(index[key]), framework="pt") as handle:
        return handle.get_tensor(key)


def first_difference(folder_a: Path, folder_b: Path, keys: list[str] | None = None) -> str | None | bool:
    """The first tensor name whose values differ between two safetensors folders; False when every
    compared tensor is equal; None when it cannot be told (no safetensors, or a key missing)."""
    import torch

    index_a, index_b = _safetensors_index(folder_a), _safetensors_index(folder_b)
    if index_a is None or index_b is None:
        return None
    if keys is None and set(index_a) != set(index_b):
        return sorted(set(index_a) ^ set(index_b))[0]
    names = sorted(index_a) if keys is None else keys
    if any(n not in index_a or n not in index_b for n in names):
        return None
    for name in names:
        a, b = _tensor(index_a, name), _tensor(index_b, name)
        if a.shape != b.shape or not torch.equal(a, b):
            return name
    return False


def _check_adapter_base(base: ModelFiles, finetuned: ModelFiles) -> None:
    if _same_path(base.weights, finetuned.weights):
        return
    differ = first_difference(base.weights, finetuned.weights)
    if differ is False:
        logger.info("adapter %s records base %s, a copy of θ0 %s", finetuned.resolved, finetuned.weights, base.weights)
        return
    what = f"tensor {differ!r} differs" if differ else "its weights cannot be compared with θ0's"
    raise ModelPairError(base.name, finetuned.name, ADAPTER_BASE_KEY,
                         f"the adapter was made for {str(finetuned.weights)!r}, not θ0 {str(base.weights)!r} ({what})")


def _meta_model(config):
    """θ0's module tree without weights (device meta): module names, head and tied parameters."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _chosen_modules(model, params: str) -> list[str]:
    from lm_eval_approx.models.layers import head_name, linear_modules, resolve_modules  # torch

    if params in HEAD_SETS:
        return [head_name(model)]
    if params == CHANGED:
        return sorted(linear_modules(model))
    names = explicit_layers(params) or []  # None only for the named sets handled above
    resolve_modules(model, names)
    return names


def adapter_changed_modules(folder: Path) -> set[str] | None:
    """Canonical names of the modules an adapter changes: a LoRA pair with B and A both non-zero,
    or any saved non-LoRA tensor other than a frozen base layer (modules_to_save). None when the
    adapter is not in safetensors."""
    from safetensors.torch import load_file

    from lm_eval_approx.models.layers import canonical_name  # torch: this module loads without it

    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    changed = set()
    for key, value in tensors.items():
        module, mark, rest = key.partition(LORA_MARK)
        if BASE_LAYER_MARK in key and not mark:
            continue
        if not mark:
            changed.add(canonical_name(key.rsplit(".", 1)[0]).replace(".modules_to_save.default", ""))
            continue
        for b_part, a_part in LORA_PAIRS:
            if rest.split(".")[0] == b_part:
                partner = tensors.get(key.replace(LORA_MARK + b_part, LORA_MARK + a_part, 1))
                if bool(value.any()) and (partner is None or bool(partner.any())):
                    changed.add(canonical_name(module))
    return changed


def _parameter_names(model, modules: list[str]) -> list[str]:
    """The stored name of each module's weight (a tied head resolves to the embedding it shares)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    named = dict(model.named_modules())
    return sorted({by_id[id(named[m].weight)] for m in modules if id(getattr(named[m], "weight", None)) in by_id})


def _check_target(base: ModelFiles, finetuned: ModelFiles, config0, params: str) -> None:
    model = _meta_model(config0)
    modules = _chosen_modules(model, params)
    if finetuned.adapter:
        changed = adapter_changed_modules(finetuned.resolved)
        if changed is None or changed & set(modules):
            return
        raise ModelPairError(base.name, finetuned.name, f"params={params}",
                             f"the adapter leaves {', '.join(modules[:5])} unchanged (every LoRA B·A on them is "
                             f"zero; it changes {sorted(changed)[:5] or 'nothing'}), so θ0 − θf is zero there")
    if _same_path(base.resolved, finetuned.resolved):
        differ: str | bool | None = False
    else:
        differ = first_difference(base.resolved, finetuned.resolved, _parameter_names(model, modules))
    if differ is False:
        raise ModelPairError(base.name, finetuned.name, f"params={params}",
                             f"θf equals θ0 on {', '.join(modules[:5])}, so the target θ0 − θf is zero")


def check_model_pair(base: str, finetuned: str, params: str | None = None) -> None:
    """Raise ModelPairError unless θf can be approximated from θ0; ``params`` (head, changed or
    layer names) adds the check that θ0 − θf is non-zero on those parameters."""
    resolved0 = Path(resolve_model(base))
    if is_adapter(resolved0):
        raise ConfigError("base", base, "a full model (folder, hub id, .gguf or alias), not a PEFT adapter")
    base_files = ModelFiles(base, resolved0, resolved0, False)
    resolved_f = Path(resolve_model(finetuned))
    if is_adapter(resolved_f):
        recorded = _adapter_base(base, finetuned, resolved_f)
        try:
            weights = Path(resolve_model(recorded))
        except ModelResolutionError as exc:
            raise ModelPairError(base, finetuned, ADAPTER_BASE_KEY,
                                 f"the adapter's base {recorded!r} does not resolve ({exc})") from None
        finetuned_files = ModelFiles(finetuned, resolved_f, weights, True)
    else:
        finetuned_files = ModelFiles(finetuned, resolved_f, resolved_f, False)
    config0 = _check_architecture(base_files, finetuned_files)
    _check_tokenizers(base_files, finetuned_files, int(config0.vocab_size))
    if finetuned_files.adapter:
        _check_adapter_base(base_files, finetuned_files)
    if params is not None:
        _check_target(base_files, finetuned_files, config0, params)
