"""The approximation tasks: their prompt spec, their data loaders, and the folder of their lm-eval
task configs (the repository's ``tasks/``, installed as ``lm_eval_approx.tasks.configs``)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

CONFIGS_PACKAGE = "lm_eval_approx.tasks.configs"


def configs_folder() -> Path:
    """The folder of our lm-eval task YAML, which every TaskManager of ours includes."""
    return Path(str(files(CONFIGS_PACKAGE)))
