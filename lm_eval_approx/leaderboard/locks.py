"""Cell locks: one process at a time runs a leaderboard cell, however many workers share the folder.

Each cell has a lock file ``OUT/.cells/<cell>.lock`` held with ``flock`` while the cell runs. The
kernel drops the lock when its process ends, killed or not, so a lock left by a dead process is
simply free: the next worker takes it over (the file still names its last owner, for people). The
lock works wherever the filesystem honours ``flock`` between its clients (a local disk; NFSv4,
Lustre mounted with ``flock``, GPFS or BeeGFS across nodes) — the condition the stage cache's own
locks (``cache/stages.py``) already put on a shared ``LM_EVAL_APPROX_CACHE``.

The claim protocol (``claim_and_run``): take the cell's lock (or say ``busy`` without waiting, when
another live worker holds it); under the lock, skip the cell when it is done (``is_done``); else run
it. ``OUT/.cells/ledger.jsonl`` gets one line when a cell starts and one when its results file is
written, with the host and process: the record of who scored what.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lm_eval_approx.cache.keys import short_hash
from lm_eval_approx.cache.safe_paths import contained, safe_name

CELLS_DIR = ".cells"
LEDGER_FILE = "ledger.jsonl"
RAN, SKIPPED, BUSY = "ran", "skipped", "busy"
STARTED, SCORED = "start", "scored"
ABSENT = "-"


def cells_dir(out: str | Path) -> Path:
    """``OUT/.cells``: the cell locks, the ledger and what the executors leave (snapshots, logs)."""
    folder = contained(out, CELLS_DIR, field="leaderboard cells folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def lock_path(out: str | Path, cell_id: str) -> Path:
    return contained(cells_dir(out), f"{safe_name('leaderboard cell', cell_id)}.lock", field="cell lock")


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": round(time.time(), 3)}


class FileLockHeld:
    """An exclusive ``flock`` on ``path`` (created when absent); released on ``release`` or when
    this process ends. ``acquire(blocking=False)`` returns False at once when another process
    holds it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        os.ftruncate(fd, 0)  # the last owner's note, for a person looking at a running grid
        os.write(fd, (json.dumps(_owner()) + "\n").encode())
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def owner(self) -> dict | None:
        """The note of the process that last held the lock (it may have ended since)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            return None


@contextmanager
def held(path: str | Path) -> Iterator[None]:
    """Hold the lock at ``path``, waiting for it."""
    lock = FileLockHeld(path)
    lock.acquire(blocking=True)
    try:
        yield
    finally:
        lock.release()


def expert_lock_path(folder: Path, config) -> Path:
    """The lock that makes θf trained once per cache: a file in ``folder`` (the experts' cache
    folder) named by a hash of what names the expert (its base, how it is made, its recipe)."""
    identity = {"base": config.base, "expert": dataclasses.asdict(config.expert), "recipe": config.recipe}
    digest = short_hash(json.dumps(identity, sort_keys=True, default=str))
    folder.mkdir(parents=True, exist_ok=True)
    return contained(folder, f".{digest}.lock", field="expert lock")


def result_stamp(path: Path) -> str:
    """What identifies one writing of a results file: its inode, size and mtime (``-``: absent).
    A cell whose file has another stamp than when the run was planned was written since by
    another worker."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return ABSENT
    return f"{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def log_event(out: str | Path, cell_id: str, event: str) -> None:
    """Append one line to the ledger (a single ``O_APPEND`` write: lines of workers never mix)."""
    line = json.dumps({"cell": cell_id, "event": event, **_owner()}) + "\n"
    fd = os.open(contained(cells_dir(out), LEDGER_FILE, field="cell ledger"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_ledger(out: str | Path) -> list[dict]:
    path = Path(out) / CELLS_DIR / LEDGER_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def claim_and_run(out: str | Path, cell_id: str, is_done: Callable[[], bool], run: Callable[[], object],
                  wait: bool = False) -> str:
    """Run cell ``cell_id`` unless it is done or another worker runs it: ``ran``, ``skipped`` (done,
    checked under the lock) or ``busy`` (held by another live worker; only without ``wait``)."""
    lock = FileLockHeld(lock_path(out, cell_id))
    if not lock.acquire(blocking=wait):
        return BUSY
    try:
        if is_done():
            return SKIPPED
        log_event(out, cell_id, STARTED)
        run()
        log_event(out, cell_id, SCORED)
        return RAN
    finally:
        lock.release()


def claim_each(out: str | Path, cells: list, is_done: Callable[[Any], bool], run: Callable[[Any], object],
               on_done: Callable[[], object] = lambda: None, on_phase: Callable[[str], object] = lambda text: None) -> None:
    """``claim_and_run`` every cell in order; those another worker is running are waited for after
    the rest (and run here when that worker died before finishing them)."""
    busy = []
    for cell in cells:
        if claim_and_run(out, cell.id, lambda c=cell: is_done(c), lambda c=cell: run(c)) == BUSY:  # type: ignore[misc]  # mypy cannot type default-argument lambdas
            busy.append(cell)
        else:
            on_done()
    for cell in busy:
        on_phase(f"{cell.id}: another worker runs it")
        claim_and_run(out, cell.id, lambda c=cell: is_done(c), lambda c=cell: run(c), wait=True)  # type: ignore[misc]  # as above
        on_done()
