"""Selection strategies: the shared interface and the built-in strategies."""

from .base import CandidatePool, GradientFeatures, Selection, Strategy

__all__ = ["CandidatePool", "GradientFeatures", "Selection", "Strategy"]
