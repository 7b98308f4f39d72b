"""Example third-party plugin: ``stratified_random``, a random sample with an equal share per
pseudo-label (a stronger random baseline when the candidate corpus is skewed toward one class).

It is a normal package: ``[project.entry-points.lm_eval_approx] stratified = "lm_eval_approx_stratified"``
makes lm-eval-approx load this module and call its ``register_strategies`` hook.
"""

from __future__ import annotations

import numpy as np

from lm_eval_approx.hookspecs import hookimpl
from lm_eval_approx.strategies import CandidatePool, Selection, Strategy
from lm_eval_approx.strategies.base import LABELS


class StratifiedRandomStrategy(Strategy):
    name = "stratified_random"
    description = "random sample with ⌈k/C⌉ per pseudo-label, the rest filled at random (seeded)"
    requires = frozenset({LABELS})

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        rng = np.random.default_rng(seed)
        labels = np.asarray(pool.labels)
        classes = np.unique(labels)
        quota = -(-k // len(classes))
        picked = []
        for label in classes:
            members = np.flatnonzero(labels == label)
            picked.extend(rng.permutation(members)[:quota].tolist())
        picked = rng.permutation(np.asarray(picked))[:k].tolist()
        if len(picked) < k:
            rest = np.setdiff1d(np.arange(len(pool)), picked)
            picked += rng.permutation(rest)[: k - len(picked)].tolist()
        return Selection(indices=np.asarray(picked, dtype=np.int64))


@hookimpl
def register_strategies(register):
    register(StratifiedRandomStrategy, aliases=("stratified",))
