"""Paired bootstrap confidence intervals of a leaderboard row minus random, on the same documents.

Why paired: two approximations scored on the same test documents share the documents' difficulty,
so the difference of their scores varies far less than either score; an interval of the
difference says whether a row beats random, which two unpaired ±SE bars cannot.

Each scored cell keeps one value per test document (``per_doc``, see ``per_doc_values``): for a
mean metric (``acc``) the document's 0/1 or value; for a perplexity-type metric the pair
(log-likelihood, weight) that lm-eval's aggregation combines, so
``word_perplexity`` = exp(−Σ ll / Σ words) is recomputed from the same pairs on every resample.
A row with several seeds (and random with its seeds) is first averaged over seeds per document
(for pairs: the seeds' log-likelihoods averaged, weights equal), which is the quantity the row's
mean reports. Then, B times, n documents are drawn with replacement and the metric of the row
minus the metric of random is computed on that draw; the interval is the 2.5th and 97.5th
percentile of the B differences (the percentile bootstrap, ``scipy.stats.bootstrap`` with
``paired=True``), with a fixed seed so a table is reproducible. "Beats random" means the interval
excludes 0 in the metric's better direction.

That interval holds each row's seeds fixed. ``two_level_interval`` also resamples them (each
side's seeds, then the shared documents), so a retraining seed that moves a score counts in the
interval; ``row_interval`` is what the leaderboard prints: the two-level interval when both sides
have several seeds, the documents-only one (marked in the table) when a side has one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lm_eval_approx.errors import ConfigError

DEFAULT_ITERATIONS = 2000
DEFAULT_LEVEL = 0.95
BOOTSTRAP_SEED = 0
TWO_LEVEL, DOCUMENTS_ONLY = "two-level", "documents-only"
# lm-eval's aggregations over (log-likelihood, weight) pairs, as a function of (Σ ll, Σ weight).
PAIR_AGGREGATES = {
    "word_perplexity": lambda ll, w: math.exp(-ll / w),
    "byte_perplexity": lambda ll, w: math.exp(-ll / w),
    "bits_per_byte": lambda ll, w: -ll / (w * math.log(2)),
}


@dataclass(frozen=True)
class Interval:
    """Row minus reference on the same documents: the point difference and its bootstrap interval."""

    delta: float
    low: float
    high: float
    documents: int
    method: str = DOCUMENTS_ONLY

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float | int | str]:
        return {"delta": self.delta, "low": self.low, "high": self.high, "documents": self.documents,
                "method": self.method}


def per_doc_values(sample: dict, metric: str) -> float | list[float] | None:
    """The value one lm-eval sample holds for ``metric``: a number, or a [ll, weight] pair for the
    perplexity-type metrics; None when the sample lacks it."""
    value = sample.get(metric)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            return None
        return [float(value[0]), float(value[1])]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _seed_average(runs: Sequence[dict[str, object]], ids: list[str]) -> np.ndarray:
    """(documents,) or (documents, 2): each document's value averaged over the runs (seeds)."""
    stacked = np.asarray([[run[i] for i in ids] for run in runs], dtype=np.float64)
    return stacked.mean(axis=0)


def _aggregate(values: np.ndarray, metric: str) -> float:
    if values.ndim == 1:
        return float(values.mean())
    if metric not in PAIR_AGGREGATES:
        raise ConfigError("metric", metric, "a mean metric or one of " + ", ".join(PAIR_AGGREGATES))
    ll, weight = values.sum(axis=0)
    return float(PAIR_AGGREGATES[metric](ll, weight))


def _aggregate_draws(values: np.ndarray, draws: np.ndarray, metric: str) -> np.ndarray:
    """The metric on each row of ``draws`` (index arrays), vectorised."""
    if values.ndim == 1:
        return values[draws].mean(axis=1)
    return _pair_metric(values[draws, 0], values[draws, 1], metric)


def _pair_metric(ll: np.ndarray, weight: np.ndarray, metric: str) -> np.ndarray:
    """A perplexity-type metric of each row of per-document (log-likelihood, weight) arrays."""
    ll, weight = ll.sum(axis=-1), weight.sum(axis=-1)
    if metric in ("word_perplexity", "byte_perplexity"):
        return np.exp(-ll / weight)
    return -ll / (weight * math.log(2))


