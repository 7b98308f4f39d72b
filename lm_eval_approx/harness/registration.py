"""This package's lm-eval model types, registered into lm-eval's model registry.

``approx_hf`` is ``harness/fast_hflm.py:FastHFLM`` (HFLM with one forward per distinct context);
``approx`` is ``harness/approx_model.py:ApproxLM`` (selection and retraining on construction). Both
are lazy ``"module:Class"`` targets, imported when lm-eval first asks for them. pyproject.toml
declares the same targets as ``lm_eval.models`` entry points (and the task folder as an
``lm_eval.tasks`` one), which lm-eval versions with entry-point plugins discover by themselves.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint

from lm_eval_approx.errors import ApproxError

FAST_HF_MODEL = "approx_hf"
FAST_HF_TARGET = "lm_eval_approx.harness.fast_hflm:FastHFLM"

APPROX_MODEL = "approx"
APPROX_MODULE = "lm_eval_approx.harness.approx_model"
APPROX_TARGET = f"{APPROX_MODULE}:ApproxLM"

# The entry-point groups lm-eval's plugin discovery reads, and our task folder's entry.
MODELS_GROUP, TASKS_GROUP = "lm_eval.models", "lm_eval.tasks"
TASKS_ENTRY = "approx"


class ModelRegistrationError(ApproxError, ValueError):
    """An lm-eval model type of ours is already registered to something else."""


def _target_name(target: object) -> str:
    """``"module:Class"`` of a registry entry: a lazy string, an installed entry point (lm-eval
    versions that read the ``lm_eval.models`` entry points of pyproject.toml register ours as such)
    or an imported class."""
    if isinstance(target, EntryPoint):
        target = target.value
    if isinstance(target, str):
        return target.replace(" ", "")
    return f"{getattr(target, '__module__', '')}:{getattr(target, '__qualname__', target)}"


def _register(alias: str, target: str) -> None:
    """Register ``alias`` as the lazy ``target``; a no-op when it already points there."""
    from lm_eval.api.registry import model_registry

    current = dict(model_registry.items()).get(alias)
    if current is None:
        model_registry.register(alias, target=target)
        return
    if _target_name(current) != target:
        raise ModelRegistrationError(
            f"lm-eval model type {alias!r} is already registered to {_target_name(current)!r}; "
            f"lm-eval-approx needs it for {target!r}. Uninstall or rename the other plugin."
        )


def register_models() -> list[str]:
    """Register our model types with lm-eval (idempotent); return the names now registered.

    lm-eval fills its registry with its built-ins only while the registry is empty, so
    ``lm_eval.models`` is imported first; otherwise registering ours would hide every built-in.
    """
    import lm_eval.models  # noqa: F401  (registers lm-eval's built-in model types)

    _register(FAST_HF_MODEL, FAST_HF_TARGET)
    _register(APPROX_MODEL, APPROX_TARGET)
    return [FAST_HF_MODEL, APPROX_MODEL]
