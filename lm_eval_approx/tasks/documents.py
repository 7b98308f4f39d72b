"""A task's own training documents as (text, label) pairs: how ``finetune --task T`` without
``--data`` (and a leaderboard expert without ``expert.data``) trains θf on the task itself.

For an lm-eval task the documents are lm-eval's ``training_docs()`` (its ``training_split``, after
``process_docs``); the text is the document's text field (``lm_eval_spec.resolve_text_field``) and,
for a multiple-choice task, the label is ``doc_to_target(doc)``: a choice index, a choice string
or the decimal string of an index. The expert is trained on the text field with the other fields
empty, exactly as every candidate document is rendered, so θf and its approximation see examples
of the same form (for a task whose prompt shows several fields this is a simplification, stated in
docs/ARCHITECTURE.md). The shipped ``approx_*`` tasks are lm-eval tasks like any other: their
training split is read from the data mirror by their ``custom_dataset`` loader (``tasks/dataset_loaders.py``).
"""

from __future__ import annotations

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.tasks.kinds import CLASSIFICATION
from lm_eval_approx.tasks.lm_eval_spec import LmEvalTaskSpec


def _label_of(spec: LmEvalTaskSpec, doc: dict, index: int) -> int:
    target = spec.task.doc_to_target(doc)
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target.strip())
    if isinstance(target, str) and target in spec.choices:
        target = spec.choices.index(target)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < spec.num_classes:
        raise ConfigError(f"task {spec.name} training document {index} target", target,
                          f"a choice index 0..{spec.num_classes - 1} or one of the choices {list(spec.choices)}")
    return target


def has_training_texts(spec: LmEvalTaskSpec) -> bool:
    """True when the task has training texts to draw from: a training split."""
    return bool(spec.task.has_training_docs())


def training_documents(spec: LmEvalTaskSpec) -> list[tuple[str, int | None]]:
    """(text, label) of every training document of an lm-eval task (label None for language modelling)."""
    task = spec.task
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
