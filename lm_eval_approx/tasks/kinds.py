"""What an approximation task is to the pipeline: its kind, the interface of its spec, and what a
cache key records of it.

A spec turns a raw candidate text into the example the target task scores. Every target is an
lm-eval task, so every spec the pipeline builds is an ``LmEvalTaskSpec`` (``tasks/lm_eval_spec.py``,
found by ``tasks/lm_eval_tasks.get_task_spec``); ``TemplateSpec`` (``tasks/template_spec.py``)
writes the same interface in Python for programs and tests without lm-eval or data. Code that
renders, labels, featurises or trains annotates ``TaskSpec`` and uses nothing beyond it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from lm_eval_approx.cache.keys import CACHE_SCHEMA, TASK_KIND, keyed_name

# ``classification``: context = prompt, one continuation per label, the loss on the continuation
# tokens only. ``lm``: the whole rendered text is the target.
CLASSIFICATION = "classification"
LANGUAGE_MODELLING = "lm"


@runtime_checkable
class TaskSpec(Protocol):
    """How documents of one task become model inputs. (``isinstance`` against it evaluates every
    member, ``template`` included, which renders the prompt.)"""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str:
        """``CLASSIFICATION`` or ``LANGUAGE_MODELLING``."""

    @property
    def choices(self) -> tuple[str, ...]:
        """The label words in label order (empty for language modelling)."""

    @property
    def num_classes(self) -> int: ...

    @property
    def template(self) -> str:
        """The rendered prompt with ``{text}`` in place of the candidate text."""

    def clip(self, text: str) -> str:
        """The candidate text as the task's document holds it."""

    def context(self, text: str) -> str:
        """The prompt of a text (classification) or the text that is scored (language modelling)."""

    def continuations(self) -> list[str]:
        """The scored continuation of each label, in label order (delimiter included)."""

    def label_name(self, label: int) -> str: ...


# How a language-modelling text longer than a stage's max_length becomes model inputs: HFLM's
# rolling windows (features/encoding.py). Until 2026-12 such texts were cut at max_length, so every
# key of a language-modelling task records the rule and nothing computed under the cut is reused.
LM_TEXT_RULE = "rolling-windows"


def task_key(spec: TaskSpec, schema: int = CACHE_SCHEMA) -> str:
    """What a cache key of ``schema`` records of a task: ``name@prompt identity`` for a task
    rendered by lm-eval, so editing its YAML recomputes everything that depends on its prompt; a
    shipped task whose prompt is unchanged keeps the name it was keyed by (``cache/keys.py``
    ``KEY_RULES``, kind ``task``); a ``TemplateSpec`` (no prompt identity) is its name. A
    language-modelling task's key adds ``LM_TEXT_RULE``."""
    identity = getattr(spec, "prompt_identity", None)
    key = spec.name if identity is None else keyed_name(TASK_KIND, f"{spec.name}@{identity()}", schema)
    return key if spec.kind == CLASSIFICATION else f"{key}+{LM_TEXT_RULE}"
