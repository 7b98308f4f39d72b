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

Beside each approximation row: Δ vs random (and Δ vs select), the row's metric minus that
reference row's on the same test documents, with its paired bootstrap 95% interval
(``leaderboard/comparisons.py``): two-level (each row's seeds resampled, then the documents), or
documents-only, marked ¹, when a side has one seed. A row beats random when the interval excludes 0
on the better side. Cells scored before per-document values were kept have no interval.

"knew" is what the row knew of the target (``leaderboard/knowledge.py``: weights, task texts or
true data); a Δ between rows that knew different things is marked †. "selection FLOPs" is the
mean over seeds of the selection work a cell recorded (``selection_cost``; blank for older cells).

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
from lm_eval_approx.errors import ApproxError, ConfigError
from lm_eval_approx.leaderboard.comparisons import (
    RANDOM,
    REFERENCES,
    Delta,
    delta_text,
    fill_deltas,
    footnotes,
    reference_rows,
)
from lm_eval_approx.leaderboard.config import APPROX, EXPERT, THETA0
from lm_eval_approx.leaderboard.intervals import Interval
from lm_eval_approx.leaderboard.knowledge import most, recorded_knowledge
from lm_eval_approx.leaderboard.runner import CONFIG_SNAPSHOT, RESULTS_DIR, result_files
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.training.summary import kept_text

MD_FILE, CSV_FILE = "leaderboard.md", "leaderboard.csv"
DIGITS = 4
SIMILARITY_KEYS = ("ot_distance", "vocab_jaccard", "vocab_containment")
COST_KEYS = ("flops", "forward_tokens", "backward_tokens", "generated_tokens")
# The CSV columns of each Δ: delta_vs_<reference> + each suffix (the interval's method, the reference's knew).
DELTA_FIELDS = ("", "_ci_low", "_ci_high", "_interval", "_reference_knew")


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
    knew: str | None = None
    selection_cost: dict[str, float] | None = None
    deltas: dict[str, Delta] = field(default_factory=dict)

    @property
    def vs_random(self) -> Interval | None:
        delta = self.deltas.get(RANDOM)
        return delta.interval if delta else None

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


def target_score(results: dict, target: str, metric: str | None) -> float:
    """A cell's score: ``metric`` of ``target`` (None: its first metric); a named error when its
    results lack it (a misspelt metric)."""
    value, name, _ = task_metric(results, target, metric)
    if value is None:
        raise ConfigError("metric", name, f"a metric that every cell's results report for {target}")
    return value


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
                  [target_score(c, target, metric) for c, _ in members])
        row.extras = {col: _mean([task_metric(c, t)[0] for c, _ in members]) for col, t in zip(extra_columns, extra_tasks)}
        row.selection_seconds = _mean([e.get("selection_seconds") for _, e in members])
        row.training_seconds = _mean([e.get("training_seconds") for _, e in members])
        row.kept_epochs = [kept_text(e.get("retraining")) for _, e in members]
        row.similarity = {key: _mean([e.get("similarity", {}).get(key) for _, e in members]) for key in SIMILARITY_KEYS}
        row.sources = _mean_fractions([e.get("sources", {}) for _, e in members])
        row.labels = _mean_fractions([e.get("labels", {}) for _, e in members])
        row.true_documents = _mean([e.get("true_documents") for _, e in members])
        row.strategy = members[0][1].get("strategy", label)  # results written before the key: the label
        row.knew = most([recorded_knowledge(c, snapshot) for c, _ in members])
        row.selection_cost = _mean_cost([e.get("selection_cost") for _, e in members])
        row.recipe = _recipe_key(members[0][0])
        runs = [e.get("per_doc", {}).get(metric) for _, e in members]
        row.per_doc = runs if all(runs) else []
        rows.append(row)
    rank = {THETA0: 0, EXPERT: 1, APPROX: 2}
    rows.sort(key=lambda r: (rank[r.kind], order.index(r.label) if r.label in order else len(order), r.label, r.k or 0))
    _fill_gaps(rows)
    fill_deltas(rows, metric)
    return Board(snapshot.get("name", Path(out).name), target, metric, higher, extra_columns, rows,
                 [{**e, "score": task_metric(c, target, metric)[0]} for c, e in zip(cells, extras)])


def _mean_cost(costs: list[object]) -> dict[str, float] | None:
    """Each ``selection_cost`` field averaged over the seeds that recorded one; None when none did."""
    kept = [c for c in costs if isinstance(c, dict)]
    if not kept:
        return None
    return {key: value for key in COST_KEYS if (value := _mean([_number(c.get(key)) for c in kept])) is not None}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
    random = {key: r.mean for key, r in reference_rows(rows, RANDOM).items()}
    for row in rows:
        if expert is None:
            continue
        if theta0 is not None and expert != theta0:
            row.gap_theta0 = (row.mean - theta0) / (expert - theta0)
        base = random.get((row.k, row.recipe)) if row.kind == APPROX else None
        if base is not None and expert != base:
            row.gap_random = (row.mean - base) / (expert - base)


