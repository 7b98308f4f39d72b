"""A task written in Python: the ``TaskSpec`` interface from a template string, constant choices
and a word limit, for programs and tests that need a task without lm-eval or data. The pipeline's
tasks are lm-eval tasks (``tasks/lm_eval_tasks.get_task_spec``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TemplateSpec:
    """``classification``: context = template.format(text=...), continuation = delimiter + choice.
    ``lm``: the clipped text itself (template ``{text}``)."""

    name: str
    kind: str
    template: str = "{text}"
    choices: tuple[str, ...] = ()
    target_delimiter: str = " "
    max_words: int | None = None
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
