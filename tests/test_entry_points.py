"""lm-eval compatibility: the pinned lm-eval range, and the entry points that lm-eval versions with
plugin discovery read (``lm_eval.models``: module:Class; ``lm_eval.tasks``: a package whose folder
holds task YAML), as installed in this environment's package metadata.

The metadata is what ``pip install -e .`` wrote; after an edit of pyproject.toml's entry points,
reinstall (``pip install --no-deps -e .``) before these tests can see it.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

from lm_eval_approx.harness.registration import (
    APPROX_MODEL,
    APPROX_TARGET,
    FAST_HF_MODEL,
    FAST_HF_TARGET,
    MODELS_GROUP,
    TASKS_ENTRY,
    TASKS_GROUP,
)
from lm_eval_approx.tasks import CONFIGS_PACKAGE, configs_folder

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "lm-eval-approx"
LM_EVAL_PIN = "lm-eval[hf]>=0.4.10,<0.5"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _ours(group: str) -> dict[str, md.EntryPoint]:
    found = {ep.name: ep for ep in md.entry_points(group=group)
             if ep.dist is not None and re.sub(r"[-_.]+", "-", ep.dist.name).lower() == DISTRIBUTION}
    declared = _pyproject()["project"]["entry-points"][group]
    if {n: ep.value for n, ep in found.items()} != declared:
        pytest.fail(f"installed {group} entry points {found} differ from pyproject.toml's {declared}: "
                    "reinstall with `pip install --no-deps -e .`")
    return found


def test_lm_eval_is_pinned_below_0_5_and_the_installed_one_fits():
    from packaging.requirements import Requirement

    dependencies = _pyproject()["project"]["dependencies"]
    assert LM_EVAL_PIN in dependencies
    requirement = Requirement(LM_EVAL_PIN)
    assert requirement.specifier.contains(md.version("lm_eval"))
    assert not requirement.specifier.contains("0.5.0") and not requirement.specifier.contains("0.4.9")


def test_model_entry_points_load_our_lm_eval_models():
    from lm_eval.api.model import LM

    models = _ours(MODELS_GROUP)
    assert {name: ep.value for name, ep in models.items()} == {APPROX_MODEL: APPROX_TARGET, FAST_HF_MODEL: FAST_HF_TARGET}
    for ep in models.values():
        cls = ep.load()
        assert issubclass(cls, LM) and f"{cls.__module__}:{cls.__qualname__}" == ep.value


def test_task_entry_point_resolves_to_our_task_folder_and_its_tasks_load():
    """lm-eval resolves a ``lm_eval.tasks`` entry point to the folder of the package it names
    (``module[:attr]``: the module part) and scans it for YAML, as it does its own task tree."""
    from lm_eval.tasks import TaskManager

    tasks = _ours(TASKS_GROUP)
    assert set(tasks) == {TASKS_ENTRY} and tasks[TASKS_ENTRY].value == CONFIGS_PACKAGE
    spec = importlib.util.find_spec(tasks[TASKS_ENTRY].value.split(":", 1)[0])
    folder = Path(list(spec.submodule_search_locations)[0]).resolve()
    assert folder == configs_folder().resolve() and (folder / "approx_agnews.yaml").is_file()
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    assert {"approx_agnews", "approx_msmarco"} <= set(manager.all_tasks)


def test_registering_over_our_own_entry_point_placeholder_is_a_no_op():
    """An lm-eval that discovers our entry points registers them as lazy placeholders before we
    register the same targets: that is the same model type, not another plugin's."""
    from lm_eval.api.registry import model_registry

    from lm_eval_approx.harness import registration

    alias = "approx_entry_point_test"
    model_registry.register(alias, target=md.EntryPoint(alias, APPROX_TARGET, MODELS_GROUP))
    try:
        registration._register(alias, APPROX_TARGET)
        with pytest.raises(registration.ModelRegistrationError, match="another plugin|already registered"):
            registration._register(alias, FAST_HF_TARGET)
    finally:
        model_registry._objs.pop(alias)
