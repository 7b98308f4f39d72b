"""Projected per-example gradients and the projected target, as the feature store hands them to strategies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lm_eval_approx.errors import SelectionError


@dataclass
class GradientFeatures:
    """Projected per-example gradients g_i (rows of ``matrix``) and the projected target
    t = P(θ0 − θf), both taken at one set of parameters (``alpha`` = position between θ0 and θf).

    ``factors``, when present, is the low-rank form of head features: ``(A, B)`` with shapes
    (N, r, d1) and (N, r, d2) and ``matrix[i] == sum_r outer(A[i, r], B[i, r]).ravel()``.
    """

    matrix: np.ndarray
    target: np.ndarray
    alpha: float = 1.0
    factors: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2:
            raise SelectionError(f"features must be an N×d matrix, got shape {self.matrix.shape}")
        if self.target.shape != (self.matrix.shape[1],):
            raise SelectionError(
                f"target has shape {self.target.shape}; features have d={self.matrix.shape[1]}"
            )
