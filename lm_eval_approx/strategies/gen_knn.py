"""``gen_knn``: generate, then retrieve: the pool documents nearest to the target texts in a sentence model's space.

The target texts are what θf writes when sampled (or the task's own training texts); each is a
query. Pool texts and targets are embedded with the shipped sentence model (``pool.sentence_encoder``,
all-MiniLM-L6-v2, L2-normalised) and the targets take turns, in order: each takes its most similar
(cosine) pool document not picked yet, cycling until k are picked, ties to the lowest pool
position (``strategies/nearest.py``). The round robin gives every target an equal share of the
budget, so a few generations with many near copies in the pool cannot take it all.

``Selection.scores`` holds each pick's cosine to the target that took it.
"""

from __future__ import annotations

import numpy as np

from lm_eval_approx.strategies.base import (
    SENTENCE_ENCODER,
    TARGET_TEXTS,
    CandidatePool,
    Selection,
    Strategy,
)
from lm_eval_approx.strategies.nearest import (
    TEXTS,
    embed_pool_and_targets,
    round_robin_info,
    round_robin_nearest,
)


class GenKnnStrategy(Strategy):
    name = "gen_knn"
    description = "round robin over the target texts, each taking its nearest free document (sentence model)"
    requires = frozenset({TEXTS, TARGET_TEXTS, SENTENCE_ENCODER})

    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        docs, targets = embed_pool_and_targets(pool.sentence_encoder, pool)  # type: ignore[arg-type]  # requires SENTENCE_ENCODER
        picks, scores, owners = round_robin_nearest(docs, targets, k)
        info = {"embedding_dim": int(docs.shape[1]), "mean_cosine": float(np.mean(scores))}
        info.update(round_robin_info(owners, len(targets)))
        return Selection(indices=picks, scores=scores, info=info)
