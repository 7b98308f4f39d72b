"""``select``, ``select_batched``, ``select_checkpoints``: greedy SELECT (Morris et al. 2025).

All three run the exact incremental engine of ``strategies/greedy.py``:
select maximises cos(s + g_i, t) at θf; select_batched resets s every b picks (b = the training
batch size, so each batch approximates t on its own); select_checkpoints averages the cosine over
the M feature sets of the pool (synthetic checkpoints θ0 + (j/M)(θf − θ0)); with M = 1 it is select.
"""

from __future__ import annotations

from lm_eval_approx.strategies import greedy
from lm_eval_approx.strategies.base import FEATURES, CandidatePool, Selection, Strategy
from lm_eval_approx.strategies.options import BatchedOptions, GradientOptions


def greedy_selection(result: greedy.GreedyResult, min_cosine: float | None, **info) -> Selection:
    info.update({"picked": len(result.indices), "stopped_early": result.stopped_early,
                 "rechecked": result.rechecked, "exact_refreshes": result.refreshes})
    if min_cosine is not None:
        info["min_cosine"] = min_cosine
    return Selection(indices=result.indices, scores=result.scores, info=info)


class SelectStrategy(Strategy):
    name = "select"
    description = "greedy argmax cos(s + g_i, t) with running sum s (SELECT)"
    requires = frozenset({FEATURES})
    Options = GradientOptions
    allows_fewer = True

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        result = greedy.greedy_select(pool.final_features, k, min_cosine=self.options.min_cosine)
        return greedy_selection(result, self.options.min_cosine)


class SelectBatchedStrategy(Strategy):
    name = "select_batched"
    description = "select with the running sum reset every batch_size picks"
    requires = frozenset({FEATURES})
    Options = BatchedOptions
    allows_fewer = True

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        result = greedy.greedy_select(pool.final_features, k, batch_size=self.options.batch_size,
                                      min_cosine=self.options.min_cosine)
        return greedy_selection(result, self.options.min_cosine, batch_size=self.options.batch_size)


class SelectCheckpointsStrategy(Strategy):
    name = "select_checkpoints"
    description = "select with cosines averaged over synthetic checkpoints between base and finetune"
    requires = frozenset({FEATURES})
    Options = GradientOptions
    allows_fewer = True

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        feats = sorted(pool.features, key=lambda f: f.alpha)
        result = greedy.greedy_select(feats, k, min_cosine=self.options.min_cosine)
        return greedy_selection(result, self.options.min_cosine, checkpoints=[f.alpha for f in feats])
