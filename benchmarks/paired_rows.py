"""Two rows of a leaderboard compared on the same documents: each row's mean ± sd over seeds, and
row − against with its paired bootstrap 95% interval (``leaderboard/intervals.py``, the interval the
leaderboard's "Δ vs random" column uses), over the seeds both rows finished, then per seed.

    python benchmarks/paired_rows.py --out results/cpu/agnews_rule --row select_quota_rule --against select_rule
    python benchmarks/paired_rows.py --out results/cpu/agnews_rule --row select_rule --against random_rule --k 300
    python benchmarks/paired_rows.py --out results/cpu/agnews_ceiling --row indomain_rule \
        --against-out results/cpu/agnews_rule --against select_quota_rule --all-seeds

``--against-out`` reads the reference row from another grid scored on the same documents (same
target, limit and document ids, checked). ``--all-seeds`` pairs each row's mean over all of its
seeds instead of the seeds both finished (for a row against θ0 or the expert, which have one run).
The first interval resamples documents (the seeds' scores averaged per document), so the per-seed
deltas are printed too: seed noise shows there. With several seeds on both sides, the two-level
interval (``two_level_interval``: each row's seeds resampled, then the documents) counts the seed
noise in the interval itself; it is the one the leaderboard's Δ columns print, and "beats" means
it excludes 0 (the documents-only interval where a side has one seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def runs_of(out: Path, label: str, k: int | None, metric: str) -> tuple[dict[int, dict[str, float]], set]:
    """seed → per-document metric of every finished cell of row ``label`` (at budget ``k``), and
    the (target, limits) those cells were scored with."""
    runs, scored = {}, set()
    for path in sorted((out / "results").glob("*.json")):
        leaderboard = json.loads(path.read_text(encoding="utf-8"))["config"].get("leaderboard", {})
        if leaderboard.get("label") != label or (k is not None and leaderboard.get("k") != k):
            continue
        per_doc = leaderboard.get("per_doc", {}).get(metric)
        if per_doc:
            runs[int(leaderboard["seed"])] = per_doc
            scored.add((leaderboard.get("target"), json.dumps(leaderboard.get("limits"), sort_keys=True)))
    return runs, scored


def score(run: dict[str, object], metric: str) -> float:
    """One run's metric over its documents: the mean, or for a perplexity-type metric its
    aggregate of the summed (log-likelihood, weight) pairs, as lm-eval computes it."""
    from lm_eval_approx.leaderboard.intervals import PAIR_AGGREGATES

    values = np.asarray(list(run.values()), dtype=np.float64)
    if values.ndim == 2:
        return PAIR_AGGREGATES[metric](values[:, 0].sum(), values[:, 1].sum())
    return float(values.mean())


def describe(name: str, runs: dict[int, dict[str, float]], metric: str) -> str:
    scores = [score(run, metric) for run in runs.values()]
    spread = f" ± {np.std(scores, ddof=1):.3f}" if len(scores) > 1 else ""
    return f"{name}: {np.mean(scores):.3f}{spread} over seeds {sorted(runs)} ({', '.join(f'{s:.3f}' for s in scores)})"


def main(argv: list[str] | None = None) -> int:
    from lm_eval_approx.leaderboard.intervals import paired_interval, two_level_interval

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a leaderboard output folder (with results/)")
    parser.add_argument("--row", required=True, help="strategy label of the row")
    parser.add_argument("--against", required=True, help="strategy label of the reference row")
    parser.add_argument("--k", type=int, default=None, help="budget (default: every budget; give it when a row has several)")
    parser.add_argument("--metric", default="acc")
    parser.add_argument("--against-out", type=Path, default=None,
                        help="the leaderboard folder of the --against row (default: --out), scored on the same documents")
    parser.add_argument("--all-seeds", action="store_true",
                        help="pair each row's mean over all its seeds, not only the seeds both rows finished")
    args = parser.parse_args(argv)
    ref_out = args.against_out or args.out
    (row, row_scored), (ref, ref_scored) = (runs_of(out, label, args.k, args.metric)
                                            for out, label in ((args.out, args.row), (ref_out, args.against)))
    for out, name, runs in ((args.out, args.row, row), (ref_out, args.against, ref)):
        if not runs:
            raise SystemExit(f"{out}: no finished cell of row {name!r} with per-document {args.metric!r}")
    documents = [set(run) for run in (*row.values(), *ref.values())]
    if row_scored != ref_scored or any(ids != documents[0] for ids in documents):
        raise SystemExit(f"rows {args.row!r} and {args.against!r} were not scored on the same documents "
                         f"(target and limits {sorted(row_scored)} vs {sorted(ref_scored)}); a paired interval needs them")
    print(describe(args.row, row, args.metric))
    print(describe(args.against, ref, args.metric))
    if args.all_seeds:
        both = paired_interval(list(row.values()), list(ref.values()), args.metric)
        print(f"{args.row} (seeds {sorted(row)}) − {args.against} (seeds {sorted(ref)}): {both.delta:+.3f} "
              f"[{both.low:+.3f}, {both.high:+.3f}] ({both.documents} documents)"
              f"{'  excludes 0' if both.low > 0 or both.high < 0 else ''}")
        if len(row) > 1 and len(ref) > 1:
            levels = two_level_interval(list(row.values()), list(ref.values()), args.metric)
            print(f"  two-level (seeds, then documents): {levels.delta:+.3f} [{levels.low:+.3f}, {levels.high:+.3f}]"
                  f"{'  excludes 0' if levels.excludes_zero() else ''}")
        return 0
    seeds = sorted(set(row) & set(ref))
    if not seeds:
        raise SystemExit(f"rows {args.row!r} (seeds {sorted(row)}) and {args.against!r} (seeds {sorted(ref)}) "
                         "share no seed; --all-seeds pairs their means over all their seeds")
    both = paired_interval([row[s] for s in seeds], [ref[s] for s in seeds], args.metric)
    print(f"{args.row} − {args.against} over seeds {seeds}: {both.delta:+.3f} [{both.low:+.3f}, {both.high:+.3f}] "
          f"({both.documents} documents){'  excludes 0' if both.low > 0 or both.high < 0 else ''}")
    if len(seeds) > 1:
        levels = two_level_interval([row[s] for s in seeds], [ref[s] for s in seeds], args.metric)
        print(f"  two-level (seeds, then documents): {levels.delta:+.3f} [{levels.low:+.3f}, {levels.high:+.3f}]"
              f"{'  excludes 0' if levels.excludes_zero() else ''}")
    for seed in seeds:
        one = paired_interval([row[seed]], [ref[seed]], args.metric)
        print(f"  seed {seed}: {one.delta:+.3f} [{one.low:+.3f}, {one.high:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
