"""The Δ columns of a leaderboard: each approximation row minus a reference row on the same documents.

A reference is the row of a reference strategy (``random``, ``select``) at the row's k, retrained
with the same recipe (the row labelled like the strategy is preferred when several share k and
recipe, then the first in the config's order). Each Δ carries the interval ``row_interval`` picks
(two-level, or documents-only when a side has one seed) and whether the two rows knew different
things (``leaderboard/knowledge.py``); the table marks both, so neither goes unsaid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lm_eval_approx.leaderboard.config import APPROX
from lm_eval_approx.leaderboard.intervals import DOCUMENTS_ONLY, Interval, row_interval

RANDOM, SELECT = "random", "select"
# Reference strategies, in column order. The reference row has no Δ against itself, and random rows
# (the baseline of every Δ) have none against the others.
REFERENCES = (RANDOM, SELECT)
ONE_SEED, KNEW_DIFFERS = "¹", "†"
FOOTNOTES = {
    ONE_SEED: "¹ one seed: documents-only interval (a side with one seed has no seed spread to resample).",
    KNEW_DIFFERS: "† the row and its reference knew different things (see the knew column).",
}
METHOD_NOTE = ("Δ [95% CI]: the row minus the reference row of the same k and recipe on the same test documents, "
               "two-level paired bootstrap (each row's seeds resampled, then the documents); "
               "✓: the interval excludes 0 on the better side.")


@dataclass(frozen=True)
class Delta:
    """One Δ cell: the interval, the reference row's label, and what that row knew."""

    interval: Interval
    reference: str
    reference_knew: str | None
    knew_differs: bool

    @property
    def one_seed(self) -> bool:
        return self.interval.method == DOCUMENTS_ONLY


def reference_rows(rows: Iterable[Any], strategy: str) -> dict[tuple, Any]:
    """(k, recipe) → the reference row of ``strategy`` (rows in table order)."""
    found: dict[tuple, Any] = {}
    for row in sorted((r for r in rows if r.kind == APPROX and r.strategy == strategy), key=lambda r: r.label != strategy):
        found.setdefault((row.k, row.recipe), row)
    return found


def fill_deltas(rows: list[Any], metric: str) -> None:
    """Set ``row.deltas[strategy]`` for every approximation row with a reference and per-document
    values on both sides (cells scored before those were kept have none)."""
    for strategy in REFERENCES:
        base_of = reference_rows(rows, strategy)
        for row in rows:
            base = base_of.get((row.k, row.recipe)) if row.kind == APPROX else None
            if base is None or base is row or (strategy != RANDOM and row.strategy == RANDOM):
                continue
            if not (row.per_doc and base.per_doc):
                continue
            interval = row_interval(row.per_doc, base.per_doc, metric)
            if interval is not None:
                differs = row.knew is not None and base.knew is not None and row.knew != base.knew
                row.deltas[strategy] = Delta(interval, base.label, base.knew, differs)


def _signed(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:+.{digits}f}"


def interval_text(interval: Interval | None, higher_is_better: bool, marks: str = "") -> str:
    """``+0.0320 [+0.0100, +0.0540] ✓`` (✓: the interval excludes 0 on the better side; ``marks``
    go right after the interval)."""
    if interval is None:
        return ""
    wins = interval.low > 0 if higher_is_better else interval.high < 0
    return (f"{_signed(interval.delta)} [{_signed(interval.low)}, {_signed(interval.high)}]{marks}"
            + (" ✓" if wins else ""))


def marks(delta: Delta | None) -> str:
    if delta is None:
        return ""
    return (ONE_SEED if delta.one_seed else "") + (KNEW_DIFFERS if delta.knew_differs else "")


def delta_text(delta: Delta | None, higher_is_better: bool) -> str:
    """The Markdown cell of a Δ: the interval, its marks and ✓."""
    return "" if delta is None else interval_text(delta.interval, higher_is_better, marks(delta))


def footnotes(deltas: Iterable[Delta]) -> list[str]:
    """The lines under a table for the marks its Δ cells use, in mark order."""
    used = "".join(marks(d) for d in deltas)
    return [METHOD_NOTE, *(FOOTNOTES[mark] for mark in (ONE_SEED, KNEW_DIFFERS) if mark in used)]
