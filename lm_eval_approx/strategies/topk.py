"""``topk`` and ``topk_balanced``: the k candidates whose gradient is most aligned with the target.

topk is the LESS-like one-shot baseline: score_i = cos(g_i, t) = ⟨g_i, t⟩ / (‖g_i‖ ‖t‖), the k
highest in descending order (ties to the lowest id). topk_balanced caps each pseudo-label at
⌈k / C⌉ picks (C = number of classes) and fills from the best remaining when classes run out.
"""

from __future__ import annotations

import math

import numpy as np

from lm_eval_approx.features.gradient_features import GradientFeatures
from lm_eval_approx.strategies.base import (
    FEATURES,
    LABELS,
    CandidatePool,
    Selection,
    Strategy,
)
from lm_eval_approx.strategies.options import GradientOptions

BLOCK_ROWS = 4096  # rows converted to float64 at a time


def target_cosines(feats: GradientFeatures, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """cos(g_i, t) for every row, in float64 blocks (zero rows score 0)."""
    target = np.asarray(feats.target, dtype=np.float64)
    tnorm = np.linalg.norm(target)
    out = np.empty(feats.matrix.shape[0])
    for lo in range(0, len(out), block_rows):
        block = np.asarray(feats.matrix[lo : lo + block_rows], dtype=np.float64)
        norms = np.sqrt((block * block).sum(axis=1)) * tnorm
        dots = (block * target).sum(axis=1)
        out[lo : lo + len(block)] = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    return out


def descending(scores: np.ndarray) -> np.ndarray:
    """Positions by decreasing score, ties to the lowest position."""
    return np.argsort(-scores, kind="stable")


def _cut(order: np.ndarray, scores: np.ndarray, k: int, min_cosine: float | None) -> tuple[np.ndarray, dict]:
    picks = order[:k]
    info: dict = {}
    if min_cosine is not None:
        picks = picks[scores[picks] >= min_cosine]
        info = {"min_cosine": min_cosine, "stopped_early": len(picks) < k, "picked": len(picks)}
    return picks, info


class TopkStrategy(Strategy):
    name = "topk"
    description = "k highest cos(g_i, t), one shot (LESS-like)"
    requires = frozenset({FEATURES})
    Options = GradientOptions
    allows_fewer = True

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        scores = target_cosines(pool.final_features)
        picks, info = _cut(descending(scores), scores, k, self.options.min_cosine)
        return Selection(indices=picks, scores=scores[picks], info=info)


class TopkBalancedStrategy(Strategy):
    name = "topk_balanced"
    description = "topk with a quota of ceil(k/C) per pseudo-label, filled from the rest"
    requires = frozenset({FEATURES, LABELS})
    Options = GradientOptions
    allows_fewer = True

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        scores = target_cosines(pool.final_features)
        labels = np.asarray(pool.labels)
        classes = pool.num_classes or len(np.unique(labels))
        quota = math.ceil(k / classes)
        order = descending(scores)
        counts: dict[int, int] = {}
        chosen = np.zeros(len(order), dtype=bool)
        taken = 0
        for pos, i in enumerate(order):
            if taken == k:
                break
            label = int(labels[i])
            if counts.get(label, 0) < quota:
                counts[label] = counts.get(label, 0) + 1
                chosen[pos] = True
                taken += 1
        missing = k - taken
        if missing:
            chosen[np.flatnonzero(~chosen)[:missing]] = True
        picked = order[chosen]
        picks, info = _cut(picked, scores, k, self.options.min_cosine)
        info.update({"quota": quota, "classes": classes})
        return Selection(indices=picks, scores=scores[picks], info=info)
