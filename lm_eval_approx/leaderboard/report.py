"""Leaderboard tables from the saved results JSONs alone (so ``--show DIR`` needs no recompute).

One row per (strategy label, k): the target metric's mean ± sample standard deviation over seeds,
and the share of the gap to the expert it closes,

    gap_random = (s − s_random) / (s_expert − s_random),   gap_theta0 = (s − s_θ0) / (s_expert − s_θ0),

with s the row mean and s_random the mean of the ``random`` strategy at the same k retrained with the
same recipe (a 2-epoch row is compared with 2-epoch random data; the row labelled ``random`` is
preferred when several random rows share k and recipe). Both ratios
are invariant to the metric's direction (for a perplexity, lower is better, s_expert < s_θ0, and
an approximation that moves toward the expert still gets a positive share), so only the sort
order and the "best" mark use ``higher_is_better``. θ0 and the expert are reference rows.

Beside each approximation row: Δ vs random, the row's metric minus that random row's on the same
test documents, with its paired bootstrap 95% interval (``leaderboard/intervals.py``; seeds are
averaged per document first). A row beats random when the interval excludes 0 on the better side.
Cells scored before per-document values were kept have no interval.

"kept epoch" lists, per seed, the epoch the retraining's stop rule kept of the epochs it ran
(``2/4``; ``0/2`` would be θ0 itself), from the ``retraining`` record each cell saves.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_approx.cache.atomic import write_text_atomic
from lm_eval_approx.errors import ApproxError
from lm_eval_approx.leaderboard.config import APPROX, EXPERT, THETA0
from lm_eval_approx.leaderboard.intervals import Interval, paired_interval
from lm_eval_approx.leaderboard.runner import CONFIG_SNAPSHOT, RESULTS_DIR, result_files
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.training.summary import kept_text

MD_FILE, CSV_FILE = "leaderboard.md", "leaderboard.csv"
RANDOM = "random"
DIGITS = 4
SIMILARITY_KEYS = ("ot_distance", "vocab_jaccard", "vocab_containment")


class NoResultsError(ApproxError, FileNotFoundError):
    """A leaderboard folder holds no results JSONs."""


@dataclass
class Row:
    """One leaderboard row (a reference model or a strategy at one budget)."""

    label: str
    kind: str
    k: int | None
    seeds: list[int]
    scores: list[float]
    extras: dict[str, float | None] = field(default_factory=dict)
    selection_seconds: float | None = None
    training_seconds: float | None = None
    kept_epochs: list[str] = field(default_factory=list)
    similarity: dict[str, float | None] = field(default_factory=dict)
    sources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, float] = field(default_factory=dict)
    true_documents: float | None = None
    gap_random: float | None = None
    gap_theta0: float | None = None
    strategy: str | None = None
    recipe: str = ""
    per_doc: list[dict[str, object]] = field(default_factory=list)
    vs_random: Interval | None = None

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def std(self) -> float | None:
        n = len(self.scores)
        if n < 2:
            return None
        return math.sqrt(sum((s - self.mean) ** 2 for s in self.scores) / (n - 1))


@dataclass
class Board:
    """All rows plus what they measure."""

    name: str
    target: str
    metric: str
    higher_is_better: bool
    extra_columns: list[str]
    rows: list[Row]
    cells: list[dict[str, Any]]


def load_results(out: str | Path) -> tuple[dict, list[dict]]:
    """The config snapshot (may be empty) and every cell's results dict, in file-name order."""
    out = Path(out)
    files = result_files(out)
    if not files:
        raise NoResultsError(f"{out / RESULTS_DIR} holds no results JSONs; run `lm-eval-approx leaderboard` first")
    snapshot_path = out / CONFIG_SNAPSHOT
    snapshot = json.loads(snapshot_path.read_text(encoding="utf-8")) if snapshot_path.is_file() else {}
    return snapshot, [json.loads(p.read_text(encoding="utf-8")) for p in files]


