"""Executors: run a leaderboard's cells side by side, each in a process of its own.

``run_leaderboard(..., executor=...)`` hands the unfinished cells to one of these (the default, no
executor, runs them in the calling process one after another). Every executor runs the same unit
of work, ``cell_worker.cell_task``: one cell under its lock (``locks.py``), θf taken from the cache.
Its ``run`` orders the grid in two phases so that the work shared by every cell is done once:

1. upstream: θ0's cell and θf — the expert's cell when it is to be run (it trains θf, under the
   expert lock, then scores it), else a task that only makes θf (a cache hit when it exists);
2. every approximation, in the planned order. Work they share (θf's pseudo-labels, the pool's
   features, a selection two budgets draw from) are cached stages, each computed under its
   stage lock (``cache/stages.py``): the first cell to reach one computes it, the others wait for
   it and reuse it, whichever process or machine they run on.

A cell another worker holds comes back ``busy`` and is run again at the end, waiting for that
worker (a no-op when it finished the cell; the cell itself when it died). A task whose process
died (a signal, a lost node, a killed job) is run again up to ``retries`` times; a cell that raised
is reported after its phase, with the other cells of the phase finished.

Executors here: ``LocalPool`` (``--executor local --workers N``); ``cluster_executors.py`` has
Ray and SLURM (through submitit).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

from lm_eval_approx.cache.atomic import write_json_atomic
from lm_eval_approx.cache.keys import short_hash
from lm_eval_approx.cache.safe_paths import contained
from lm_eval_approx.leaderboard.cell_worker import OUTCOME_MARK
from lm_eval_approx.leaderboard.config import APPROX, EXPERT, Cell, LeaderboardConfig
from lm_eval_approx.leaderboard.locks import ABSENT, BUSY, RAN, SKIPPED, cells_dir

LOST, ERROR = "lost", "error"
DEFAULT_RETRIES = 2
WORKER_MODULE = "lm_eval_approx.leaderboard.cell_worker"


class CellFailedError(RuntimeError):
    """Cells that raised (or kept dying) in their worker processes."""


@dataclass(frozen=True)
class Task:
    """One unit of work: a cell (``None``: only make θf), its results file's stamp at planning
    time, and whether to wait for another worker holding it."""

    cell: str | None
    planned: str = ABSENT
    wait: bool = False


@dataclass(frozen=True)
class Outcome:
    kind: str  # ran, skipped, busy, lost or error
    detail: str = ""


def wants_gpu(config: LeaderboardConfig) -> bool:
    return str(config.device).startswith("cuda")


def snapshot(config: LeaderboardConfig, out: Path) -> Path:
    """The config as JSON in ``OUT/.cells``, named by its content (runs of other configs on the
    same folder never overwrite it)."""
    text = json.dumps(config.to_dict(), sort_keys=True)
    name = f"config-{short_hash(text)}.json"
    path = contained(cells_dir(out), name, field="config snapshot")
    if not path.is_file():
        write_json_atomic(path, config.to_dict())
    return path


class Executor(ABC):
    """Runs tasks in processes of their own; subclasses say how (``_map``)."""

    driver_retries = True  # False where the cluster retries a dead task itself (Ray)

    def __init__(self, workers: int | None = None, retries: int = DEFAULT_RETRIES):
        self.workers, self.retries = workers, retries

    def run(self, config: LeaderboardConfig, out: Path, todo: list[Cell], resume: bool, planned: dict[str, str],
            on_done: Callable[[], object] = lambda: None, on_phase: Callable[[str], object] = lambda text: None) -> None:
        self.config, self.out, self.resume, self.cwd = config, Path(out), resume, os.getcwd()
        try:
            self._start()
            upstream = [Task(c.id, planned[c.id]) for c in todo if c.kind != APPROX]
            approx = [Task(c.id, planned[c.id]) for c in todo if c.kind == APPROX]
            if approx and not any(c.kind == EXPERT for c in todo):
                upstream.append(Task(None))
            on_phase("θf and θ0")
            busy = self._phase(upstream, on_done)
            on_phase(f"{len(approx)} approximations")
            busy += self._phase(approx, on_done)
            if busy:
                on_phase("cells other workers hold")
                self._phase([replace(task, wait=True) for task in busy], on_done)
        finally:
            self._stop()

    def _phase(self, tasks: list[Task], on_done: Callable[[], object]) -> list[Task]:
        """Run ``tasks`` to the end (a dead one again, up to ``retries`` times); return the busy
        ones; raise ``CellFailedError`` naming those that failed."""
        def report(task: Task, outcome: Outcome) -> None:
            if task.cell is not None and outcome.kind in (RAN, SKIPPED):
                on_done()

        busy, failed, pending = [], {}, list(tasks)
        for _ in range(self.retries + 1 if self.driver_retries else 1):
            if not pending:
                break
            outcomes = self._map(pending, report)
            busy += [task for task in pending if outcomes[task].kind == BUSY]
            failed.update({task: outcomes[task] for task in pending if outcomes[task].kind == ERROR})
            pending = [task for task in pending if outcomes[task].kind == LOST]
        failed.update({task: Outcome(LOST, "its process died on every try") for task in pending})
        if failed:
            raise CellFailedError("; ".join(f"{task.cell or 'θf'}: {outcome.kind} ({outcome.detail.strip()[-1500:]})"
                                            for task, outcome in failed.items()))
        return busy

    def arguments(self, task: Task) -> tuple:
        """``cell_task``'s arguments for ``task``."""
        return (self.config.to_dict(), str(self.out.resolve()), task.cell, self.resume, task.planned, task.wait,
                self.cwd)

    def _start(self) -> None:
        """Set up what the tasks run on (a Ray cluster, a submitit folder); a local pool needs nothing."""

    def _stop(self) -> None:
        """Release what ``_start`` set up; a local pool holds nothing."""

    @abstractmethod
    def _map(self, tasks: list[Task], report: Callable[[Task, Outcome], object]) -> dict[Task, Outcome]:
        """Run every task in a process of its own, calling ``report`` as each ends; their outcomes."""


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (none on a CPU)."""
    import torch  # only to count GPUs

    count = torch.cuda.device_count()
    if not count:
        return []
    named = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return named[:count] if named else [str(i) for i in range(count)]


class LocalPool(Executor):
    """``workers`` processes at a time on this machine, each a fresh ``python -m cell_worker``;
    with GPUs, worker slot ``i`` sees only GPU ``i mod #GPUs`` (``CUDA_VISIBLE_DEVICES``)."""

    def _start(self) -> None:
        self.snapshot = snapshot(self.config, self.out)
        self.gpus = visible_gpus()

    def command(self, task: Task) -> list[str]:
        which = ["--prepare"] if task.cell is None else ["--cell", task.cell]
        return [sys.executable, "-m", WORKER_MODULE, "--config", str(self.snapshot), "--out", str(self.out.resolve()),
                *which, *(["--resume"] if self.resume else []), "--planned", task.planned,
                *(["--wait"] if task.wait else []), "--cwd", self.cwd]

    def _one(self, task: Task, slot: int) -> Outcome:
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        proc = subprocess.run(self.command(task), env=env, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode < 0:  # killed by a signal: the cell is run again
            return Outcome(LOST, f"signal {-proc.returncode}")
        marks = [line for line in proc.stdout.splitlines() if line.startswith(OUTCOME_MARK)]
        if proc.returncode != 0 or not marks:
            return Outcome(ERROR, f"the worker exited with code {proc.returncode}; its error is printed above")
        return Outcome(json.loads(marks[-1][len(OUTCOME_MARK):])["outcome"])

    def _map(self, tasks, report):
        slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers or 1):
            slots.put(slot)

        def one(task: Task) -> tuple[Task, Outcome]:
            slot = slots.get()
            try:
                return task, self._one(task, slot)
            finally:
                slots.put(slot)

        outcomes = {}
        with ThreadPoolExecutor(max_workers=self.workers or 1) as pool:
            for future in as_completed([pool.submit(one, task) for task in tasks]):
                task, outcome = future.result()
                outcomes[task] = outcome
                report(task, outcome)
        return outcomes
