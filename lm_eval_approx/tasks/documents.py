"""A task's own training documents as (text, label) pairs: how ``finetune --task T`` without
``--data`` (and a leaderboard expert without ``expert.data``) trains θf on the task itself.

For an lm-eval task the documents are lm-eval's ``training_docs()`` (its ``training_split``, after
``process_docs``); the text is the document's text field (``lm_eval_spec.resolve_text_field``) and,
for a multiple-choice task, the label is ``doc_to_target(doc)``: a choice index, a choice string
or the decimal string of an index. The expert is trained on the text field with the other fields
empty, exactly as every candidate document is rendered, so θf and its approximation see examples
of the same form (for a task whose prompt shows several fields this is a simplification, stated in
docs/ARCHITECTURE.md). A built-in ``approx_*`` task reads the training split of its mirror corpus.
"""

from __future__ import annotations

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.tasks.specs import CLASSIFICATION


def _label_of(spec, doc: dict, index: int) -> int:
    target = spec.task.doc_to_target(doc)
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target.strip())
    if isinstance(target, str) and target in spec.choices:
        target = spec.choices.index(target)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < spec.num_classes:
        raise ConfigError(f"task {spec.name} training document {index} target", target,
                          f"a choice index 0..{spec.num_classes - 1} or one of the choices {list(spec.choices)}")
    return target


def has_training_texts(spec) -> bool:
    """True when the task has training texts to draw from: an lm-eval task with a training split,
    or a built-in task with a mirror corpus."""
    task = getattr(spec, "task", None)
    return bool(spec.corpus) if task is None else bool(task.has_training_docs())


def training_documents(spec) -> list[tuple[str, int | None]]:
    """(text, label) of every training document of an lm-eval task (label None for language modelling)."""
    task = getattr(spec, "task", None)
    if task is None:
        raise ConfigError("task", spec.name, "an lm-eval task (built-in specs read their mirror corpus)")
    if not task.has_training_docs():
        raise ConfigError("task", spec.name, "a task with a training_split (or give the expert's data with --data)")
    out = []
    for index, doc in enumerate(task.training_docs()):
        if spec.text_field not in doc:
            raise ConfigError(f"task {spec.name} training document {index}", sorted(doc),
                              f"a document with the text field {spec.text_field!r}")
        text = str(doc[spec.text_field])
        out.append((text, _label_of(spec, doc, index) if spec.kind == CLASSIFICATION else None))
    if not out:
        raise ConfigError("task", spec.name, "a task whose training split has at least one document")
    return out
