"""``select_omp`` (beyond the paper): non-negative orthogonal matching pursuit toward t.

Returns ids with weights: the NNLS coefficients of t ≈ Σ w_j g_j, rescaled to mean 1 so that
training can repeat examples by weight (see ``strategies/omp.py`` for the algorithm).
"""

from __future__ import annotations

from lm_eval_approx.strategies import omp
from lm_eval_approx.strategies.base import FEATURES, CandidatePool, Selection, Strategy
from lm_eval_approx.strategies.options import GradientOptions


class SelectOmpStrategy(Strategy):
    name = "select_omp"
    description = "orthogonal matching pursuit toward t with non-negative (NNLS) weights"
    requires = frozenset({FEATURES})
    Options = GradientOptions
    allows_fewer = True

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        result = omp.select_omp(pool.final_features, k, min_cosine=self.options.min_cosine)
        weights = result.weights / result.weights.mean() if len(result.weights) else result.weights
        info = {"picked": len(result.indices), "stopped_early": result.stopped_early,
                "dropped_zero_weight": result.dropped, "residual_norm": result.residual_norm,
                "nnls_weights": result.weights.tolist()}
        if self.options.min_cosine is not None:
            info["min_cosine"] = self.options.min_cosine
        return Selection(indices=result.indices, scores=result.scores, weights=weights, info=info)
