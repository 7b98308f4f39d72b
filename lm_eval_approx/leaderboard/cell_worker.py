"""One leaderboard cell in a process of its own: what every executor but the in-process one runs.

    python -m lm_eval_approx.leaderboard.cell_worker --config SNAPSHOT --out OUT --cell ID [--resume]
    python -m lm_eval_approx.leaderboard.cell_worker --config SNAPSHOT --out OUT --prepare

``SNAPSHOT`` is the config as JSON (``LeaderboardConfig.to_dict``). The cell runs under its lock
(``locks.claim_and_run``): it is skipped when its results file is finished and either ``--resume``
was given or the file was written after the run was planned (``--planned``, the file's stamp then),
and reported ``busy`` when another live worker holds it (``--wait``: wait for that worker instead).
θf comes from the cache, trained first under its own lock when no worker has trained it yet;
``--prepare`` does only that (the upstream task before the approximations). The outcome is printed
as the last line of stdout: ``@@cell {"outcome": ...}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from lm_eval_approx.cache.paths import cache_path
from lm_eval_approx.leaderboard.config import APPROX, THETA0, LeaderboardConfig, config_from_dict
from lm_eval_approx.leaderboard.locks import (
    ABSENT,
    RAN,
    claim_and_run,
    expert_lock_path,
    held,
    result_stamp,
)
from lm_eval_approx.leaderboard.runner import (
    EXPERT_DIR,
    TrueData,
    expert_model,
    finished,
    resolve_for_run,
    results_path,
    run_cell,
    true_data,
)

OUTCOME_MARK = "@@cell"


def locked_expert(config: LeaderboardConfig, progress: bool = False) -> str:
    """θf's folder, trained at most once per cache however many workers ask at the same time: the
    first trains it under the lock, the others wait, then find it in the cache."""
    with held(expert_lock_path(cache_path(EXPERT_DIR, field="expert folder"), config)):
        return expert_model(config, progress=progress)


def cell_is_done(out: Path, config: LeaderboardConfig, cell, resume: bool, planned: str) -> bool:
    """Finished, and either resuming or written since the run was planned (by another worker)."""
    if not finished(out, config, cell):
        return False
    return resume or result_stamp(results_path(out, cell)) != planned


def run_task(config_data: dict, out: str, cell_id: str | None, resume: bool = False, planned: str = ABSENT,
             wait: bool = False, cwd: str | None = None) -> str:
    """Run one cell (``None``: only make θf) in this process; returns its outcome."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths of the config mean what they meant where the run was started
    config = resolve_for_run(config_from_dict(config_data))
    folder = Path(out)
    if cell_id is None:
        locked_expert(config)
        return RAN
    cell = next(c for c in config.cells() if c.id == cell_id)

    def run() -> None:
        from lm_eval_approx.harness.lm_eval_cli import shared_task_manager

        expert = "" if cell.kind == THETA0 else locked_expert(config)  # θ0's cell needs no θf
        truth = true_data(config) if cell.kind == APPROX else TrueData()  # read by approximations only
        run_cell(config, cell, folder, expert, shared_task_manager(config.include_path), truth, lambda phase: None)

    return claim_and_run(folder, cell.id, lambda: cell_is_done(folder, config, cell, resume, planned), run, wait)


def cell_task(config_data: dict, out: str, cell_id: str | None, resume: bool = False, planned: str = ABSENT,
              wait: bool = False, cwd: str | None = None) -> str:
    """``run_task`` under the name a Ray worker or a SLURM job shows while it runs a cell."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_task(config_data, out, cell_id, resume, planned, wait, cwd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lm_eval_approx.leaderboard.cell_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the config snapshot (JSON)")
    parser.add_argument("--out", required=True, help="the leaderboard's output folder")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--cell", help="the cell id to run")
    which.add_argument("--prepare", action="store_true", help="only make θf (trained once, then cached)")
    parser.add_argument("--resume", action="store_true", help="skip the cell when its results are finished")
    parser.add_argument("--planned", default=ABSENT, help="the results file's stamp when the run was planned")
    parser.add_argument("--wait", action="store_true", help="wait for another worker holding the cell")
    parser.add_argument("--cwd", help="the folder relative paths of the config are read from")
    args = parser.parse_args(argv)
    data = json.loads(Path(args.config).read_text(encoding="utf-8"))
    outcome = cell_task(data, args.out, None if args.prepare else args.cell, args.resume, args.planned,
                        args.wait, args.cwd)
    print(f"{OUTCOME_MARK} {json.dumps({'outcome': outcome})}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
