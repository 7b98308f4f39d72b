"""Likelihood baselines: k lowest / highest loss under θf, and our loss-ratio strategy.

likelihood_min picks what θf finds easiest (lowest loss with the pseudo-labels), likelihood_max
the hardest; likelihood_ratio picks the k highest loss(θ0) − loss(θf): what θf learned that θ0
did not know. All sort stably, so ties go to the lowest id.
"""

from __future__ import annotations

import numpy as np

from lm_eval_approx.strategies.base import (
    LOSS_BASE,
    LOSS_FINETUNED,
    CandidatePool,
    Selection,
    Strategy,
)


def _top(scores: np.ndarray, k: int) -> Selection:
    picks = np.argsort(-scores, kind="stable")[:k]
    return Selection(indices=picks, scores=scores[picks])


class LikelihoodMinStrategy(Strategy):
    name = "likelihood_min"
    description = "k lowest loss under the finetuned model (with pseudo-labels)"
    requires = frozenset({LOSS_FINETUNED})

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        loss = np.asarray(pool.loss_finetuned, dtype=np.float64)
        picks = np.argsort(loss, kind="stable")[:k]
        return Selection(indices=picks, scores=loss[picks])


class LikelihoodMaxStrategy(Strategy):
    name = "likelihood_max"
    description = "k highest loss under the finetuned model (with pseudo-labels)"
    requires = frozenset({LOSS_FINETUNED})

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        return _top(np.asarray(pool.loss_finetuned, dtype=np.float64), k)


class LikelihoodRatioStrategy(Strategy):
    name = "likelihood_ratio"
    description = "k highest loss(base) - loss(finetuned): what the finetune learned"
    requires = frozenset({LOSS_FINETUNED, LOSS_BASE})

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        gain = np.asarray(pool.loss_base, dtype=np.float64) - np.asarray(pool.loss_finetuned, dtype=np.float64)
        return _top(gain, k)
