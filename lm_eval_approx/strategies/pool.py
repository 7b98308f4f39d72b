"""The candidate pool a strategy sees, built from a corpus and its feature stores, and the
selection-file rows made from a strategy's picks.

The pool's row order is the first store's row order (features stay memory-mapped, never
reordered); the corpus is aligned to it by id. Every store must hold the same ids in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lm_eval_approx.data.selection_file import SelectedExample
from lm_eval_approx.errors import SelectionError, StoreMismatchError
from lm_eval_approx.features.store import NO_LABEL
from lm_eval_approx.strategies.base import CandidatePool, Selection
from lm_eval_approx.tasks.kinds import CLASSIFICATION, TaskSpec


def _aligned(corpus, ids: list[str]):
    """The corpus reordered to ``ids`` (its subset), or an error naming the ids it lacks."""
    if corpus is None:
        return None
    if list(corpus.ids) == list(ids):
        return corpus
    index = {doc_id: i for i, doc_id in enumerate(corpus.ids)}
    missing = [doc_id for doc_id in ids if doc_id not in index]
    if missing:
        raise StoreMismatchError(
            f"{len(missing)} ids of the feature store are not in the corpus (first: {missing[:3]}); "
            "pass the corpus the features were computed on"
        )
    return corpus.subset([index[doc_id] for doc_id in ids])


def _labels_of(labels) -> np.ndarray | None:
    if labels is None:
        return None
    arr = np.asarray(labels, dtype=np.int64)
    return None if (arr == NO_LABEL).all() else arr


def build_pool(corpus=None, stores: Sequence[Any] = (), labels=None, loss_finetuned=None,
               loss_base=None, num_classes: int | None = None) -> CandidatePool:
    """A ``CandidatePool`` from a corpus and feature stores (objects with ``ids`` and
    ``gradient_features()``; one per synthetic checkpoint). Labels and the finetuned loss default
    to the store at the largest alpha (θf); θ0's losses are given, never read from a store."""
    stores = list(stores)
    if not stores and corpus is None:
        raise SelectionError("build_pool needs a corpus, feature stores, or both")
    ids = list(stores[0].ids) if stores else list(corpus.ids)
    for store in stores[1:]:
        if list(store.ids) != ids:
            raise StoreMismatchError(
                f"feature stores disagree on their ids ({len(store.ids)} vs {len(ids)} rows); every "
                "checkpoint store must be built over the same corpus in the same order"
            )
    corpus = _aligned(corpus, ids)
    features = [store.gradient_features() for store in stores]
    final = max(range(len(stores)), key=lambda i: features[i].alpha) if stores else None
    if final is not None:
        if labels is None:
            labels = _labels_of(getattr(stores[final], "labels", None))
        if loss_finetuned is None and getattr(stores[final], "loss", None) is not None:
            loss_finetuned = np.asarray(stores[final].loss, dtype=np.float64)
    labels = None if labels is None else np.asarray(labels, dtype=np.int64)
    if labels is not None and num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else None
    texts = list(corpus.texts) if corpus is not None else getattr(stores[0], "texts", None)
    return CandidatePool(
        ids=ids,
        texts=texts,
        labels=labels,
        num_classes=num_classes,
        loss_finetuned=None if loss_finetuned is None else np.asarray(loss_finetuned, dtype=np.float64),
        loss_base=None if loss_base is None else np.asarray(loss_base, dtype=np.float64),
        features=features,
        sources=list(corpus.sources) if corpus is not None else None,
    )


def selection_rows(pool: CandidatePool, selection: Selection, spec: TaskSpec | None = None) -> list[SelectedExample]:
    """Selection-file rows in pick order; ``spec`` names the labels."""
    if pool.texts is None:
        raise SelectionError("the candidate pool has no texts: build it with the corpus the features came from")
    classification = spec is not None and spec.kind == CLASSIFICATION
    rows = []
    for order, i in enumerate(np.asarray(selection.indices, dtype=np.int64)):
        label = int(pool.labels[i]) if pool.labels is not None and pool.labels[i] != NO_LABEL else None
        if spec is not None and not classification:
            label = None
        score = None if selection.scores is None else float(selection.scores[order])
        weight = 1.0 if selection.weights is None else float(selection.weights[order])
        rows.append(SelectedExample(
            id=pool.ids[i],
            text=pool.texts[i],
            label=label,
            label_text=spec.label_name(label) if (spec is not None and classification and label is not None) else None,
            score=score,
            weight=weight,
            order=order,
            source=pool.sources[i] if pool.sources is not None else None,
        ))
    return rows
