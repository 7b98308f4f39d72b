"""What the retraining rule did in every cell of a leaderboard grid: the stop signal per epoch, the
epoch it kept and how many ran, beside the cell's score.

    python benchmarks/retraining_records.py --out results/cpu/msmarco_quality
    python benchmarks/retraining_records.py --out results/cpu/agnews_rule --write

A cell records this itself (``config.leaderboard.retraining``, shown as the leaderboard's "kept
epoch" column). A cell saved before that record existed is read from its training stage in the
local stage cache (``config.approx.stage_keys.training``; for the expert, the expert folder the
cell names); ``--write`` adds the record to such a results JSON (atomically; nothing else in it
changes) and regenerates the tables. A cell whose training stage is no longer cached is listed as
such and left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lm_eval_approx.cache.atomic import write_text_atomic  # noqa: E402
from lm_eval_approx.cache.paths import cache_path  # noqa: E402
from lm_eval_approx.leaderboard.config import APPROX, EXPERT  # noqa: E402
from lm_eval_approx.leaderboard.report import task_metric  # noqa: E402
from lm_eval_approx.training.summary import kept_text, read_retraining_summary  # noqa: E402

TRAINING_STAGE = "training"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="a leaderboard output folder")
    parser.add_argument("--write", action="store_true",
                        help="add the record to results JSONs saved without one, then regenerate the tables")
    args = parser.parse_args(argv)
    paths = sorted((args.out / "results").glob("*.json"))
    if not paths:
        parser.error(f"{args.out / 'results'} holds no results JSONs")
    written = 0
    for path in paths:
        cell = json.loads(path.read_text(encoding="utf-8"))
        extras = cell["config"].get("leaderboard", {})
        if extras.get("kind") not in (APPROX, EXPERT):
            continue
        summary, source = extras.get("retraining"), "recorded"
        if summary is None:
            summary, source = cached_summary(cell), "stage cache"
        score = task_metric(cell, extras["target"], extras.get("metric"))[0]
        if summary is None:
            print(f"{path.stem}: score {score:.4f}; no retraining record, and its training stage is not cached here")
            continue
        curve = " ".join(f"{v:.4f}" for v in summary["signal"])
        print(f"{path.stem}: score {score:.4f}; kept epoch {kept_text(summary)} on {summary['stop_on']} "
              f"({'stopped early' if summary['stopped_early'] else 'ran to the cap'}; {source}): {curve}")
        if args.write and source == "stage cache":
            cell["config"]["leaderboard"]["retraining"] = summary
            write_text_atomic(path, json.dumps(cell, indent=2, ensure_ascii=False) + "\n")  # as the runner writes it
            written += 1
    if args.write:
        from lm_eval_approx.commands.leaderboard import write_outputs

        write_outputs(args.out)
        print(f"{written} results JSONs given a retraining record; tables regenerated in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
