"""Training examples from a selection file, a labelled corpus or the task's own training split
(the last two: how an expert θf is made).

A selection file is used as it is (its rows carry pseudo-labels); a corpus or the task's training
split is drawn and converted with its *true* labels, which a classification task requires.
"""

from __future__ import annotations

from lm_eval_approx.data.corpus import load_corpus
from lm_eval_approx.data.selection_file import SelectedExample, read_selection
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.tasks.documents import training_documents
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec
from lm_eval_approx.tasks.lm_eval_spec import LmEvalTaskSpec


def check_labels(field: str, labels: list, ids: list[str], spec: TaskSpec) -> None:
    """Every given label of a classification task is a class index 0..C-1 (None: to be pseudo-labelled)."""
    for label, doc_id in zip(labels, ids):
        if label is not None and not 0 <= label < spec.num_classes:
            raise ConfigError(f"{field} label of {doc_id}", label,
                              f"a class index 0..{spec.num_classes - 1} of task {spec.name}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit <= 0:
        raise ConfigError("limit", limit, "a positive integer")


def selection_examples(path: str, spec: TaskSpec, limit: int | None = None) -> list[SelectedExample]:
    """The first ``limit`` rows of a selection file, in pick order, labels checked against the task."""
    _check_limit(limit)
    rows = read_selection(path)[:limit]
    if spec.kind == CLASSIFICATION:
        check_labels("data", [row.label for row in rows], [row.id for row in rows], spec)
    return rows


def corpus_examples(data: str, spec: TaskSpec, limit: int | None, seed: int) -> list[SelectedExample]:
    """``limit`` documents of corpus ``data`` drawn with ``seed``, with their true labels."""
    _check_limit(limit)
    corpus = load_corpus(data, limit=limit, seed=seed)
    classification = spec.kind == CLASSIFICATION
    if classification and any(label is None for label in corpus.labels):
        raise ConfigError("data", data, f"a corpus with true labels for the classification task {spec.name}")
    if classification:
        check_labels("data", corpus.labels, corpus.ids, spec)
    return [
        SelectedExample(
            id=corpus.ids[i], text=corpus.texts[i],
            label=corpus.labels[i] if classification else None,
            label_text=spec.label_name(corpus.labels[i]) if classification else None,  # type: ignore[arg-type]  # none is None (checked above)
            order=i, source=corpus.sources[i],
        )
        for i in range(len(corpus))
    ]


def task_examples(spec: LmEvalTaskSpec, limit: int | None, seed: int) -> list[SelectedExample]:
    """``limit`` documents of the task's own training split drawn with ``seed`` (all, in order,
    without a limit), with their true labels; ids are ``<task>:train:<row>``."""
    import numpy as np

    _check_limit(limit)
    docs = training_documents(spec)
    keep = range(len(docs))
    if limit is not None and limit < len(docs):
        keep = np.sort(np.random.default_rng(seed).choice(len(docs), size=limit, replace=False)).tolist()
    classification = spec.kind == CLASSIFICATION
    return [
        SelectedExample(id=f"{spec.name}:train:{i}", text=docs[i][0], label=docs[i][1],
                        label_text=spec.label_name(docs[i][1]) if classification else None,  # type: ignore[arg-type]  # labelled
                        order=order, source=spec.name)
        for order, i in enumerate(keep)
    ]
