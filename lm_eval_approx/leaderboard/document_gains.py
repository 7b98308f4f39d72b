"""Document by document: how much of the expert's gain over θ0 each row recovers, and whether it
recovers it on the same documents.

A row's score can close part of the θ0 → expert gap in two ways: by a generic shift that lifts
every document a little (what any text of the right style does), or by recreating the expert's own
pattern, gaining most where the expert gained most. The aggregate metric cannot tell them apart;
the per-document scores every leaderboard cell keeps (``config.leaderboard.per_doc``) can.

For every document, a row's gain is its per-document value minus θ0's, with the row's seeds
averaged: for a perplexity-type metric (per-document log-likelihood and weight pairs) the value is
the log-likelihood per unit of weight (per word for ``word_perplexity``), so higher is better;
for a mean metric (``acc``) the value itself. Printed per row, as a Markdown table:

* mean gain, and its share of the expert's mean gain;
* the share of documents the row improves over θ0 (a gain above 0);
* the Pearson correlation of the row's per-document gains with the expert's.

    lm-eval-approx leaderboard gains --out results/cpu/msmarco_quality --metric word_perplexity \\
        --row random_rule --row select_rule --row select_likely_rule --row likelihood_min_rule \\
        --row results/cpu/msmarco_ceiling:indomain_rule

A row written ``FOLDER:LABEL`` comes from another leaderboard folder; it must have been scored on
the same documents (checked, as ``leaderboard compare`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lm_eval_approx.leaderboard.paired_rows import RowComparisonError, finished_runs

BASE, REFERENCE = "theta0", "expert"
HEADER = ("| row | seeds | mean gain over θ0 | share of the expert's gain | documents improved "
          "| correlation with the expert's per-document gain |")


def document_values(runs: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Per document: the seeds' mean of its value (log-likelihood per weight for a pair)."""
    values: dict[str, list[float]] = {}
    for run in runs.values():
        for doc, value in run.items():
            values.setdefault(doc, []).append(value[0] / value[1] if isinstance(value, list) else float(value))
    return {doc: float(np.mean(v)) for doc, v in values.items()}


def gain_summary(row: dict[str, float], base: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Mean gain over ``base``, its share of the reference's, documents improved, correlation with
    the reference's gains. The three must hold the same documents."""
    if not (set(row) == set(base) == set(reference)):
        raise RowComparisonError("the rows were not scored on the same documents; a per-document comparison needs them")
    docs = sorted(base)
    gain = np.array([row[d] - base[d] for d in docs])
    ref_gain = np.array([reference[d] - base[d] for d in docs])
    return {
        "mean_gain": float(gain.mean()),
        "share": float(gain.mean() / ref_gain.mean()) if ref_gain.mean() else float("nan"),
        "improved": float((gain > 0).mean()),
        # A constant gain has no correlation (corrcoef would warn and divide by zero).
        "correlation": float(np.corrcoef(gain, ref_gain)[0, 1]) if gain.std() and ref_gain.std() else float("nan"),
    }


def gains_table(out: str | Path, rows: list[str], metric: str = "acc", base: str = BASE,
                reference: str = REFERENCE) -> str:
    """The Markdown table of the reference row and every row of ``rows`` (labels of ``out``, or
    ``FOLDER:LABEL``), each against ``base``."""

    def load(folder: str | Path, label: str) -> tuple[dict[str, float], set, list[int]]:
        runs, scored = finished_runs(folder, label, None, metric)
        return document_values(runs), scored, sorted(runs)

    base_values, base_scored, _ = load(out, base)
    ref_values, ref_scored, _ = load(out, reference)
    lines = [HEADER, "|---|---|---|---|---|---|"]
    for text in [reference, *rows]:
        folder, _, label = text.rpartition(":")
        values, scored, seeds = load(Path(folder) if folder else out, label)
        if scored != base_scored or scored != ref_scored:
            raise RowComparisonError(f"row {text!r} was not scored on the documents of {base!r} "
                                     f"(target and limits {sorted(scored)} vs {sorted(base_scored)})")
        try:
            summary = gain_summary(values, base_values, ref_values)
        except RowComparisonError as error:
            raise RowComparisonError(f"row {text!r}: {error}") from None
        lines.append(f"| {label} | {', '.join(map(str, seeds))} | {summary['mean_gain']:+.3f} | {summary['share']:.0%} "
                     f"| {summary['improved']:.0%} | {summary['correlation']:.2f} |")
    return "\n".join(lines)
