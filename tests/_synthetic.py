"""Synthetic candidate pools for the strategy tests: features, labels and losses from numpy."""

from __future__ import annotations

import hashlib

import numpy as np

from lm_eval_approx.strategies.base import CandidatePool
from lm_eval_approx.features.gradient_features import GradientFeatures

NUM_CLASSES = 4
NUM_TARGETS = 5


def hashed_encoder(texts: list[str], dim: int = 8) -> np.ndarray:
    """A fake text encoder: a standard normal vector seeded by the text's sha256 (equal texts, equal rows)."""
    seeds = (int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "big") for t in texts)
    rows = [np.random.default_rng(s).standard_normal(dim) for s in seeds]
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), dim)


def make_pool(n: int = 60, d: int = 16, seed: int = 0, checkpoints: int = 1, labels=None,
              matrix=None, target=None) -> CandidatePool:
    """A pool with every field a built-in strategy may require."""
    rng = np.random.default_rng(seed)
    feats = []
    for m in range(checkpoints):
        mat = matrix if matrix is not None else rng.standard_normal((n, d)).astype(np.float16)
        tgt = target if target is not None else rng.standard_normal(mat.shape[1]).astype(np.float32)
        feats.append(GradientFeatures(mat, tgt, alpha=(m + 1) / checkpoints))
    n = feats[0].matrix.shape[0]
    return CandidatePool(
        ids=[f"doc:{i}" for i in range(n)],
        texts=[f"text number {i}" for i in range(n)],
        labels=np.asarray(labels if labels is not None else rng.integers(0, NUM_CLASSES, n), dtype=np.int64),
        num_classes=NUM_CLASSES,
        loss_finetuned=rng.random(n),
        loss_base=rng.random(n) + 0.5,
        features=feats,
        sources=["a" if i % 3 else "b" for i in range(n)],
        target_texts=[f"target text {j}" for j in range(NUM_TARGETS)],
        base_encoder=hashed_encoder,
        sentence_encoder=hashed_encoder,
    )


def direct_select(matrix: np.ndarray, target: np.ndarray, k: int, batch_size: int | None = None,
                  views: list | None = None) -> list[int]:
    """The definition: k times argmax_{i∉S} mean_m cos(s_m + g_i, t_m), from scratch in float64."""
    views = views or [(matrix, target)]
    views = [(np.asarray(g, dtype=np.float64), np.asarray(t, dtype=np.float64)) for g, t in views]
    sums = [np.zeros(g.shape[1]) for g, _ in views]
    taken = np.zeros(views[0][0].shape[0], dtype=bool)
    picks = []
    for step in range(k):
        if batch_size and step and step % batch_size == 0:
            sums = [np.zeros_like(s) for s in sums]
        total = np.zeros(len(taken))
        for (g, t), s in zip(views, sums):
            v = g + s
            dots = (v * t).sum(axis=1)
            norms = np.sqrt((v * v).sum(axis=1)) * np.sqrt((t * t).sum())
            total += np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
        total /= len(views)
        total[taken] = -np.inf
        j = int(np.argmax(total))
        picks.append(j)
        taken[j] = True
        sums = [s + g[j] for (g, _), s in zip(views, sums)]
    return picks