def _shared_ids(row: Sequence[dict[str, object]], reference: Sequence[dict[str, object]]) -> list[str]:
    """The documents every run of both sides was scored on, sorted; [] when a side has no run."""
    if not row or not reference:
        return []
    return sorted(set.intersection(*(set(run) for run in [*row, *reference])))


def paired_interval(row: Sequence[dict[str, object]], reference: Sequence[dict[str, object]], metric: str,
                    iterations: int = DEFAULT_ITERATIONS, level: float = DEFAULT_LEVEL,
                    seed: int = BOOTSTRAP_SEED) -> Interval | None:
    """Bootstrap interval of metric(row) − metric(reference) over the documents both were scored
    on. ``row`` and ``reference`` are lists of runs (one per seed), each a mapping doc id → value
    (``per_doc_values``). None when they share no document or a run lacks one of them."""
    ids = _shared_ids(row, reference)
    if not ids:
        return None
    a, b = _seed_average(row, ids), _seed_average(reference, ids)
    if a.shape != b.shape:
        return None
    delta = _aggregate(a, metric) - _aggregate(b, metric)
    if len(ids) < 2:  # one document resamples to itself (and scipy needs two)
        return Interval(delta=float(delta), low=float(delta), high=float(delta), documents=len(ids))
    from scipy import stats  # here, not at import: the command line starts without it

    if a.ndim == 1:
        samples: tuple[np.ndarray, ...] = (a, b)

        def statistic(row_values, reference_values, axis=-1):
            return row_values.mean(axis=axis) - reference_values.mean(axis=axis)
    else:
        samples = (a[:, 0], a[:, 1], b[:, 0], b[:, 1])

        def statistic(row_ll, row_weight, reference_ll, reference_weight, axis=-1):  # type: ignore[misc]  # scipy passes one array per sample
            return _pair_metric(row_ll, row_weight, metric) - _pair_metric(reference_ll, reference_weight, metric)
    # paired=True draws one index array of (iterations, documents) from the generator, as the
    # definition does (tests/test_intervals.py holds it to a loop written from the definition).
    result = stats.bootstrap(samples, statistic, n_resamples=iterations, paired=True, vectorized=True,
                             confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return Interval(delta=float(delta), low=float(low), high=float(high), documents=len(ids))


def two_level_interval(row: Sequence[dict[str, object]], reference: Sequence[dict[str, object]], metric: str,
                       iterations: int = DEFAULT_ITERATIONS, level: float = DEFAULT_LEVEL,
                       seed: int = BOOTSTRAP_SEED) -> Interval | None:
    """The two-level bootstrap of metric(row) − metric(reference): each draw first resamples each
    side's seeds (runs) with replacement, independently, then the shared documents once for both
    sides, and takes the difference of the metric of the two seed-averaged resamples. Retraining
    seeds move a score as much as the documents do; ``paired_interval`` holds the seeds fixed, this
    one counts both. A side with one run has no seed level to resample (its interval is then the
    documents-only one for that side). Same return as ``paired_interval``."""
    ids = _shared_ids(row, reference)
    if not ids:
        return None
    a = np.asarray([[run[i] for i in ids] for run in row], dtype=np.float64)
    b = np.asarray([[run[i] for i in ids] for run in reference], dtype=np.float64)
    if a.shape[1:] != b.shape[1:]:
        return None
    delta = _aggregate(a.mean(axis=0), metric) - _aggregate(b.mean(axis=0), metric)
    rng = np.random.default_rng(seed)
    diffs = np.empty(iterations)
    for t in range(iterations):
        a_seeds = rng.integers(0, len(a), size=len(a))
        b_seeds = rng.integers(0, len(b), size=len(b))
        docs = rng.integers(0, len(ids), size=(1, len(ids)))
        diffs[t] = (_aggregate_draws(a[a_seeds].mean(axis=0), docs, metric)[0]
                    - _aggregate_draws(b[b_seeds].mean(axis=0), docs, metric)[0])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return Interval(delta=float(delta), low=float(low), high=float(high), documents=len(ids), method=TWO_LEVEL)


def row_interval(row: Sequence[dict[str, object]], reference: Sequence[dict[str, object]],
                 metric: str) -> Interval | None:
    """The interval a leaderboard Δ column prints: two-level when both sides have several seeds,
    documents-only (``method`` says which) when a side has one, as it has no seed spread to resample."""
    if len(row) > 1 and len(reference) > 1:
        return two_level_interval(row, reference, metric)
    return paired_interval(row, reference, metric)
