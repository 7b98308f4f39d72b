"""The offline data mirror named by LM_EVAL_APPROX_DATA, and whether the Hugging Face hub may be contacted."""

from __future__ import annotations

import os
from pathlib import Path

from lm_eval_approx.cache.safe_paths import contained_relative, expand_user
from lm_eval_approx.errors import DataNotFoundError

DATA_ENV = "LM_EVAL_APPROX_DATA"
MIRROR_LAYOUT = "ag_news/{train,test}.jsonl, msmarco/{train,test}.jsonl, seed/*.jsonl"


def data_dir() -> Path | None:
    """The local data mirror named by LM_EVAL_APPROX_DATA, or None when it is not set."""
    value = os.environ.get(DATA_ENV)
    return expand_user(value).resolve() if value else None


def mirror_path(relative: str, field: str = "corpus") -> Path | None:
    """``relative`` (``/``-separated) inside the data mirror, or None when no mirror is set; a part
    such as ``..`` or a symlink leading out of the mirror raises ``PathEscapeError``."""
    root = data_dir()
    return None if root is None else contained_relative(root, relative, field=field)


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def mirror_missing(what: str) -> DataNotFoundError:
    where = data_dir()
    state = f"{DATA_ENV}={str(where)!r} has no such file" if where else f"{DATA_ENV} is not set"
    return DataNotFoundError(
        f"cannot load {what}: the hub is offline and {state}. Point {DATA_ENV} at a mirror folder "
        f"laid out as {MIRROR_LAYOUT} (e.g. export {DATA_ENV}=/path/to/shared/data)."
    )


def mirror_file(relative: str) -> Path | None:
    """A file of the data mirror, or None when the mirror is unset or lacks it."""
    path = mirror_path(relative)
    return path if path is not None and path.is_file() else None
