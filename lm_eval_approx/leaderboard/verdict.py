"""Does weight-based selection beat the cheap baselines, and at what cost? One grid's answer.

    lm-eval-approx leaderboard verdict --out results/cpu/agnews_weights --row select_quota --row select \\
        --baseline random --baseline gen_knn --baseline rds --baseline dsir [--k 300] [--write]

For every row R and baseline B the caller names, on the seeds both finished (as ``leaderboard
compare`` pairs them): each side's mean (± sd over seeds), R − B on the same test documents with
the interval the leaderboard's Δ columns print (``intervals.row_interval``: two-level with two or
more shared seeds, documents-only, marked ¹, with one), ✓ where it excludes 0 on the metric's
better side, the ratio of the mean selection FLOPs and seconds, and R's "gap closed vs random" as
the leaderboard table computes it. Under the table, one line per R: whether it beats every
baseline compared, and if not which ones it is not separated from or is worse than. A verdict
resting on a one-seed interval is marked provisional, since retraining seeds move a score as much
as the test documents do. A named label with no finished cell is left out, in a note.

What a verdict does not claim: the rows and baselines are fixed in advance by the caller, never
picked by their test score, so the intervals keep their meaning; naming the best of many rows
after seeing the table would need a correction this command does not make. Each pair's interval
is its own: "beats every baseline" is several 95% intervals holding together, not one joint test.
It reads saved results JSONs only and computes nothing on a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm_eval_approx.cache.atomic import write_text_atomic
from lm_eval_approx.leaderboard.comparisons import FOOTNOTES, ONE_SEED, interval_text
from lm_eval_approx.leaderboard.config import APPROX
from lm_eval_approx.leaderboard.intervals import DOCUMENTS_ONLY, Interval, row_interval
from lm_eval_approx.leaderboard.paired_rows import RowComparisonError, runs_of, score
from lm_eval_approx.leaderboard.report import build_board, task_metric
from lm_eval_approx.leaderboard.runner import CONFIG_SNAPSHOT, RESULTS_DIR, result_files

VERDICT_FILE = "verdict.md"
COLUMNS = ("row", "baseline", "seeds shared", "row mean", "baseline mean", "Δ row − baseline [95% CI]",
           "selection FLOPs row / baseline", "selection s row / baseline", "gap closed vs random (row)")
METHOD_NOTE = ("Δ [95% CI]: the row minus the baseline on the same test documents over the seeds both finished, "
               "two-level paired bootstrap (each row's seeds resampled, then the documents); ✓: the interval "
               "excludes 0 on the better side. Cost ratios: means over those seeds; n/a where the baseline's "
               "selection did no model work (0 FLOPs). Gap closed: the leaderboard's column (all the row's seeds, "
               "the random row of the same k and recipe).")


class VerdictError(RowComparisonError):
    """A verdict cannot be drawn: the folder has no results, a label is unknown to it, a row is also
    a baseline, the metric was never recorded, or the budget is ambiguous."""


@dataclass(frozen=True)
class Pair:
    """Row R against baseline B on their shared seeds."""

    row: str
    baseline: str
    seeds: list[int]
    row_scores: list[float]
    baseline_scores: list[float]
    interval: Interval
    flops: tuple[float | None, float | None]
    seconds: tuple[float | None, float | None]

    @property
    def one_seed(self) -> bool:
        return self.interval.method == DOCUMENTS_ONLY

    def wins(self, higher_is_better: bool) -> bool:
        return self.interval.low > 0 if higher_is_better else self.interval.high < 0

    def loses(self, higher_is_better: bool) -> bool:
        return self.interval.high < 0 if higher_is_better else self.interval.low > 0


def _cells(out: Path) -> list[dict]:
    """Every results JSON of ``out``; a named error when the folder has no results/ or it is empty."""
    if not (out / RESULTS_DIR).is_dir():
        raise VerdictError(f"{out} has no {RESULTS_DIR}/ folder; give --out a leaderboard output folder")
    cells = [json.loads(p.read_text(encoding="utf-8")) for p in result_files(out)]
    if not cells:
        raise VerdictError(f"{out / RESULTS_DIR} holds no results JSONs; no cell of the grid has finished")
    return cells


def _known_labels(out: Path, extras: list[dict]) -> set[str]:
    """Labels of the finished cells and of the strategies the grid's config snapshot plans."""
    snapshot = out / CONFIG_SNAPSHOT
    planned = json.loads(snapshot.read_text(encoding="utf-8")).get("strategies", []) if snapshot.is_file() else []
    return {e["label"] for e in extras if e.get("label")} | {s["label"] for s in planned if s.get("label")}


