"""Approximation task specs: how a candidate text becomes a model input of the target task.

Every target is an lm-eval task, found by name and rendered by its own functions
(``tasks/lm_eval_spec.py``), the shipped ``approx_*`` tasks of ``tasks/*.yaml`` included, so
pseudo-labelling, gradient features, training and scoring all render exactly the text lm-eval
scores. ``TaskSpec`` is the same interface written in Python, for programs and tests that need a
task without lm-eval or data (a template string, constant choices, a word limit).
"""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFICATION = "classification"
LANGUAGE_MODELLING = "lm"


@dataclass(frozen=True)
class TaskSpec:
    """How documents of one task become model inputs.

    ``classification``: context = template.format(text=...), continuation = delimiter + choice;
    the loss is on the continuation tokens only. ``lm``: the whole text is the target.
    """

    name: str
    kind: str
    template: str = "{text}"
    choices: tuple[str, ...] = ()
    target_delimiter: str = " "
    max_words: int | None = None
    corpus: str = ""
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.choices)

    def clip(self, text: str) -> str:
        """The document text as the task sees it: whitespace-normalised, at most max_words words."""
        words = str(text).split()
        if self.max_words is not None:
            words = words[: self.max_words]
        return " ".join(words)

    def context(self, text: str) -> str:
        """The prompt of a document (classification) or its full text (language modelling)."""
        return self.template.format(text=self.clip(text))

    def continuations(self) -> list[str]:
        """The scored continuation of each label, in label order (delimiter included)."""
        return [self.target_delimiter + choice for choice in self.choices]

    def label_name(self, label: int) -> str:
        return self.choices[label] if 0 <= label < len(self.choices) else str(label)


# The tasks shipped in tasks/*.yaml were rendered by Python specs before any lm-eval task could be
# a target, and cache keys recorded them by name. Their YAML now renders the same strings (the
# oracle is tests/test_task_specs.py); while a task's prompt identity is the one pinned here, its key
# stays the old one, so existing caches and results/cpu stay valid. approx_msmarco_last renders
# the same language-modelling examples as approx_msmarco (the whole passage) and shared its key.
LEGACY_KEYS: dict[tuple[str, str], str] = {
    ("approx_agnews", "57ff6a8c4570f56b"): "approx_agnews",
    ("approx_msmarco", "2d63536b4926120c"): "approx_msmarco",
    ("approx_msmarco_last", "438d1e7cec95817d"): "approx_msmarco",
}

# How a language-modelling text longer than a stage's max_length becomes model inputs: HFLM's
# rolling windows (features/encoding.py). Until 2026-12 such texts were cut at max_length, so every
# key of a language-modelling task records the rule and nothing computed under the cut is reused.
LM_TEXT_RULE = "rolling-windows"


def task_key(spec) -> str:
    """What a cache key records of a task: ``name@prompt identity`` for a task rendered by lm-eval,
    so editing its YAML recomputes everything that depends on its prompt; a shipped task whose
    prompt is unchanged keeps the name it was keyed by (``LEGACY_KEYS``); an in-code ``TaskSpec``
    is its name. A language-modelling task's key adds ``LM_TEXT_RULE``."""
    identity = getattr(spec, "prompt_identity", None)
    if identity is None:
        key = spec.name
    else:
        value = identity()
        key = LEGACY_KEYS.get((spec.name, value), f"{spec.name}@{value}")
    return key if spec.kind == CLASSIFICATION else f"{key}+{LM_TEXT_RULE}"


def get_task_spec(name: str, include_path=None, text_field: str | None = None):
    """The spec of an approximation task by lm-eval task name: any lm-eval task in the registered
    task folders (ours: ``approx_agnews``, ``approx_msmarco``, ...), ``include_path`` or lm-eval's own
    tasks, rendered by the task itself (``tasks/lm_eval_spec.py``; a named error when it cannot be
    approximated or its name is unknown)."""
    from lm_eval_approx.tasks.lm_eval_tasks import (
        UnknownTaskError,
        builtin_task_names,
        lm_eval_task_spec,
        local_task_names,
    )

    spec = lm_eval_task_spec(name, include_path, text_field)
    if spec is not None:
        return spec
    listed = sorted(local_task_names(include_path)[0])
    raise UnknownTaskError(name, listed, sorted(set(builtin_task_names()) - set(listed)))
