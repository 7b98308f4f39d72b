"""Checksums of finished cache folders: what a later run trusts is verified before it is reused.

When a stage finishes, the size and sha256 of every file in its folder are recorded in its
metadata (``stage.json`` → ``"files"``). On reuse the record is checked: sizes always (a stat per
file), contents too when ``LM_EVAL_APPROX_VERIFY=full`` (the default). A folder that fails is moved
aside into ``.corrupt/`` beside it, with a warning naming the file, and is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from lm_eval_approx.errors import ApproxError, ConfigError

VERIFY_ENV = "LM_EVAL_APPROX_VERIFY"
SIZE, FULL = "size", "full"
VERIFY_LEVELS = (SIZE, FULL)
DEFAULT_VERIFY = FULL
HASH_CHUNK_BYTES = 1 << 20
LOCK_SUFFIX = ".lock"
QUARANTINE_DIR = ".corrupt"


class CorruptCacheError(ApproxError, ValueError):
    """A cached file is missing, truncated or altered: its size or checksum no longer matches."""


def verify_level() -> str:
    """How thoroughly reused folders are checked: ``size`` (stat only) or ``full`` (sha256)."""
    level = os.environ.get(VERIFY_ENV, "").strip().lower() or DEFAULT_VERIFY
    if level not in VERIFY_LEVELS:
        raise ConfigError(VERIFY_ENV, level, " or ".join(VERIFY_LEVELS))
    return level


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (memory stays bounded for GB stores)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path, skip: frozenset[str]) -> list[Path]:
    """Regular files under ``folder`` (recursively, symlinks not followed), minus ``skip`` and locks."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != QUARANTINE_DIR)
        for name in sorted(names):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel in skip or name.endswith(LOCK_SUFFIX) or path.is_symlink() or not path.is_file():
                continue
            found.append(path)
    return found


def folder_checksums(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` of every file under ``folder``."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in _files(folder, frozenset(skip))}


def find_damage(folder: Path, files: dict[str, dict], level: str | None = None) -> list[str]:
    """Every way ``folder`` differs from its record ``files`` (empty when it is intact).

    Files present now but absent from the record are ignored: only recorded content is trusted.
    Sizes are compared first (cheap), so a truncated file is caught without reading it.
    """
    folder, level = Path(folder), level or verify_level()
    if level not in VERIFY_LEVELS:
        raise ConfigError("level", level, " or ".join(VERIFY_LEVELS))
    problems = []
    for rel, record in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        if size != record["size"]:
            problems.append(f"{rel}: {size} bytes, recorded {record['size']}")
        elif level == FULL and file_sha256(path) != record["sha256"]:
            problems.append(f"{rel}: sha256 differs from the recorded {record['sha256'][:12]}…")
    return problems


def quarantine(folder: Path) -> Path:
    """Move a damaged folder aside (``<parent>/.corrupt/<name>-<ns>``) and return where it went;
    the evidence is kept for inspection and the folder's place is free for a rebuild."""
    folder = Path(folder)
    target = folder.parent / QUARANTINE_DIR / f"{folder.name}-{time.time_ns()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(folder, target)
    return target

