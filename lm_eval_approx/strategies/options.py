"""Options shared by the gradient strategies (dataclasses with help text, validated on creation)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lm_eval_approx.errors import ConfigError

COSINE_RANGE = (-1.0, 1.0)


def check_min_cosine(value: float | None, owner: str) -> None:
    """``min_cosine`` must be None or a finite number in [−1, 1]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not COSINE_RANGE[0] <= value <= COSINE_RANGE[1]:
        raise ConfigError(f"{owner}.min_cosine", value, "a number in [-1, 1] or None")


@dataclass
class GradientOptions:
    """Options of every gradient strategy."""

    min_cosine: float | None = field(
        default=None,
        metadata={"help": "stop before a pick whose score (cosine) is below this; fewer than k picks "
                          "are then returned and reported in the selection info"},
    )

    def __post_init__(self) -> None:
        check_min_cosine(self.min_cosine, type(self).__name__)


@dataclass
class BatchedOptions(GradientOptions):
    """Options of select_batched."""

    batch_size: int = field(
        default=8,
        metadata={"help": "reset the running sum s every this many picks (the training batch size)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("select_batched.batch_size", self.batch_size, "a positive integer")
