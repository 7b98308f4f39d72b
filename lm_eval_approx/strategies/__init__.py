"""Selection strategies: the shared interface and the built-in strategies."""

from lm_eval_approx.features.gradient_features import GradientFeatures
from lm_eval_approx.strategies.base import CandidatePool, Selection, Strategy

__all__ = ["CandidatePool", "GradientFeatures", "Selection", "Strategy"]
