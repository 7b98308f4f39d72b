"""Glue to lm-eval's own CLI: our task folders on every TaskManager, model aliases resolved,
our model types registered; everything else is lm-eval unchanged."""

from __future__ import annotations

import json
import logging
from functools import lru_cache

from lm_eval_approx.harness.registration import register_models
from lm_eval_approx.harness.tied_head import install as install_tied_head_fix
from lm_eval_approx.models.loading import ALIASES, resolve_model
from lm_eval_approx.plugins.registry import task_folders

logger = logging.getLogger(__name__)

# model_args keys whose values name a model or adapter and so may be an alias or a .gguf file.
MODEL_ARG_KEYS = ("pretrained", "peft", "tokenizer", "base", "finetuned", "expert")

INCLUDE_FLAG = "--include_path"

_installed = False


def _as_list(include_path) -> list:
    if include_path is None:
        return []
    return list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]


def task_manager(include_path=None, **kwargs):
    """A TaskManager that sees our task folders plus any ``include_path`` of the user's."""
    from lm_eval.tasks import TaskManager

    paths = [*map(str, task_folders()), *_as_list(include_path)]
    return TaskManager(include_path=paths, **kwargs)


def shared_task_manager(include_path=None):
    """One lm-eval TaskManager per process and set of task folders (ours, then ``include_path``: a
    leaderboard config's), with our model types registered: indexing every lm-eval task takes many
    seconds, but a folder included later must be seen."""
    return _shared_task_manager(tuple(map(str, task_folders())), tuple(map(str, _as_list(include_path))))


@lru_cache(maxsize=4)
def _shared_task_manager(folders: tuple[str, ...], include_path: tuple[str, ...] = ()):
    prepare_lm_eval()
    return task_manager(list(include_path))


def install_task_paths() -> None:
    """Make every TaskManager lm-eval builds from now on include our task folders."""
    global _installed
    if _installed:
        return
    import lm_eval.tasks

    base = lm_eval.tasks.TaskManager

    class ApproxTaskManager(base):  # type: ignore[valid-type,misc]  # a class held in a variable
        """lm-eval's TaskManager with lm-eval-approx's task folders always included (those
        registered when it is built: the registry may gain a plugin after installation)."""

        def __init__(self, *args, include_path=None, **kwargs):
            given = [str(p) for p in _as_list(include_path)]
            extra = [str(p) for p in task_folders() if str(p) not in given]
            super().__init__(*args, include_path=[*extra, *_as_list(include_path)], **kwargs)

    lm_eval.tasks.TaskManager = ApproxTaskManager
    _installed = True


def _resolve_value(value: str) -> str:
    if value in ALIASES or str(value).endswith(".gguf"):
        return resolve_model(value)
    return value


def resolve_model_args(model_args: str) -> str:
    """Rewrite model aliases and .gguf files in a ``--model_args`` string to local folders."""
    text = model_args.strip()
    if text.startswith("{"):
        data = json.loads(text)
        for key in MODEL_ARG_KEYS:
            if isinstance(data.get(key), str):
                data[key] = _resolve_value(data[key])
        return json.dumps(data)
    parts = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if sep and key.strip() in MODEL_ARG_KEYS:
            value = _resolve_value(value.strip())
        parts.append(f"{key}{sep}{value}")
    return ",".join(parts)


def rewrite_argv(argv: list[str]) -> list[str]:
    """Resolve aliases inside ``--model_args`` wherever it appears in an lm-eval argument list."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--model_args", "-a") and i + 1 < len(argv):
            out += [arg, resolve_model_args(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--model_args="):
            arg = "--model_args=" + resolve_model_args(arg.split("=", 1)[1])
        out.append(arg)
        i += 1
    return out


def include_paths(argv: list[str]) -> list[str]:
    """The values of lm-eval's ``--include_path`` in an argument list (both spellings)."""
    found = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == INCLUDE_FLAG]
    return found + [arg.split("=", 1)[1] for arg in argv if arg.startswith(INCLUDE_FLAG + "=")]


def prepare_lm_eval() -> None:
    """Everything lm-eval needs to see our plugins: task folders and model types."""
    install_task_paths()
    install_tied_head_fix()
    register_models()

