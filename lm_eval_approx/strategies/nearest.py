"""What the embedding baselines (``rds``, ``gen_knn``) share: checked encoder calls and nearest-neighbour picking.

Both embed the pool's texts and the pool's ``target_texts`` with an encoder the pipeline passes in
(``CandidatePool.base_encoder`` / ``sentence_encoder``), compare them by cosine similarity, and pick
pool documents near the targets:

- ``round_robin_nearest``: targets take turns in their given order; each takes its most similar
  pool document not picked yet (ties to the lowest position), cycling until k are picked. Every
  target gets ⌈k/T⌉ or ⌊k/T⌋ picks, so a target with many near copies cannot take the whole budget.
- ``max_cosines`` / ``mean_cosines``: one score per document, max_t or mean_t cos(x_i, y_t).

The full n × T similarity matrix is never held: cosines are computed for ``BLOCK_ENTRIES`` at a
time, and each target keeps only a ranked prefix of its nearest documents, recomputed twice as long
in the rare case that earlier picks used it up.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lm_eval_approx.errors import SelectionError
from lm_eval_approx.strategies.base import CandidatePool, Encoder

TEXTS = "texts"  # the pool field (a requirement name for ``Strategy.requires``)
BLOCK_ENTRIES = 1 << 24  # similarity entries (float32) computed at a time: 64 MiB
PREFIX_SLACK = 16  # ranked documents kept per target beyond its ⌈k/T⌉ share, for skipping taken ones


def target_texts(pool: CandidatePool) -> list[str]:
    """The pool's target texts, checked: a non-empty list of strings."""
    texts = pool.target_texts
    if texts is None or isinstance(texts, str) or not len(texts):
        raise SelectionError("target_texts must be a non-empty list of texts (θf's generations or the "
                             f"task's training texts), got {texts!r}")
    for pos, text in enumerate(texts):
        if not isinstance(text, str):
            raise SelectionError(f"target_texts must hold strings only, got a {type(text).__name__} at "
                                 f"position {pos}: {text!r}")
    return list(texts)


def embed(encoder: Encoder, texts: list[str], what: str) -> np.ndarray:
    """``encoder(texts)`` checked (one finite row per text) and L2-normalised to float32; an all-zero
    row stays zero, so its cosine with anything is 0."""
    out = np.asarray(encoder(list(texts)))
    if out.ndim != 2 or out.shape[0] != len(texts) or out.shape[1] == 0:
        raise SelectionError(f"the encoder returned an array of shape {out.shape} for {len(texts)} {what}: "
                             f"expected ({len(texts)}, d), one row of d ≥ 1 numbers per text")
    if not np.issubdtype(out.dtype, np.number) or np.iscomplexobj(out):
        raise SelectionError(f"the encoder returned {out.dtype} values for the {what}: expected real numbers")
    out = out.astype(np.float64)
    if not np.isfinite(out).all():
        raise SelectionError(f"the encoder returned NaN or inf values for the {what}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def embed_pool_and_targets(encoder: Encoder, pool: CandidatePool) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows of the pool's texts and of its target texts, in the same space."""
    targets = embed(encoder, target_texts(pool), "target texts")
    docs = embed(encoder, list(pool.texts), "pool texts")  # type: ignore[arg-type]  # requires TEXTS: Strategy.run checked it
    if docs.shape[1] != targets.shape[1]:
        raise SelectionError(f"the encoder gave {docs.shape[1]}-dimensional pool embeddings but "
                             f"{targets.shape[1]}-dimensional target embeddings: expected one dimension")
    return docs, targets


def top_order(scores: np.ndarray, depth: int) -> np.ndarray:
    """The ``depth`` positions of highest score, best first, ties to the lowest position."""
    if depth >= len(scores):
        return np.argsort(-scores, kind="stable")
    kth = np.partition(scores, len(scores) - depth)[len(scores) - depth]
    # Every position scoring ≥ the depth-th best, ascending, so a stable sort breaks ties by position.
    candidates = np.flatnonzero(scores >= kth)
    return candidates[np.argsort(-scores[candidates], kind="stable")][:depth]


def _target_blocks(docs: np.ndarray, targets: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first target, cosines [n, block] as float64) over consecutive blocks of targets."""
    width = max(1, BLOCK_ENTRIES // max(1, len(docs)))
    for lo in range(0, len(targets), width):
        yield lo, (docs @ targets[lo : lo + width].T).astype(np.float64)


def max_cosines(docs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """max_t cos(x_i, y_t) for every document."""
    best = np.full(len(docs), -np.inf)
    for _, sims in _target_blocks(docs, targets):
        np.maximum(best, sims.max(axis=1), out=best)
    return best


def mean_cosines(docs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """mean_t cos(x_i, y_t) for every document (accumulated per block, not from the mean target,
    so it is the same sum of cosines that ``max_cosines`` takes the max of)."""
    total = np.zeros(len(docs))
    for _, sims in _target_blocks(docs, targets):
        total += sims.sum(axis=1)
    return total / len(targets)


def round_robin_nearest(docs: np.ndarray, targets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k distinct documents picked by the round robin of the module docstring: (picks, the cosine of
    each pick to the target that took it, that target's position)."""
    n, num_targets = len(docs), len(targets)
    depth = min(n, -(-k // num_targets) + PREFIX_SLACK)
    ranked: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * num_targets
    cosines: list[np.ndarray] = [np.zeros(0)] * num_targets
    # Only targets that get a turn need a ranking: the first k when there are more targets than picks.
    active = min(num_targets, k)
    for lo, sims in _target_blocks(docs, targets[:active]):
        for col in range(sims.shape[1]):
            order = top_order(sims[:, col], depth)
            ranked[lo + col], cosines[lo + col] = order, sims[order, col]
    cursor = np.zeros(num_targets, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    picks, scores, owners = list[int](), list[float](), list[int]()
    while len(picks) < k:
        for t in range(active):
            if len(picks) == k:
                break
            while True:
                if cursor[t] == len(ranked[t]):
                    # Earlier picks used this target's prefix up: rank twice as deep and scan from
                    # the start again (taken documents are skipped, so nothing is picked twice).
                    sims = (docs @ targets[t]).astype(np.float64)
                    ranked[t] = top_order(sims, min(n, 2 * len(ranked[t])))
                    cosines[t] = sims[ranked[t]]
                    cursor[t] = 0
                i = int(ranked[t][cursor[t]])
                cursor[t] += 1
                if not taken[i]:
                    break
            taken[i] = True
            picks.append(i)
            scores.append(float(cosines[t][cursor[t] - 1]))
            owners.append(t)
    return np.asarray(picks, dtype=np.int64), np.asarray(scores), np.asarray(owners, dtype=np.int64)


def round_robin_info(owners: np.ndarray, num_targets: int) -> dict:
    """How the picks spread over the targets (for ``Selection.info``)."""
    counts = np.bincount(owners, minlength=num_targets)
    return {"targets": int(num_targets), "targets_with_picks": int((counts > 0).sum()),
            "max_picks_per_target": int(counts.max())}
