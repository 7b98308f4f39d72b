"""Where cached artifacts live: ``LM_EVAL_APPROX_CACHE``, or ``$XDG_CACHE_HOME/lm-eval-approx``."""

from __future__ import annotations

import os
from pathlib import Path

from lm_eval_approx.cache.safe_paths import contained, expand_user

CACHE_ENV = "LM_EVAL_APPROX_CACHE"


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
