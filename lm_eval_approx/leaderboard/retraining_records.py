"""What the retraining rule did in every cell of a leaderboard grid: the stop signal per epoch, the
epoch it kept and how many ran, beside the cell's score.

    lm-eval-approx leaderboard records --out results/cpu/msmarco_quality
    lm-eval-approx leaderboard records --out results/cpu/agnews_rule --write

A cell records this itself (``config.leaderboard.retraining``, shown as the leaderboard's "kept
epoch" column). A cell saved before that record existed is read from its training stage in the
local stage cache (``config.approx.stage_keys.training``; for the expert, the expert folder the
cell names); ``--write`` adds the record to such a results JSON (atomically; nothing else in it
changes) and regenerates the tables. A cell whose training stage is no longer cached is listed as
such and left as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from lm_eval_approx.cache.atomic import write_text_atomic
from lm_eval_approx.cache.paths import cache_path
from lm_eval_approx.leaderboard.config import APPROX, EXPERT
from lm_eval_approx.leaderboard.report import NoResultsError, target_score
from lm_eval_approx.leaderboard.runner import result_files, results_dir
from lm_eval_approx.training.summary import kept_text, read_retraining_summary

TRAINING_STAGE = "training"
RECORDED, STAGE_CACHE = "recorded", "stage cache"


def cached_summary(cell: dict) -> dict | None:
    """The retraining summary of a cell's trained model, read from where the model lives on this
    machine (None for θ0, or when that folder is gone)."""
    extras, approx = cell["config"].get("leaderboard", {}), cell["config"].get("approx") or {}
    if extras.get("kind") == APPROX:
        key = approx.get("stage_keys", {}).get(TRAINING_STAGE)
        return read_retraining_summary(cache_path("stages", TRAINING_STAGE, key, "adapter")) if key else None
    if extras.get("kind") == EXPERT:
        args = dict(part.split("=", 1) for part in cell["config"].get("model_args", "").split(",") if "=" in part)
        folder = args.get("peft") or args.get("pretrained")
        return read_retraining_summary(folder) if folder else None
    return None


def retraining_records(out: str | Path, write: bool = False) -> tuple[list[str], int]:
    """One line per trained cell of ``out`` (its score, kept epoch, signal curve and where the
    record came from), and how many results JSONs were given a record (only with ``write``)."""
    paths = result_files(out)
    if not paths:
        raise NoResultsError(f"{results_dir(out)} holds no results JSONs")
    lines, written = [], 0
    for path in paths:
        cell = json.loads(path.read_text(encoding="utf-8"))
        extras = cell["config"].get("leaderboard", {})
        if extras.get("kind") not in (APPROX, EXPERT):
            continue
        summary, source = extras.get("retraining"), RECORDED
        if summary is None:
            summary, source = cached_summary(cell), STAGE_CACHE
        score = target_score(cell, extras["target"], extras.get("metric"))
        if summary is None:
            lines.append(f"{path.stem}: score {score:.4f}; no retraining record, and its training stage is not cached here")
            continue
        curve = " ".join(f"{v:.4f}" for v in summary["signal"])
        lines.append(f"{path.stem}: score {score:.4f}; kept epoch {kept_text(summary)} on {summary['stop_on']} "
                     f"({'stopped early' if summary['stopped_early'] else 'ran to the cap'}; {source}): {curve}")
        if write and source == STAGE_CACHE:
            cell["config"]["leaderboard"]["retraining"] = summary
            write_text_atomic(path, json.dumps(cell, indent=2, ensure_ascii=False) + "\n")  # as the runner writes it
            written += 1
    return lines, written