def task_metric(results: dict, task: str, metric: str | None = None) -> tuple[float | None, str, bool]:
    """(value, metric, higher_is_better) of ``task``; a group without metrics of its own (such as
    approx_wikitext) reads its first subtask; the default metric is the task's first one."""
    name = task
    scores = results["results"].get(task, {})
    if not any("," in key for key in scores):
        name = (results.get("group_subtasks", {}).get(task) or [task])[0]
        scores = results["results"].get(name, {})
    better = results.get("higher_is_better", {}).get(name, {})
    metric = metric or next(iter(better), None) or next(k.split(",")[0] for k in scores if "," in k)
    value = next((v for k, v in scores.items() if k.split(",")[0] == metric and "_stderr" not in k), None)
    return (float(value) if isinstance(value, (int, float)) else None), metric, bool(better.get(metric, True))


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def build_board(out: str | Path) -> Board:
    """Aggregate the saved cells into leaderboard rows (seeds pooled per label and k)."""
    snapshot, cells = load_results(out)
    extras = [c["config"]["leaderboard"] for c in cells]
    target = extras[0]["target"]
    _, metric, higher = task_metric(cells[0], target, extras[0].get("metric"))
    extra_tasks = [t for t in extras[0]["limits"] if t != target]
    extra_columns = [f"{t}:{task_metric(cells[0], t)[1]}" for t in extra_tasks]
    order = [s["label"] for s in snapshot.get("strategies", [])]
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for cell, extra in zip(cells, extras):
        key = (extra["kind"], extra["label"], extra["k"] if extra["kind"] == APPROX else None)
        groups.setdefault(key, []).append((cell, extra))
    rows = []
    for (kind, label, k), members in groups.items():
        row = Row(label, kind, k, [e["seed"] for _, e in members],
                  [task_metric(c, target, metric)[0] for c, _ in members])
        row.extras = {col: _mean([task_metric(c, t)[0] for c, _ in members]) for col, t in zip(extra_columns, extra_tasks)}
        row.selection_seconds = _mean([e.get("selection_seconds") for _, e in members])
        row.training_seconds = _mean([e.get("training_seconds") for _, e in members])
        row.kept_epochs = [kept_text(e.get("retraining")) for _, e in members]
        row.similarity = {key: _mean([e.get("similarity", {}).get(key) for _, e in members]) for key in SIMILARITY_KEYS}
        row.sources = _mean_fractions([e.get("sources", {}) for _, e in members])
        row.labels = _mean_fractions([e.get("labels", {}) for _, e in members])
        row.true_documents = _mean([e.get("true_documents") for _, e in members])
        row.strategy = members[0][1].get("strategy", label)  # results written before the key: the label
        row.recipe = _recipe_key(members[0][0])
        runs = [e.get("per_doc", {}).get(metric) for _, e in members]
        row.per_doc = runs if all(runs) else []
        rows.append(row)
    rank = {THETA0: 0, EXPERT: 1, APPROX: 2}
    rows.sort(key=lambda r: (rank[r.kind], order.index(r.label) if r.label in order else len(order), r.label, r.k or 0))
    _fill_gaps(rows)
    _fill_intervals(rows, metric)
    return Board(snapshot.get("name", Path(out).name), target, metric, higher, extra_columns, rows,
                 [{**e, "score": task_metric(c, target, metric)[0]} for c, e in zip(cells, extras)])


def _mean_fractions(parts: list[dict[str, float]]) -> dict[str, float]:
    """The share of each name averaged over the seeds of a row."""
    total: dict[str, float] = {}
    for part in parts:
        for name, share in part.items():
            total[name] = total.get(name, 0.0) + share / len(parts)
    return total


def _fractions(shares: dict[str, float], digits: int = DIGITS) -> str:
    return ";".join(f"{name}={share:.{digits}f}" for name, share in sorted(shares.items()))


def _recipe_key(cell: dict) -> str:
    """The retraining recipe a cell's approximation was trained with, as a comparable string: its
    ``recipe_hash``, so a cell saved before a recipe field existed (``class_balance``, say) matches
    a later cell that holds that field's default, which trains the same way. A recipe this version
    cannot read compares by its raw JSON."""
    recipe = (cell.get("config", {}).get("approx") or {}).get("recipe")
    if not recipe:
        return ""
    try:
        return TrainingRecipe.from_dict(dict(recipe)).recipe_hash()
    except (ApproxError, TypeError, ValueError):
        return json.dumps(recipe, sort_keys=True)


def _fill_gaps(rows: list[Row]) -> None:
    theta0 = next((r.mean for r in rows if r.kind == THETA0), None)
    expert = next((r.mean for r in rows if r.kind == EXPERT), None)
    random: dict[tuple, float] = {}
    for r in sorted((r for r in rows if r.kind == APPROX and r.strategy == RANDOM), key=lambda r: r.label != RANDOM):
        random.setdefault((r.k, r.recipe), r.mean)
    for row in rows:
        if expert is None:
            continue
        if theta0 is not None and expert != theta0:
            row.gap_theta0 = (row.mean - theta0) / (expert - theta0)
        base = random.get((row.k, row.recipe)) if row.kind == APPROX else None
        if base is not None and expert != base:
            row.gap_random = (row.mean - base) / (expert - base)


def _fill_intervals(rows: list[Row], metric: str) -> None:
    """Each approximation row minus the random row of its k and recipe (not random itself)."""
    random: dict[tuple, Row] = {}
    for r in sorted((r for r in rows if r.kind == APPROX and r.strategy == RANDOM), key=lambda r: r.label != RANDOM):
        random.setdefault((r.k, r.recipe), r)
    for row in rows:
        base = random.get((row.k, row.recipe)) if row.kind == APPROX else None
        if base is not None and base is not row and row.per_doc and base.per_doc:
            row.vs_random = paired_interval(row.per_doc, base.per_doc, metric)


