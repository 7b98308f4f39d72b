"""Stage caching: each pipeline stage's output lives under ``$LM_EVAL_APPROX_CACHE/stages/<name>/<key>``,
where ``key`` hashes exactly the inputs that stage depends on (and the keys of the stages before it),
under the cache schema (``cache/keys.py``: its table says which inputs older keys leave out).

A stage folder counts as finished only when its ``stage.json`` exists, which is written last and
atomically; a per-key file lock keeps two runs sharing one cache from computing it twice (the
second waits on the lock, then reuses). ``stage.json`` records the size and sha256 of every file
of the folder (``"files"``); a reused folder is verified against it (``cache/integrity.py``) and, when
damaged, moved aside with a warning and recomputed. A ``stage.json`` written before checksums
existed (no ``"files"``) is trusted as it is.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from lm_eval_approx.cache.atomic import write_json_atomic
from lm_eval_approx.cache.integrity import (
    find_damage,
    folder_checksums,
    quarantine,
    verify_level,
)
from lm_eval_approx.cache.keys import CACHE_SCHEMA, record_key
from lm_eval_approx.cache.paths import cache_dir
from lm_eval_approx.heap import release_memory

logger = logging.getLogger(__name__)

DONE_FILE = "stage.json"
FILES_KEY = "files"


def stage_key(name: str, inputs: dict[str, Any], schema: int = CACHE_SCHEMA) -> str:
    """A hash of a stage's name and inputs (JSON with sorted keys, so order never matters), as keys
    of ``schema`` record them (``cache/keys.py`` ``KEY_RULES``)."""
    return record_key(name, {"stage": name, **inputs}, schema=schema)


@dataclass
class StageRecord:
    """What a finished stage reports: its key, folder, whether it was reused, and its seconds."""

    name: str
    key: str
    path: Path
    cached: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        yield


def run_stage(name: str, inputs: dict[str, Any], compute: Callable[[Path], dict[str, Any]]) -> StageRecord:
    """Return the finished stage for these inputs, computing it into its folder when absent.

    ``compute(folder)`` writes the stage's files into ``folder`` (it may resume from what an
    interrupted run left there) and returns a small JSON-able info dict.
    """
    key = stage_key(name, inputs)
    folder = cache_dir() / "stages" / name / key
    done = folder / DONE_FILE
    with _locked(folder):
        record = _intact_record(name, key, folder)
        if record is not None:
            return StageRecord(name, key, folder, True, 0.0, record.get("info", {}))
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        info = compute(folder)
        seconds = time.perf_counter() - start
        # The next stage starts from what is still referenced, not this one's peak; a stage's
        # tensors are freed by reference counting, and the collector runs once per leaderboard cell.
        release_memory(collect=False)
        files = folder_checksums(folder, skip=(DONE_FILE,))
        write_json_atomic(done, {"stage": name, "key": key, "inputs": inputs, "seconds": seconds, "info": info,
                                 FILES_KEY: files})
        return StageRecord(name, key, folder, False, seconds, info)


def _intact_record(name: str, key: str, folder: Path) -> dict[str, Any] | None:
    """The finished stage's record when its folder is intact; None when it must be computed
    (never finished, or damaged: then the folder is moved aside and a warning says so)."""
    done = folder / DONE_FILE
    if not done.is_file():
        return None
    level = verify_level()
    try:
        record = json.loads(done.read_text(encoding="utf-8"))
        problems = [] if FILES_KEY not in record else find_damage(folder, record[FILES_KEY], level)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        record, problems = None, [f"{DONE_FILE}: unreadable ({exc})"]
    if isinstance(record, dict) and not problems:
        return record
    if not problems:
        problems = [f"{DONE_FILE}: not a JSON object"]
    moved = quarantine(folder)
    message = (f"stage {name!r} (key {key}) is damaged: {'; '.join(problems)}; "
               f"moved it to {str(moved)!r} and recomputing it")
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return None
