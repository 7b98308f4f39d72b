"""Which weight files a model or adapter is loaded from: safetensors, or pickle only when asked.

Unpickling runs code: a ``pytorch_model.bin``, ``adapter_model.bin`` or ``*.pt`` file can carry a
``__reduce__`` that executes anything on load. So a folder is loaded from its ``*.safetensors``
files (``use_safetensors=True``); a folder holding only pickle-based checkpoints is refused with
``PickleCheckpointError`` unless the caller passes ``allow_pickle=True`` itself (a function
argument, or ``allow_pickle=true`` in ``--model_args``; no environment variable turns it on). Even
then every such file is first opened with ``torch.load(weights_only=True)``, whose unpickler builds
only tensors and plain containers and refuses any other global, and transformers/peft load it with
``weights_only=True`` too. ``trust_remote_code`` is never switched on here: ``hf_model_args`` sets
it to False unless the user wrote it.
"""

from __future__ import annotations

import contextlib
import contextvars
import pickle
from pathlib import Path
from typing import Any

from lm_eval_approx.errors import ApproxError, ConfigError, ModelResolutionError

SAFE_PATTERNS = ("*.safetensors",)
# Pickle checkpoints transformers (pytorch_model*.bin) and peft (adapter_model.bin) would load.
LOADABLE_PICKLE_PATTERNS = ("pytorch_model*.bin", "adapter_model.bin")
OTHER_PICKLE_PATTERNS = ("*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
SAFETENSORS, PICKLE, NO_WEIGHTS = "safetensors", "pickle", "none"
ALLOW_PICKLE_ARG = "allow_pickle"
TRUST_REMOTE_CODE_ARG = "trust_remote_code"
TRUE_WORDS, FALSE_WORDS = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
HUB_PROBE_FILE = "config.json"

_ALLOW_PICKLE = contextvars.ContextVar("lm_eval_approx_allow_pickle", default=False)


class PickleCheckpointError(ApproxError, ValueError):
    """A model or adapter folder holds only pickle-based weights and ``allow_pickle`` was not given."""


class UnsafePickleError(ApproxError, ValueError):
    """A pickle checkpoint that ``torch.load(weights_only=True)`` refuses (foreign globals, or unreadable)."""


@contextlib.contextmanager
def pickle_allowed(allow: bool = True):
    """Within the block, loads that were not given ``allow_pickle`` use ``allow`` (the pipeline run
    of one ``--model approx ... allow_pickle=true``); the previous setting returns afterwards."""
    token = _ALLOW_PICKLE.set(bool(allow))
    try:
        yield
    finally:
        _ALLOW_PICKLE.reset(token)


def pickle_is_allowed(allow_pickle: bool | None = None) -> bool:
    """The explicit ``allow_pickle`` when given, else the enclosing ``pickle_allowed`` block's value."""
    return _ALLOW_PICKLE.get() if allow_pickle is None else bool(allow_pickle)


def parse_flag(field: str, value: object) -> bool:
    """A boolean model arg as lm-eval hands it over: a bool, or true/false/1/0/yes/no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)) and str(value).strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return str(value).strip().lower() in TRUE_WORDS
    raise ConfigError(field, value, "true or false")


def weights_folder(resolved: str) -> Path | None:
    """The local folder of a resolved model: the folder itself, or a hub id's cached snapshot."""
    path = Path(resolved)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(resolved, HUB_PROBE_FILE)
    except (ImportError, ValueError):
        return None
    return Path(found).parent if isinstance(found, str) else None


def _matching(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


def load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers, nothing executed."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError, ValueError) as exc:
        raise UnsafePickleError(
            f"{str(path)!r} was refused by torch.load(weights_only=True): it holds more than tensors and plain "
            f"containers (a pickle that would run code), or is not a torch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def check_weights(resolved: str, allow_pickle: bool | None = None, field: str = "model") -> str:
    """How ``resolved`` may be loaded: ``safetensors``, ``pickle`` (only when allowed, every pickle
    file checked with ``weights_only=True``) or ``none`` (no local folder to inspect, e.g. a hub id
    that is not cached: loaders are then told ``use_safetensors=True`` unless pickle is allowed)."""
    folder = weights_folder(resolved)
    if folder is None:
        return NO_WEIGHTS
    if _matching(folder, SAFE_PATTERNS):
        return SAFETENSORS
    loadable = _matching(folder, LOADABLE_PICKLE_PATTERNS)
    pickled = loadable + _matching(folder, OTHER_PICKLE_PATTERNS)
    if not pickled:
        return NO_WEIGHTS
    names = ", ".join(p.name for p in pickled)
    if not pickle_is_allowed(allow_pickle):
        raise PickleCheckpointError(
            f"{field}={resolved!r} holds only pickle-based weights ({names}), which can run code when loaded. "
            f"Convert them to safetensors, or pass allow_pickle=True (--model_args {ALLOW_PICKLE_ARG}=true) to "
            "load them with torch.load(weights_only=True)."
        )
    for path in pickled:
        load_weights_only(path)
    if not loadable:
        raise ModelResolutionError(
            f"{field}={resolved!r} holds no weights transformers or peft can load (found {names}); accepted: "
            "model.safetensors, adapter_model.safetensors, pytorch_model.bin or adapter_model.bin"
        )
    return PICKLE


def pretrained_kwargs(kind: str, allow_pickle: bool | None = None) -> dict[str, Any]:
    """``from_pretrained`` arguments for weights of ``kind`` (from ``check_weights``): safetensors
    only, except for an allowed pickle folder, which is read with ``weights_only=True``."""
    if kind == PICKLE:
        use_safetensors = False
    elif kind == NO_WEIGHTS and pickle_is_allowed(allow_pickle):
        use_safetensors = None  # a hub id not on disk: safetensors first, pickle as the fallback
    else:
        use_safetensors = True
    return {"use_safetensors": use_safetensors, "weights_only": True, TRUST_REMOTE_CODE_ARG: False}


def hf_model_args(args: dict[str, Any]) -> dict[str, Any]:
    """lm-eval HF model args made safe: ``allow_pickle`` taken out and applied to ``pretrained``
    and ``peft`` (checked here), ``trust_remote_code`` False unless the user set it."""
    args = dict(args)
    allow = parse_flag(ALLOW_PICKLE_ARG, args.pop(ALLOW_PICKLE_ARG, False))
    for key in ("pretrained", "peft"):
        if isinstance(args.get(key), str):
            check_weights(args[key], allow or None, field=key)
    args.setdefault(TRUST_REMOTE_CODE_ARG, False)
    return args
