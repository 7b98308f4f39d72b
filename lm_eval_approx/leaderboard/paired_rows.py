"""Two rows of a leaderboard compared on the same documents: each row's mean ± sd over seeds, and
row − against with its paired bootstrap 95% interval (``leaderboard/intervals.py``, the interval the
leaderboard's "Δ vs random" column uses), over the seeds both rows finished, then per seed.

    lm-eval-approx leaderboard compare --out results/cpu/agnews_rule --row select_quota_rule --against select_rule
    lm-eval-approx leaderboard compare --out results/cpu/agnews_rule --row select_rule --against random_rule --k 300
    lm-eval-approx leaderboard compare --out results/cpu/agnews_ceiling --row indomain_rule \\
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

import json
from pathlib import Path

import numpy as np

from lm_eval_approx.errors import ApproxError
from lm_eval_approx.leaderboard.intervals import PAIR_AGGREGATES, Interval, paired_interval, two_level_interval
from lm_eval_approx.leaderboard.runner import result_files


class RowComparisonError(ApproxError, ValueError):
    """Two leaderboard rows cannot be compared: a row has no finished cell with per-document values,
    or the rows were scored on other documents, or (paired by seed) they share no seed."""


def runs_of(out: str | Path, label: str, k: int | None, metric: str) -> tuple[dict[int, dict[str, object]], set]:
    """seed → per-document metric of every finished cell of row ``label`` (at budget ``k``), and
    the (target, limits) those cells were scored with."""
    runs, scored = {}, set()
    for path in result_files(out):
        leaderboard = json.loads(path.read_text(encoding="utf-8"))["config"].get("leaderboard", {})
        if leaderboard.get("label") != label or (k is not None and leaderboard.get("k") != k):
            continue
        per_doc = leaderboard.get("per_doc", {}).get(metric)
        if per_doc:
            runs[int(leaderboard["seed"])] = per_doc
            scored.add((leaderboard.get("target"), json.dumps(leaderboard.get("limits"), sort_keys=True)))
    return runs, scored


def finished_runs(out: str | Path, label: str, k: int | None, metric: str) -> tuple[dict[int, dict[str, object]], set]:
    """``runs_of``, refusing a row without any finished cell that kept per-document values."""
    runs, scored = runs_of(out, label, k, metric)
    if not runs:
        raise RowComparisonError(f"{out}: no finished cell of row {label!r} with per-document {metric!r}")
    return runs, scored


def score(run: dict[str, object], metric: str) -> float:
    """One run's metric over its documents: the mean, or for a perplexity-type metric its
    aggregate of the summed (log-likelihood, weight) pairs, as lm-eval computes it."""
    values = np.asarray(list(run.values()), dtype=np.float64)
    if values.ndim == 2:
        return PAIR_AGGREGATES[metric](values[:, 0].sum(), values[:, 1].sum())
    return float(values.mean())


def describe(name: str, runs: dict[int, dict[str, object]], metric: str) -> str:
    """``name: mean ± sd over seeds [...] (each seed's score)``."""
    scores = [score(run, metric) for run in runs.values()]
    spread = f" ± {np.std(scores, ddof=1):.3f}" if len(scores) > 1 else ""
    return f"{name}: {np.mean(scores):.3f}{spread} over seeds {sorted(runs)} ({', '.join(f'{s:.3f}' for s in scores)})"


def _shared(interval: Interval | None) -> Interval:
    """``interval``, checked: the intervals module gives None for runs that share no document or
    hold values of two shapes (a number on one side, a (log-likelihood, weight) pair on the other)."""
    if interval is None:
        raise RowComparisonError("the rows share no document with values of one shape (numbers or pairs)")
    return interval


def _bounds(interval: Interval) -> str:
    return f"{interval.delta:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"


def _two_level(row: list[dict[str, object]], reference: list[dict[str, object]], metric: str) -> str:
    levels = _shared(two_level_interval(row, reference, metric))
    return f"  two-level (seeds, then documents): {_bounds(levels)}{'  excludes 0' if levels.excludes_zero() else ''}"


def compare_rows(out: str | Path, row: str, against: str, k: int | None = None, metric: str = "acc",
                 against_out: str | Path | None = None, all_seeds: bool = False) -> list[str]:
    """The printed comparison of row ``row`` of ``out`` with row ``against`` (of ``against_out``,
    default ``out``), one line each."""
    ref_out = against_out or out
    row_runs, row_scored = finished_runs(out, row, k, metric)
    ref_runs, ref_scored = finished_runs(ref_out, against, k, metric)
    documents = [set(run) for run in (*row_runs.values(), *ref_runs.values())]
    if row_scored != ref_scored or any(ids != documents[0] for ids in documents):
        raise RowComparisonError(f"rows {row!r} and {against!r} were not scored on the same documents "
                                 f"(target and limits {sorted(row_scored)} vs {sorted(ref_scored)}); "
                                 "a paired interval needs them")
    lines = [describe(row, row_runs, metric), describe(against, ref_runs, metric)]
    if all_seeds:
        both = _shared(paired_interval(list(row_runs.values()), list(ref_runs.values()), metric))
        lines.append(f"{row} (seeds {sorted(row_runs)}) − {against} (seeds {sorted(ref_runs)}): {_bounds(both)} "
                     f"({both.documents} documents){'  excludes 0' if both.excludes_zero() else ''}")
        if len(row_runs) > 1 and len(ref_runs) > 1:
            lines.append(_two_level(list(row_runs.values()), list(ref_runs.values()), metric))
        return lines
    seeds = sorted(set(row_runs) & set(ref_runs))
    if not seeds:
        raise RowComparisonError(f"rows {row!r} (seeds {sorted(row_runs)}) and {against!r} (seeds {sorted(ref_runs)}) "
                                 "share no seed; --all-seeds pairs their means over all their seeds")
    paired_row, paired_ref = [row_runs[s] for s in seeds], [ref_runs[s] for s in seeds]
    both = _shared(paired_interval(paired_row, paired_ref, metric))
    lines.append(f"{row} − {against} over seeds {seeds}: {_bounds(both)} "
                 f"({both.documents} documents){'  excludes 0' if both.excludes_zero() else ''}")
    if len(seeds) > 1:
        lines.append(_two_level(paired_row, paired_ref, metric))
    for seed in seeds:
        lines.append(f"  seed {seed}: {_bounds(_shared(paired_interval([row_runs[seed]], [ref_runs[seed]], metric)))}")
    return lines
