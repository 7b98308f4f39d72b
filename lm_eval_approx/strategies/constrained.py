"""Constrained SELECT, two strategies of our own beyond the paper, each aimed at a measured failure.

``select_quota``: the greedy of ``select`` with at most q_c picks per θf pseudo-label c. Measured
(results/cpu/FINDINGS.md, "Under the rule select_quota beats select on AG News"): SELECT's 300
AG News picks were 39% World, 31% Sports, 12% Business and 19% Sci/Tech (the test set is
uniform), and select_quota's largest gain over it is on Business, the class it under-picks; the
gradient target θ0 − θf is dominated by a few classes, so the unconstrained greedy starves the
rest. Quotas: ``uniform`` gives each class ⌊k/C⌋ (the remainder to the classes with the most
candidates), ``pool`` gives them in proportion to θf's label shares over the whole pool; a class
with fewer candidates than its quota hands the surplus to the others (largest remainder first).

``select_likely``: the greedy of ``select`` restricted to the ``keep`` share of the pool with the
lowest θf loss (the documents θf finds most typical of the task). Measured: ``likelihood_min``
ran second behind SELECT in the AG News CPU grid, and the paper saw it beat SELECT at small k on
MS MARCO; gradients alone also pick off-task documents whose gradient happens to align.

Both run the exact incremental engine (``strategies/greedy.py``) with its ``groups``/``quotas``
and ``eligible`` constraints; tests check them against the greedy written from its definition.
"""

from __future__ import annotations

import numpy as np

from lm_eval_approx.errors import SelectionError
from lm_eval_approx.strategies import greedy
from lm_eval_approx.strategies.base import FEATURES, LABELS, LOSS_FINETUNED, CandidatePool, Selection, Strategy
from lm_eval_approx.strategies.options import LikelyOptions, QuotaOptions
from lm_eval_approx.strategies.select import greedy_selection


def class_quotas(labels: np.ndarray, classes: int, k: int, shares: str) -> np.ndarray:
    """Per-class quotas summing to min(k, pool size), none above its class's candidate count.

    Ideal shares w_c (uniform 1/C, or the pool's label shares) give k·w_c; each class gets the floor,
    then the remaining picks go one by one to the classes with the largest fractional part (ties:
    more candidates, then lower label) that still have candidates left."""
    counts = np.bincount(labels, minlength=classes).astype(np.int64)
    weights = np.full(classes, 1.0 / classes) if shares == "uniform" else counts / counts.sum()
    ideal = k * weights
    quotas = np.minimum(np.floor(ideal).astype(np.int64), counts)
    fraction = ideal - np.floor(ideal)
    order = sorted(range(classes), key=lambda c: (-fraction[c], -counts[c], c))
    target = min(k, int(counts.sum()))
    while quotas.sum() < target:
        for c in order:
            if quotas.sum() == target:
                break
            if quotas[c] < counts[c]:
                quotas[c] += 1
    return quotas


class SelectQuotaStrategy(Strategy):
    name = "select_quota"
    description = "select with at most a quota of picks per θf pseudo-label (uniform or the pool's shares)"
    requires = frozenset({FEATURES, LABELS})
    Options = QuotaOptions
    allows_fewer = True

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        labels = np.asarray(pool.labels, dtype=np.int64)
        classes = pool.num_classes or int(labels.max()) + 1
        if labels.min() < 0 or labels.max() >= classes:
            raise SelectionError(f"select_quota needs pseudo-labels in [0, {classes}) (a classification task)")
        quotas = class_quotas(labels, classes, k, self.options.shares)
        result = greedy.greedy_select(pool.final_features, k, min_cosine=self.options.min_cosine,
                                      groups=labels, quotas=quotas)
        return greedy_selection(result, self.options.min_cosine, shares=self.options.shares,
                          quotas=" ".join(map(str, quotas.tolist())))


class SelectLikelyStrategy(Strategy):
    name = "select_likely"
    description = "select among the keep share of the pool with the lowest θf loss"
    requires = frozenset({FEATURES, LOSS_FINETUNED})
    Options = LikelyOptions
    allows_fewer = True

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        loss = np.asarray(pool.loss_finetuned, dtype=np.float64)
        size = max(k, int(np.ceil(self.options.keep * len(loss))))
        # Stable sort: equal losses keep pool order, so the kept set is deterministic.
        kept = np.argsort(loss, kind="stable")[:size]
        eligible = np.zeros(len(loss), dtype=bool)
        eligible[kept] = True
        result = greedy.greedy_select(pool.final_features, k, min_cosine=self.options.min_cosine,
                                      eligible=eligible)
        return greedy_selection(result, self.options.min_cosine, keep=self.options.keep, eligible=int(size))
