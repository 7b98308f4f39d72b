"""``random``: a uniform, seeded sample of k candidates (the paper's baseline)."""

from __future__ import annotations

import numpy as np

from lm_eval_approx.strategies.base import CandidatePool, Selection, Strategy


class RandomStrategy(Strategy):
    name = "random"
    description = "uniform sample of k candidates, seeded"

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        rng = np.random.default_rng(seed)
        return Selection(indices=rng.choice(len(pool), size=k, replace=False))