def _budget(extras: list[dict], labels: list[str], k: int | None) -> int | None:
    """``k``, checked against the approximation cells' budgets, or the one budget the named labels have."""
    budgets = {int(e["k"]) for e in extras if e.get("kind") == APPROX}
    if k is not None:
        if k not in budgets:
            raise VerdictError(f"no cell of the folder has k={k}; its budgets are {sorted(budgets)}")
        return k
    named = sorted({int(e["k"]) for e in extras if e.get("kind") == APPROX and e.get("label") in labels})
    if len(named) > 1:
        raise VerdictError(f"the rows and baselines were run at several budgets {named}; give --k")
    return named[0] if named else None


def _mean_of(extras: list[dict], label: str, k: int | None, seeds: list[int], key: str) -> float | None:
    """Mean over ``seeds`` of a number each cell of ``label`` recorded (``selection_cost.flops`` for
    key ``flops``, else ``selection_seconds``); None unless every one of those cells recorded it."""
    values = []
    for e in extras:
        if e.get("label") == label and e.get("k") == k and e.get("seed") in seeds:
            value = (e.get("selection_cost") or {}).get("flops") if key == "flops" else e.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return None
            values.append(float(value))
    return float(np.mean(values)) if values else None


def pair(out: Path, extras: list[dict], row: str, baseline: str, k: int | None, metric: str) -> Pair | str:
    """Row against baseline on their shared seeds, or why the pair cannot be drawn."""
    row_runs, row_scored = runs_of(out, row, k, metric)
    base_runs, base_scored = runs_of(out, baseline, k, metric)
    documents = [set(run) for run in (*row_runs.values(), *base_runs.values())]
    if row_scored != base_scored or any(ids != documents[0] for ids in documents):
        raise VerdictError(f"rows {row!r} and {baseline!r} were not scored on the same documents "
                           f"(target and limits {sorted(row_scored)} vs {sorted(base_scored)})")
    seeds = sorted(set(row_runs) & set(base_runs))
    if not seeds:
        return f"{row} and {baseline} share no seed ({sorted(row_runs)} vs {sorted(base_runs)})"
    paired_row, paired_base = [row_runs[s] for s in seeds], [base_runs[s] for s in seeds]
    interval = row_interval(paired_row, paired_base, metric)
    if interval is None:
        raise VerdictError(f"rows {row!r} and {baseline!r} share no document with values of one shape")
    return Pair(row, baseline, seeds, [score(r, metric) for r in paired_row], [score(r, metric) for r in paired_base],
                interval, (_mean_of(extras, row, k, seeds, "flops"), _mean_of(extras, baseline, k, seeds, "flops")),
                (_mean_of(extras, row, k, seeds, "selection_seconds"),
                 _mean_of(extras, baseline, k, seeds, "selection_seconds")))


def _interval(found: Pair, higher_is_better: bool) -> str:
    return interval_text(found.interval, higher_is_better, ONE_SEED if found.one_seed else "")


def _spread(scores: list[float]) -> str:
    return f"{np.mean(scores):.4f}" + (f" ± {np.std(scores, ddof=1):.4f}" if len(scores) > 1 else "")


def _flops(value: float) -> str:
    """``2.4e14``, as the leaderboard's selection FLOPs column writes it (``0`` for none)."""
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _ratio(values: tuple[float | None, float | None], show: Callable[[float], str] = _flops) -> str:
    """``4.00× (2.4e14 / 5.9e13)``; n/a when the baseline's value is 0; blank when a side lacks one."""
    row, base = values
    if row is None or base is None:
        return ""
    ratio = "n/a" if base == 0 else f"{row / base:.2f}×"
    return f"{ratio} ({show(row)} / {show(base)})"


def table_line(found: Pair, gap: float | None, higher_is_better: bool) -> str:
    """One pair's Markdown row; the gap as the leaderboard prints it (``+0.0``: no "-0.0%")."""
    cells = [found.row, found.baseline, ", ".join(map(str, found.seeds)), _spread(found.row_scores),
             _spread(found.baseline_scores), _interval(found, higher_is_better), _ratio(found.flops),
             _ratio(found.seconds, lambda s: f"{s:.0f} s"), "" if gap is None else f"{round(100 * gap, 1) + 0.0:.1f}%"]
    return "| " + " | ".join(cells) + " |"