def _signed(value: float | None, digits: int = DIGITS) -> str:
    return "" if value is None else f"{value:+.{digits}f}"


def interval_text(interval: Interval | None, higher_is_better: bool) -> str:
    """``+0.0320 [+0.0100, +0.0540] ✓`` (✓: the interval excludes 0 on the better side)."""
    if interval is None:
        return ""
    wins = interval.low > 0 if higher_is_better else interval.high < 0
    return (f"{_signed(interval.delta)} [{_signed(interval.low)}, {_signed(interval.high)}]"
            + (" ✓" if wins else ""))


def _fmt(value: float | None, digits: int = DIGITS) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def columns(board: Board) -> list[str]:
    return ["strategy", "k", "seeds", board.metric, f"{board.metric}_std", "gap_closed_vs_random",
            "gap_closed_vs_theta0", "delta_vs_random", "delta_vs_random_ci_low", "delta_vs_random_ci_high", *board.extra_columns, "selection_s", "training_s", "kept_epoch", *SIMILARITY_KEYS, "sources",
            "labels", "true_documents"]


def row_values(board: Board, row: Row) -> list[str]:
    """The CSV cells of a row (plain numbers, empty when unknown)."""
    return [row.label, "" if row.k is None else str(row.k), " ".join(map(str, row.seeds)), _fmt(row.mean),
            _fmt(row.std), _fmt(row.gap_random, 3), _fmt(row.gap_theta0, 3),
            *[_fmt(getattr(row.vs_random, name, None)) for name in ("delta", "low", "high")],
            *[_fmt(row.extras.get(c)) for c in board.extra_columns], _fmt(row.selection_seconds, 1),
            _fmt(row.training_seconds, 1), _kept(row), *[_fmt(row.similarity.get(k)) for k in SIMILARITY_KEYS],
            _fractions(row.sources, 3), _fractions(row.labels, 3), _fmt(row.true_documents, 1)]


def _kept(row: Row) -> str:
    """Each seed's kept epoch of the epochs run (``2/4 1/3``), empty when no seed recorded one."""
    return " ".join(k or "?" for k in row.kept_epochs) if any(row.kept_epochs) else ""


def to_csv(board: Board) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns(board))
    writer.writerows(row_values(board, row) for row in board.rows)
    return buffer.getvalue()


def to_markdown(board: Board) -> str:
    """The table people read: mean ± std, gaps as percentages, costs, similarity, for a
    classification target the pseudo-labels of each selection (percent per class), and, when some
    selection holds documents the expert was trained on, how many (a pool with true data in it)."""
    direction = "higher" if board.higher_is_better else "lower"
    with_labels = any(row.labels for row in board.rows)
    with_true = any(row.true_documents for row in board.rows)
    with_intervals = any(row.vs_random for row in board.rows)
    with_kept = any(_kept(row) for row in board.rows)
    header = ["strategy", "k", "seeds", f"{board.target} {board.metric} ({direction} is better)",
              "gap closed vs random", *(["Δ vs random [95% CI]"] if with_intervals else []), "gap closed vs θ0", *board.extra_columns, "selection s", "training s",
              *(["kept epoch"] if with_kept else []), *SIMILARITY_KEYS, *(["pseudo-labels %"] if with_labels else []),
              *(["true training docs"] if with_true else [])]
    lines = [f"# {board.name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in board.rows:
        score = _fmt(row.mean) + ("" if row.std is None else f" ± {_fmt(row.std)}")
        pct = lambda v: "" if v is None else f"{round(100 * v, 1) + 0.0:.1f}%"  # noqa: E731  (+0.0: no "-0.0%")
        cells = [row.label, "" if row.k is None else str(row.k), str(len(row.seeds)), score, pct(row.gap_random),
                 *([interval_text(row.vs_random, board.higher_is_better)] if with_intervals else []),
                 pct(row.gap_theta0), *[_fmt(row.extras.get(c)) for c in board.extra_columns],
                 _fmt(row.selection_seconds, 1), _fmt(row.training_seconds, 1),
                 *([_kept(row)] if with_kept else []), *[_fmt(row.similarity.get(k)) for k in SIMILARITY_KEYS]]
        if with_labels:
            cells.append(" ".join(f"{name} {100 * share:.0f}" for name, share in sorted(row.labels.items())))
        if with_true:
            cells.append(_fmt(row.true_documents, 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(out: str | Path) -> Board:
    """Write leaderboard.md and leaderboard.csv into ``out`` and return the board."""
    board = build_board(out)
    write_text_atomic(Path(out) / MD_FILE, to_markdown(board))
    write_text_atomic(Path(out) / CSV_FILE, to_csv(board))
    return board
