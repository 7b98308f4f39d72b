"""The prompt template and verbalisers of each approximation task, in one place.

lm-eval scores these tasks through ``tasks/*.yaml``, whose ``doc_to_text`` / ``doc_to_choice``
call back into this module, so pseudo-labelling, gradient features, training and scoring all
render exactly the same text.
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


AGNEWS = TaskSpec(
    name="approx_agnews",
    kind=CLASSIFICATION,
    template="Article: {text}\nTopic:",
    choices=("World", "Sports", "Business", "Sci/Tech"),
    max_words=64,
    corpus="ag_news",
    description="AG News 4-way topic classification (World, Sports, Business, Sci/Tech)",
)

MSMARCO = TaskSpec(
    name="approx_msmarco",
    kind=LANGUAGE_MODELLING,
    corpus="msmarco",
    description="Perplexity of MS MARCO passages (full sequence)",
)

TASK_SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in (AGNEWS, MSMARCO)}
TASK_SPECS["approx_msmarco_last"] = MSMARCO


def task_key(spec) -> str:
    """What a cache key records of a task: the name of a built-in spec above (so keys made before
    any lm-eval task could be a target stay valid), ``name@prompt identity`` for a task rendered by
    lm-eval, so editing its YAML recomputes everything that depends on its prompt."""
    identity = getattr(spec, "prompt_identity", None)
    return spec.name if identity is None else f"{spec.name}@{identity()}"


def get_task_spec(name: str, include_path=None, text_field: str | None = None):
    """The spec of an approximation task by lm-eval task name: the built-in specs above first
    (``approx_agnews``, ...; ``include_path`` and ``text_field`` do not apply to them), else any
    lm-eval task in the registered task folders, ``include_path`` or lm-eval's own tasks, rendered
    by the task itself (``tasks/lm_eval_spec.py``; a named error when it cannot be approximated)."""
    if name in TASK_SPECS:
        return TASK_SPECS[name]
    from lm_eval_approx.tasks.lm_eval_tasks import (
        UnknownTaskError,
        builtin_task_names,
        lm_eval_task_spec,
        local_task_names,
    )

    spec = lm_eval_task_spec(name, include_path, text_field)
    if spec is not None:
        return spec
    listed = sorted({*TASK_SPECS, *local_task_names(include_path)[0]})
    raise UnknownTaskError(name, listed, sorted(set(builtin_task_names()) - set(listed)))
