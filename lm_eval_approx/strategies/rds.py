"""``rds``: RDS+ (Ivison et al. 2025, "Large-Scale Data Selection for Instruction Tuning", arXiv 2503.01807).

Pool texts and target texts are embedded with θ0 itself (``pool.base_encoder``: the
position-weighted mean of θ0's last hidden states, L2-normalised; ``features/pooled.py``) and
compared by cosine similarity. Which documents are then taken depends on ``aggregate``:

- ``round_robin`` (default): the target texts take turns, in order; each takes its most similar
  pool document not picked yet, until k are picked (``strategies/nearest.py``).
- ``max``: the k documents of highest max_t cos(x_i, y_t), each document scored by its nearest target.
- ``mean``: the k documents of highest mean_t cos(x_i, y_t), i.e. nearest to the targets' centroid.

Why round robin by default. The authors' code (github.com/hamishivi/automated-instruction-selection)
selects for one target task with ``minimal_multitask/get_top_influences.py --selection_method
max`` (the command its README gives for RDS+), and that method is a round robin over the query
points: each query pops its highest-cosine remaining training point in turn. Its README's second
route for very large pools, ``get_top_optimized.py --selection_method max``, pops (query, point)
pairs from one global max-heap and skips points already taken, which orders points by their max
cosine over the queries: that is ``aggregate=max`` here. ``mean`` is their ``mean_max``. One
difference from ``get_top_influences.py``: there a query whose top point was already taken loses
its turn; here it takes its next free point, so every turn yields a pick and the order is kept
(theirs ends with ``list(set(...))``). Ties go to the lowest pool position everywhere.

``Selection.scores`` holds each pick's cosine (to the target that took it, or its aggregate score).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lm_eval_approx.config_checks import check_choice, help_field
from lm_eval_approx.strategies.base import (
    BASE_ENCODER,
    TARGET_TEXTS,
    CandidatePool,
    Selection,
    Strategy,
)
from lm_eval_approx.strategies.nearest import (
    TEXTS,
    embed_pool_and_targets,
    max_cosines,
    mean_cosines,
    round_robin_info,
    round_robin_nearest,
    top_order,
)

ROUND_ROBIN = "round_robin"
AGGREGATES = (ROUND_ROBIN, "max", "mean")


@dataclass
class RdsOptions:
    """Options of rds."""

    aggregate: str = help_field(
        "how cosines to the target texts become picks: round_robin (targets take turns, each its nearest "
        "free document; RDS+'s single-task rule), max (highest max cosine) or mean (highest mean cosine)",
        ROUND_ROBIN, AGGREGATES,
    )

    def __post_init__(self) -> None:
        check_choice("rds.aggregate", self.aggregate, AGGREGATES)


class RdsStrategy(Strategy):
    name = "rds"
    description = "RDS+: nearest pool documents to the target texts in θ0's weighted-mean hidden states"
    requires = frozenset({TEXTS, TARGET_TEXTS, BASE_ENCODER})
    Options = RdsOptions

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        docs, targets = embed_pool_and_targets(pool.base_encoder, pool)  # type: ignore[arg-type]  # requires BASE_ENCODER
        aggregate = self.options.aggregate
        info = {"aggregate": aggregate, "embedding_dim": int(docs.shape[1])}
        if aggregate == ROUND_ROBIN:
            picks, scores, owners = round_robin_nearest(docs, targets, k)
            info.update(round_robin_info(owners, len(targets)))
        else:
            score = max_cosines(docs, targets) if aggregate == "max" else mean_cosines(docs, targets)
            picks = top_order(score, k)
            scores = score[picks]
            info["targets"] = len(targets)
        info["mean_cosine"] = float(np.mean(scores))
        return Selection(indices=picks, scores=scores, info=info)
