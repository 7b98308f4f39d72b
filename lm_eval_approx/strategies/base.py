"""What a selection strategy receives, what it returns, and the checks every strategy shares.

A strategy sees a ``CandidatePool`` (ids, texts, pseudo-labels, losses and gradient features of
the candidate corpus) and returns a ``Selection``: k distinct positions into the pool in pick
order, deterministic for a seed. ``Strategy.run`` validates inputs and output around the
subclass's ``_select``, so every strategy, built-in or third-party, fails the same way on bad input.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from lm_eval_approx.config_checks import is_int
from lm_eval_approx.errors import ConfigError, SelectionError
from lm_eval_approx.features.gradient_features import GradientFeatures

FEATURES = "features"
LABELS = "labels"
LOSS_FINETUNED = "loss_finetuned"
LOSS_BASE = "loss_base"
TARGET_TEXTS = "target_texts"
BASE_ENCODER = "base_encoder"
SENTENCE_ENCODER = "sentence_encoder"

# texts -> (len(texts), d) float32 embeddings, one row per text.
Encoder = Callable[[list[str]], np.ndarray]


@dataclass
class CandidatePool:
    """The candidate corpus as strategies see it. Everything but ``ids`` is optional; a strategy
    names what it needs in ``requires`` and gets a clear error when it is missing."""

    ids: list[str]
    texts: list[str] | None = None
    labels: np.ndarray | None = None
    num_classes: int | None = None
    loss_finetuned: np.ndarray | None = None
    loss_base: np.ndarray | None = None
    features: list[GradientFeatures] = field(default_factory=list)
    sources: list[str] | None = None
    # What a target-matching baseline aims at: θf's generations under the ``weights`` condition,
    # unlabelled texts of the task's training split under ``task texts``.
    target_texts: list[str] | None = None
    # θ0's position-weighted mean of last hidden states (RDS+), and the shipped sentence model
    # (all-MiniLM-L6-v2, L2-normalised); the pipeline passes encoders so strategies stay model-free.
    base_encoder: Encoder | None = None
    sentence_encoder: Encoder | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def has(self, what: str) -> bool:
        if what == FEATURES:
            return bool(self.features)
        return getattr(self, what) is not None

    @property
    def final_features(self) -> GradientFeatures:
        """Features at θf (the largest alpha)."""
        return max(self.features, key=lambda f: f.alpha)


@dataclass
class Selection:
    """k distinct positions into the pool, in pick order, with optional per-pick score and weight."""

    indices: np.ndarray
    scores: np.ndarray | None = None
    weights: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class NoOptions:
    """A strategy without options."""


class Strategy(ABC):
    """Base class of every selection strategy. Subclasses set ``name``, ``description``,
    ``requires``, optionally an ``Options`` dataclass, and implement ``_select``."""

    name: ClassVar[str]
    description: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset()
    Options: ClassVar[type] = NoOptions
    allows_fewer: ClassVar[bool] = False

    def __init__(self, **options: Any):
        known = {f.name for f in dataclasses.fields(self.Options)}
        for key in options:
            if key not in known:
                accepted = ", ".join(sorted(known)) or "no options"
                raise ConfigError(f"{self.name}.{key}", options[key], f"accepted options: {accepted}")
        self.options = self.Options(**options)

    def run(self, pool: CandidatePool, k: int, seed: int = 0) -> Selection:
        """Validate, select, validate the result. The one entry point callers use."""
        self._check_inputs(pool, k)
        if k == 0:
            return Selection(indices=np.zeros(0, dtype=np.int64), scores=np.zeros(0))
        selection = self._select(pool, k, seed)
        self._check_output(pool, k, selection)
        return selection

    @abstractmethod
    def _select(self, pool: CandidatePool, k: int, seed: int) -> Selection:
        """Pick k positions of ``pool`` (inputs already validated)."""

    def _check_inputs(self, pool: CandidatePool, k: int) -> None:
        if not is_int(k, (int, np.integer)):
            raise SelectionError(f"k must be an integer, got {k!r}")
        if k < 0 or k > len(pool):
            raise SelectionError(
                f"k={k} is out of range: the candidate pool has {len(pool)} documents "
                f"(accepted: 0 ≤ k ≤ {len(pool)})"
            )
        for what in sorted(self.requires):
            if not pool.has(what):
                raise SelectionError(
                    f"strategy {self.name!r} needs {what!r}, which this candidate pool lacks"
                )
        if FEATURES in self.requires:
            for feats in pool.features:
                if feats.matrix.shape[0] != len(pool):
                    raise SelectionError(
                        f"features have {feats.matrix.shape[0]} rows for {len(pool)} candidates"
                    )
                if not np.isfinite(feats.target).all():
                    raise SelectionError("the projected target θ0 − θf contains NaN or inf")
                if not np.any(feats.target):
                    raise SelectionError(
                        "the projected target θ0 − θf is all zeros: θ0 and θf do not differ on "
                        "these parameters (choose another parameter set, e.g. params=changed)"
                    )
                if not _all_finite(feats.matrix):
                    raise SelectionError("gradient features contain NaN or inf values")
        for what in (LOSS_FINETUNED, LOSS_BASE):
            if what in self.requires and not np.isfinite(getattr(pool, what)).all():
                raise SelectionError(f"{what} contains NaN or inf values")

    def _check_output(self, pool: CandidatePool, k: int, selection: Selection) -> None:
        idx = np.asarray(selection.indices)
        if idx.ndim != 1 or (len(idx) != k and not (self.allows_fewer and len(idx) < k)):
            raise SelectionError(f"strategy {self.name!r} returned {len(idx)} picks for k={k}")
        if len(np.unique(idx)) != len(idx) or (len(idx) and (idx.min() < 0 or idx.max() >= len(pool))):
            raise SelectionError(f"strategy {self.name!r} returned repeated or out-of-range picks")
        selection.indices = idx.astype(np.int64)


def _all_finite(matrix: np.ndarray, block: int = 65536) -> bool:
    """Finite check in blocks, so a memory-mapped store is never loaded whole."""
    return all(np.isfinite(matrix[i : i + block]).all() for i in range(0, matrix.shape[0], block))
