"""Known-benign output of the libraries underneath, hidden while a command runs (``-v`` shows it).

Each filter names one message exactly (its category or level, the module or logger that emits it,
and the start of its text) with the reason it is benign. Everything else passes through: a new or
changed message of these libraries shows up until it is judged here.
"""

from __future__ import annotations

import importlib.abc
import logging
import re
import sys
import warnings
from contextlib import contextmanager

# (category, emitting module, message start, reason)
WARNINGS = (
    (UserWarning, "peft.tuners.tuners_utils",
     "Model has `tie_word_embeddings=True` and a tied layer is part of the adapter",
     "LoRA on the head of a tied-embedding model is intended: adapters are saved as safetensors and never merged"),
    (FutureWarning, "transformers.modeling_utils", "`is_gradient_checkpointing` is deprecated",
     "peft reads the deprecated property while wrapping a model; nothing in our code or a user's can change it"),
)

# (logger, level, message text, reason)
LOG_RECORDS = (
    ("lm_eval.api.task", logging.WARNING, "Custom kwargs can be passed to `--metadata`",
     "a hint lm-eval logs (twice per task) whenever a task loads through custom_dataset, as every shipped "
     "approx_* task does; it reports no problem"),
)

# (tqdm description in transformers, reason)
PROGRESS_BARS = (
    ("Loading weights", "a bar per model load that finishes in seconds from local files and tells nothing"),
)

_TQDM_MODULE = "transformers.utils.logging"


class _DropRecords(logging.Filter):
    def __init__(self, level: int, text: str):
        super().__init__()
        self.level, self.text = level, text

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == self.level and self.text in record.getMessage())


def _hide_bars(previous):
    hidden = {desc for desc, _why in PROGRESS_BARS}

    def hook(factory, args, kwargs):
        if kwargs.get("desc") in hidden:
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    return hook


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``callback(module)`` once module ``name`` has been imported, so that a command that
    never loads transformers does not pay for importing it."""

    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            self.callback(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # wraps this loader instance's method
        return spec


@contextmanager
def quiet_libraries(verbose: bool = False):
    """Within the block, the filters above apply (none when ``verbose``); on leaving it, the warning
    filters, loggers and transformers' tqdm hook are as they were."""
    if verbose:
        yield
        return
    loggers = [(logging.getLogger(name), _DropRecords(level, text)) for name, level, text, _why in LOG_RECORDS]
    restore = []

    def install_hook(module) -> None:
        previous = module.set_tqdm_hook(None)
        module.set_tqdm_hook(_hide_bars(previous))
        restore.append(lambda: module.set_tqdm_hook(previous))

    finder = _AfterImport(_TQDM_MODULE, install_hook)
    with warnings.catch_warnings():
        for category, module, text, _why in WARNINGS:
            warnings.filterwarnings("ignore", message=re.escape(text), category=category,
                                    module=re.escape(module) + r"\Z")
        for logger, drop in loggers:
            logger.addFilter(drop)
        if _TQDM_MODULE in sys.modules:
            install_hook(sys.modules[_TQDM_MODULE])
        else:
            sys.meta_path.insert(0, finder)
        try:
            yield
        finally:
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            for undo in restore:
                undo()
            for logger, drop in loggers:
                logger.removeFilter(drop)