def verdict_line(row: str, pairs: list[Pair], higher_is_better: bool) -> str:
    """``R beats every baseline (a, b): yes`` or ``...: no: not separated from a (Δ ...); worse than b (Δ ...)``,
    marked provisional when an interval is documents-only."""
    if not pairs:
        return f"{row}: no baseline to compare with"
    lost = []
    for p in pairs:
        if not p.wins(higher_is_better):
            how = "worse than" if p.loses(higher_is_better) else "not separated from"
            lost.append(f"{how} {p.baseline} (Δ {_interval(p, higher_is_better)})")
    line = f"{row} beats every baseline ({', '.join(p.baseline for p in pairs)}): " + \
        ("no: " + "; ".join(lost) if lost else "yes")
    single = [p.baseline for p in pairs if p.one_seed]
    if single:
        line += f" — provisional: one seed against {', '.join(single)} (documents-only interval)"
    return line


def verdict(out: str | Path, rows: list[str], baselines: list[str], k: int | None = None, metric: str = "acc") -> str:
    """The verdict of ``rows`` against ``baselines`` in ``out``, as Markdown: table, notes, one line per row."""
    out = Path(out)
    for label in rows:
        if label in baselines:
            raise VerdictError(f"{label!r} is both a --row and a --baseline; a row is compared with other rows")
    cells = _cells(out)
    extras = [c.get("config", {}).get("leaderboard", {}) for c in cells]
    recorded = sorted({m for e in extras for m in e.get("per_doc", {})})
    if metric not in recorded:
        raise VerdictError(f"no cell recorded per-document {metric!r}; recorded: {', '.join(recorded) or 'none'}")
    known = _known_labels(out, extras)
    unknown = [label for label in (*rows, *baselines) if label not in known]
    if unknown:
        raise VerdictError(f"no cell of {out} has label {', '.join(map(repr, unknown))}; "
                           f"its labels are {', '.join(sorted(known))}")
    k = _budget(extras, [*rows, *baselines], k)
    finished = {label for label in (*rows, *baselines) if runs_of(out, label, k, metric)[0]}
    first = next(c for c, e in zip(cells, extras) if e.get("label") in finished) if finished else cells[0]
    target = first["config"]["leaderboard"]["target"]
    higher_is_better = task_metric(first, target, metric)[2]
    board = build_board(out)
    gaps = {r.label: r.gap_random for r in board.rows if r.k == k} if board.metric == metric else {}
    lines = [f"# Verdict: {board.name}, {target} {metric} ({'higher' if higher_is_better else 'lower'} is better)"
             + ("" if k is None else f", k={k}"), "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    skipped = [label for label in (*rows, *baselines) if label not in finished]
    apart, verdicts, one_seed = [], [], False
    for row in rows:
        pairs = []
        for baseline in baselines:
            if row not in finished or baseline not in finished:
                continue
            found = pair(out, extras, row, baseline, k, metric)
            if isinstance(found, str):
                apart.append(found)
                continue
            pairs.append(found)
            one_seed |= found.one_seed
            lines.append(table_line(found, gaps.get(row), higher_is_better))
        verdicts.append(verdict_line(row, pairs, higher_is_better) if row in finished
                        else f"{row}: no finished cell, no verdict")
    notes = [METHOD_NOTE, *([FOOTNOTES[ONE_SEED]] if one_seed else [])]
    if skipped:
        notes.append(f"Not compared (no finished cell with per-document {metric}"
                     f"{'' if k is None else f' at k={k}'}): {', '.join(skipped)}.")
    if apart:
        notes.append("Not compared (no shared seed): " + "; ".join(apart) + ".")
    if board.metric != metric:
        notes.append(f"Gap closed is left blank: the leaderboard computes it for {board.metric}, not {metric}.")
    return "\n".join([*lines, *(f"\n{note}" for note in notes), "", *verdicts]) + "\n"


def write_verdict(out: str | Path, text: str) -> Path:
    """``text`` written to ``out/verdict.md`` atomically."""
    return write_text_atomic(Path(out) / VERDICT_FILE, text)
