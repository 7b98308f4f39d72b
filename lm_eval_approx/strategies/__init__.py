"""Selection strategies: the shared interface and the built-in strategies."""

from lm_eval_approx.strategies.base import CandidatePool, Selection, Strategy
from lm_eval_approx.features.gradient_features import GradientFeatures

__all__ = ["CandidatePool", "GradientFeatures", "Selection", "Strategy"]
