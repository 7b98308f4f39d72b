"""Paths built from user strings stay inside their root: the output folder or the cache.

A leaderboard label, a cell id, a cache key or a model alias becomes a file or folder name only
through ``safe_name`` (one path component: no separator, no NUL, not ``.`` or ``..``) and
``contained`` (the joined path, with every existing symlink on the way resolved, still lies under
the resolved root). A symlinked ``results/`` folder or result file that leads out of the output
folder is therefore refused with ``PathEscapeError`` instead of being written through or read back.
"""

from __future__ import annotations

import os
from pathlib import Path

from lm_eval_approx.errors import ApproxError, ConfigError

RESERVED_NAMES = frozenset({"", ".", ".."})
FORBIDDEN_CHARS = ("/", "\\", "\x00")
NAME_ACCEPTED = "one file name: not empty, not '.' or '..', without '/', '\\' or NUL"


class PathEscapeError(ApproxError, ValueError):
    """A path built from a user string would leave its root (``..``, an absolute part, a symlink out)."""

    def __init__(self, field: str, value: object, root: object, reason: str):
        self.field, self.value, self.root, self.reason = field, value, root, reason
        super().__init__(f"{field}={value!r} is not accepted: {reason} (it must stay inside {str(root)!r})")


def safe_name(field: str, value: object) -> str:
    """``value`` when it is usable as a single path component; else ``PathEscapeError``."""
    if not isinstance(value, str) or value in RESERVED_NAMES or any(c in value for c in FORBIDDEN_CHARS):
        raise PathEscapeError(field, value, "its folder", NAME_ACCEPTED)
    return value


def is_within(path: Path, root: Path) -> bool:
    """True when the resolved ``path`` is ``root`` or lies below the resolved ``root``."""
    real, real_root = Path(path).resolve(), Path(root).resolve()
    return real == real_root or real_root in real.parents


def encodable_path(field: str, value: str | Path) -> Path:
    """``value`` as a Path when the file system can take its name: no NUL byte, and no character
    the file system encoding cannot write (a lone surrogate, say); else a named ``ConfigError``."""
    try:
        encoded = os.fsencode(value)
    except UnicodeEncodeError:
        raise ConfigError(field, str(value), "a path whose characters the file system encoding can write "
                          "(no lone surrogates)") from None
    if b"\x00" in encoded:
        raise ConfigError(field, str(value), "a path without NUL bytes")
    return Path(value)


def contained(root: str | Path, *parts: str, field: str = "path") -> Path:
    """``root/part/...`` after checking each part with ``safe_name`` and the whole, symlinks
    followed, against ``root``; the returned path keeps ``root`` as the caller spelled it."""
    root = encodable_path(field, root)
    for part in parts:
        safe_name(field, part)
    path = root.joinpath(*parts)
    if not is_within(path, root):
        raise PathEscapeError(field, "/".join(parts), root,
                              f"{str(path)!r} is a symlink (or lies below one) that leads to {str(path.resolve())!r}")
    return path


def contained_relative(root: str | Path, relative: str, field: str = "path") -> Path:
    """``root/relative`` for a ``/``-separated relative path (each part checked like ``contained``)."""
    if not isinstance(relative, str):
        raise PathEscapeError(field, relative, root, "a relative path made of file names")
    return contained(root, *relative.split("/"), field=field)


def expand_user(value: str | Path) -> Path:
    """``value`` with a leading ``~`` expanded; a ``~name`` of no known user stays as written (pathlib
    would raise RuntimeError, a traceback for what is only a path that does not exist)."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        return Path(value)