def _fmt(value: float | None, digits: int = DIGITS) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def columns(board: Board) -> list[str]:
    return ["strategy", "k", "seeds", "knew", board.metric, f"{board.metric}_std", "gap_closed_vs_random",
            "gap_closed_vs_theta0", *[f"delta_vs_{ref}{part}" for ref in REFERENCES for part in DELTA_FIELDS],
            *board.extra_columns, "selection_s", *[f"selection_{key}" for key in COST_KEYS], "training_s",
            "kept_epoch", *SIMILARITY_KEYS, "sources", "labels", "true_documents"]


def _delta_values(delta: Delta | None) -> list[str]:
    """A Δ's CSV cells: delta, interval bounds, the interval's method, the reference's knew."""
    if delta is None:
        return [""] * len(DELTA_FIELDS)
    interval = delta.interval
    return [_fmt(interval.delta), _fmt(interval.low), _fmt(interval.high), interval.method, delta.reference_knew or ""]


def _cost(row: Row, key: str, csv_cell: bool = True) -> str:
    """A selection-cost mean: ``%.6g`` in the CSV, ``1.2e15`` in the Markdown; empty when absent."""
    value = (row.selection_cost or {}).get(key)
    if value is None:
        return ""
    if csv_cell:
        return f"{value:.6g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def row_values(board: Board, row: Row) -> list[str]:
    """The CSV cells of a row (plain numbers, empty when unknown)."""
    return [row.label, "" if row.k is None else str(row.k), " ".join(map(str, row.seeds)), row.knew or "",
            _fmt(row.mean), _fmt(row.std), _fmt(row.gap_random, 3), _fmt(row.gap_theta0, 3),
            *[value for ref in REFERENCES for value in _delta_values(row.deltas.get(ref))],
            *[_fmt(row.extras.get(c)) for c in board.extra_columns], _fmt(row.selection_seconds, 1),
            *[_cost(row, key) for key in COST_KEYS], _fmt(row.training_seconds, 1), _kept(row),
            *[_fmt(row.similarity.get(k)) for k in SIMILARITY_KEYS],
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


@dataclass
class Table:
    """The table people read, as cells: the Markdown file and the HTML page both render it. The first
    ``leading`` columns state each row's result; the rest give its context (the page folds them)."""

    header: list[str]
    rows: list[tuple[Row, list[str]]]
    leading: int
    notes: list[str]


def readable_table(board: Board) -> Table:
    """Mean ± std, gaps as percentages, Δ with its interval and marks, costs, similarity, for a
    classification target the pseudo-labels of each selection (percent per class), and, when some
    selection holds documents the expert was trained on, how many (a pool with true data in it)."""
    direction = "higher" if board.higher_is_better else "lower"
    with_labels = any(row.labels for row in board.rows)
    with_true = any(row.true_documents for row in board.rows)
    shown = [ref for ref in REFERENCES if any(ref in row.deltas for row in board.rows)]
    with_kept = any(_kept(row) for row in board.rows)
    with_cost = any(row.selection_cost for row in board.rows)
    leading = ["strategy", "k", "seeds", "knew", f"{board.target} {board.metric} ({direction} is better)",
               "gap closed vs random", *[f"Δ vs {ref} [95% CI]" for ref in shown], "gap closed vs θ0"]
    header = [*leading, *board.extra_columns, "selection s", *(["selection FLOPs"] if with_cost else []),
              "training s", *(["kept epoch"] if with_kept else []), *SIMILARITY_KEYS,
              *(["pseudo-labels %"] if with_labels else []), *(["true training docs"] if with_true else [])]
    rows = []
    for row in board.rows:
        score = _fmt(row.mean) + ("" if row.std is None else f" ± {_fmt(row.std)}")
        pct = lambda v: "" if v is None else f"{round(100 * v, 1) + 0.0:.1f}%"  # noqa: E731  (+0.0: no "-0.0%")
        cells = [row.label, "" if row.k is None else str(row.k), str(len(row.seeds)), row.knew or "", score,
                 pct(row.gap_random), *[delta_text(row.deltas.get(ref), board.higher_is_better) for ref in shown],
                 pct(row.gap_theta0), *[_fmt(row.extras.get(c)) for c in board.extra_columns],
                 _fmt(row.selection_seconds, 1), *([_cost(row, "flops", csv_cell=False)] if with_cost else []),
                 _fmt(row.training_seconds, 1),
                 *([_kept(row)] if with_kept else []), *[_fmt(row.similarity.get(k)) for k in SIMILARITY_KEYS]]
        if with_labels:
            cells.append(" ".join(f"{name} {100 * share:.0f}" for name, share in sorted(row.labels.items())))
        if with_true:
            cells.append(_fmt(row.true_documents, 1))
        rows.append((row, cells))
    deltas = [row.deltas[ref] for row in board.rows for ref in shown if ref in row.deltas]
    return Table(header, rows, len(leading), footnotes(deltas) if deltas else [])


def to_markdown(board: Board) -> str:
    """The readable table as Markdown, its notes under it."""
    table = readable_table(board)
    lines = [f"# {board.name}", "", "| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(cells) + " |" for _, cells in table.rows]
    for note in table.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_tables(out: str | Path) -> Board:
    """Write leaderboard.md and leaderboard.csv into ``out`` and return the board."""
    board = build_board(out)
    write_text_atomic(Path(out) / MD_FILE, to_markdown(board))
    write_text_atomic(Path(out) / CSV_FILE, to_csv(board))
    return board
