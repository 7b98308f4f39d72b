"""Orthogonal matching pursuit toward the target with non-negative weights (select_omp).

SELECT adds examples with weight 1 each; OMP instead seeks weights w ≥ 0 with Σ_{j∈S} w_j g_j ≈ t:

    r ← t;  repeat k times:  j = argmax_{i∉S} ⟨g_i, r⟩ / ‖g_i‖   (stop if ≤ 0: no atom helps)
                             S ← S ∪ {j};  w = argmin_{w ≥ 0} ‖G_Sᵀ w − t‖ (NNLS);  r = t − G_Sᵀ w

(Pati et al. 1993, with the NNLS refit of non-negative OMP, Bruckstein et al. 2008). Weights say
how often training should repeat each example; an atom whose refit weight falls to zero is
dropped from the result. Correlations are exact float64 dots, one blocked pass per pick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from lm_eval_approx.errors import SelectionError
from lm_eval_approx.features.gradient_features import GradientFeatures

BLOCK_ROWS = 1024  # rows converted to float64 at a time
NNLS_MAXITER_PER_ATOM = 50  # scipy's iteration cap scales with the number of atoms


@dataclass
class OmpResult:
    """Picks in order, their final non-negative weights (> 0), their cosine with the residual at
    pick time, and whether the run stopped before k picks."""

    indices: np.ndarray
    weights: np.ndarray
    scores: np.ndarray
    stopped_early: bool = False
    dropped: int = 0
    residual_norm: float = 0.0


def _correlations(matrix: np.ndarray, r: np.ndarray, block_rows: int) -> np.ndarray:
    out = np.empty(matrix.shape[0])
    for lo in range(0, matrix.shape[0], block_rows):
        out[lo : lo + block_rows] = np.asarray(matrix[lo : lo + block_rows], dtype=np.float64) @ r
    return out


def select_omp(features: GradientFeatures, k: int, *, min_cosine: float | None = None,
               block_rows: int = BLOCK_ROWS) -> OmpResult:
    """Up to k picks of non-negative OMP toward ``features.target``; ties to the lowest id."""
    matrix = features.matrix
    n_rows = matrix.shape[0]
    if not 0 <= k <= n_rows:
        raise SelectionError(f"k={k} is out of range for {n_rows} candidates (accepted: 0 ≤ k ≤ {n_rows})")
    target = np.asarray(features.target, dtype=np.float64)
    norms = np.empty(n_rows)
    for lo in range(0, n_rows, block_rows):
        block = np.asarray(matrix[lo : lo + block_rows], dtype=np.float64)
        norms[lo : lo + len(block)] = np.sqrt((block * block).sum(axis=1))
    taken = np.zeros(n_rows, dtype=bool)
    picks: list[int] = []
    scores: list[float] = []
    atoms = np.zeros((0, matrix.shape[1]))
    weights = np.zeros(0)
    residual = target.copy()
    stopped = False
    for _ in range(k):
        corr = _correlations(matrix, residual, block_rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            normed = np.where(norms > 0, corr / np.where(norms > 0, norms, 1.0), 0.0)
        normed[taken] = -np.inf
        j = int(np.argmax(normed))
        rnorm = float(np.linalg.norm(residual))
        cosine = normed[j] / rnorm if rnorm > 0 else 0.0
        if not normed[j] > 0 or (min_cosine is not None and cosine < min_cosine):
            stopped = True
            break
        picks.append(j)
        scores.append(float(cosine))
        taken[j] = True
        atoms = np.vstack([atoms, np.asarray(matrix[j], dtype=np.float64)])
        weights, _ = nnls(atoms.T, target, maxiter=NNLS_MAXITER_PER_ATOM * len(picks))
        residual = target - atoms.T @ weights
    keep = weights > 0
    return OmpResult(
        indices=np.asarray(picks, dtype=np.int64)[keep],
        weights=weights[keep],
        scores=np.asarray(scores)[keep],
        stopped_early=stopped,
        dropped=int((~keep).sum()),
        residual_norm=float(np.linalg.norm(residual)),
    )
