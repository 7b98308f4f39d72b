"""The parameter sets that gradients and the target θ0 − θf are taken over: one vocabulary for the
pipeline config, the feature builder and the model-pair checks.

``head`` is the output head; ``head_labels`` the C head rows of the label tokens (classification
only: exact gradients, see features/label_head.py); ``changed`` every linear layer where θ0 and θf
differ; any other value is a comma-separated list of linear-layer names. This module imports
nothing heavy, so ``models.pairs`` (no torch at import) and the configs can share it.
"""

from __future__ import annotations

from lm_eval_approx.errors import ConfigError

HEAD, HEAD_LABELS, CHANGED = "head", "head_labels", "changed"
PARAM_SETS = (HEAD, HEAD_LABELS, CHANGED)
# The parameter sets whose only layer is the output head.
HEAD_SETS = (HEAD, HEAD_LABELS)
PARAMS_ACCEPTED = f"{', '.join(PARAM_SETS)} or comma-separated linear-layer names"


def check_params(value: object, field: str = "params") -> str:
    """``value`` when it names a parameter set or at least one layer; else ConfigError."""
    if not isinstance(value, str) or not value.strip(" ,"):
        raise ConfigError(field, value, PARAMS_ACCEPTED)
    return value


def explicit_layers(params: str) -> list[str] | None:
    """The layer names of an explicit list, or None for a named set (head, head_labels, changed)."""
    if params in PARAM_SETS:
        return None
    return [name.strip() for name in params.split(",") if name.strip()]
