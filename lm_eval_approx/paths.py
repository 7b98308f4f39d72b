"""Where things live: the cache folder and the offline data mirror, both set by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from .safe_paths import contained, contained_relative

CACHE_ENV = "LM_EVAL_APPROX_CACHE"
DATA_ENV = "LM_EVAL_APPROX_DATA"
PLUGINS_ENV = "LM_EVAL_APPROX_LOAD_PLUGINS"
MIRROR_LAYOUT = "ag_news/{train,test}.jsonl, msmarco/{train,test}.jsonl, seed/*.jsonl"


def cache_dir() -> Path:
    """The root of every cached artifact (converted models, features, selections, adapters)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lm-eval-approx"
    )
    path = expand_user(root).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_path(*parts: str, field: str = "cache path") -> Path:
    """``cache_dir()/part/...``, refused with ``PathEscapeError`` when a part is not one plain file
    name or a symlink on the way leads out of the cache."""
    return contained(cache_dir(), *parts, field=field)


def data_dir() -> Path | None:
    """The local data mirror named by LM_EVAL_APPROX_DATA, or None when it is not set."""
    value = os.environ.get(DATA_ENV)
    return expand_user(value).resolve() if value else None


def mirror_path(relative: str, field: str = "corpus") -> Path | None:
    """``relative`` (``/``-separated) inside the data mirror, or None when no mirror is set; a part
    such as ``..`` or a symlink leading out of the mirror raises ``PathEscapeError``."""
    root = data_dir()
    return None if root is None else contained_relative(root, relative, field=field)


def expand_user(value: str | Path) -> Path:
    """``value`` with a leading ``~`` expanded; a ``~name`` of no known user stays as written (pathlib
    would raise RuntimeError, a traceback for what is only a path that does not exist)."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        return Path(value)


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").strip().lower() in {"1", "true", "yes", "on"} for f in flags)
