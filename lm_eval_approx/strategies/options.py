"""Options shared by the gradient strategies (dataclasses with help text, validated on creation)."""

from __future__ import annotations

from dataclasses import dataclass

from lm_eval_approx.config_checks import check_choice, check_int, check_number, help_field

COSINE_RANGE = (-1.0, 1.0)


@dataclass
class GradientOptions:
    """Options of every gradient strategy."""

    min_cosine: float | None = help_field(
        "stop before a pick whose score (cosine) is below this; fewer than k picks are then returned and "
        "reported in the selection info", None,
    )

    def __post_init__(self) -> None:
        check_number(f"{type(self).__name__}.min_cosine", self.min_cosine, *COSINE_RANGE, optional=True)


@dataclass
class BatchedOptions(GradientOptions):
    """Options of select_batched."""

    batch_size: int = help_field("reset the running sum s every this many picks (the training batch size)", 8)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("select_batched.batch_size", self.batch_size, minimum=1)


QUOTA_SHARES = ("uniform", "pool")


@dataclass
class QuotaOptions(GradientOptions):
    """Options of select_quota."""

    shares: str = help_field(
        "per-pseudo-label quota of the k picks: uniform (k/C each) or pool (θf's label shares of the pool)",
        "uniform",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("select_quota.shares", self.shares, QUOTA_SHARES)


@dataclass
class LikelyOptions(GradientOptions):
    """Options of select_likely."""

    keep: float = help_field("share of the pool, most likely under θf (lowest θf loss), SELECT may pick from", 0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("select_likely.keep", self.keep, 0.0, 1.0, low_open=True)
