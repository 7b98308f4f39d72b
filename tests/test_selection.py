"""build_pool / select / selection_rows, and the ``select`` command end to end on a real store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lm_eval_approx.errors import StoreMismatchError, UnknownNameError
from lm_eval_approx.strategies.pool import build_pool, selection_rows
from lm_eval_approx.strategies.registry import select
from lm_eval_approx.data.selection_file import read_selection
from lm_eval_approx.features.gradient_features import GradientFeatures
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

from _synthetic import direct_select


class FakeStore:
    """Anything with ids, labels, loss, alpha and gradient_features() works as a store."""

    def __init__(self, ids, matrix, target, alpha=1.0, labels=None, loss=None):
        self.ids, self.labels, self.loss = ids, labels, loss
        self.feats = GradientFeatures(matrix, target, alpha=alpha)

    def gradient_features(self):
        return self.feats


class FakeCorpus:
    def __init__(self, ids, texts, sources):
        self.ids, self.texts, self.sources = ids, texts, sources
        self.labels = [None] * len(ids)

    def subset(self, idx):
        return FakeCorpus([self.ids[i] for i in idx], [self.texts[i] for i in idx], [self.sources[i] for i in idx])


def _inputs(n=30, d=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"src:{i}" for i in range(n)]
    corpus = FakeCorpus(list(reversed(ids)), [f"text {i}" for i in reversed(range(n))],
                        ["a" if i % 2 else "b" for i in reversed(range(n))])
    labels = rng.integers(0, 4, n)
    store = FakeStore(ids, rng.standard_normal((n, d)).astype(np.float16), rng.standard_normal(d),
                      labels=labels, loss=rng.random(n).astype(np.float32))
    half = FakeStore(ids, rng.standard_normal((n, d)).astype(np.float16), rng.standard_normal(d), alpha=0.5,
                     labels=labels, loss=rng.random(n).astype(np.float32) + 1)
    return corpus, store, half


def test_build_pool_aligns_corpus_to_store_order_and_takes_losses():
    corpus, store, half = _inputs()
    loss_base = np.arange(len(store.ids), dtype=np.float32)
    pool = build_pool(corpus, stores=[half, store], loss_base=loss_base)
    assert pool.ids == store.ids and pool.texts[3] == "text 3" and pool.sources[3] == "a"
    assert pool.num_classes == int(store.labels.max()) + 1
    np.testing.assert_allclose(pool.loss_finetuned, store.loss.astype(np.float64))
    np.testing.assert_allclose(pool.loss_base, loss_base)
    assert [f.alpha for f in pool.features] == [0.5, 1.0] and pool.final_features.alpha == 1.0


def test_build_pool_rejects_unknown_ids_and_mismatched_stores():
    corpus, store, _ = _inputs()
    with pytest.raises(StoreMismatchError, match="not in the corpus"):
        build_pool(corpus.subset(range(5)), stores=[store])
    other = FakeStore(store.ids[::-1], store.feats.matrix, store.feats.target)
    with pytest.raises(StoreMismatchError, match="disagree"):
        build_pool(corpus, stores=[store, other])


def test_select_by_name_and_rows():
    corpus, store, _ = _inputs()
    pool = build_pool(corpus, stores=[store])
    sel = select("select", pool, 5, 0, {})
    assert sel.indices.tolist() == direct_select(store.feats.matrix, store.feats.target, 5)
    rows = selection_rows(pool, sel, get_task_spec("approx_agnews"))
    assert [r.order for r in rows] == list(range(5))
    assert rows[0].id == pool.ids[sel.indices[0]] and rows[0].text == pool.texts[sel.indices[0]]
    assert rows[0].label_text == get_task_spec("approx_agnews").label_name(rows[0].label)
    lm_rows = selection_rows(pool, sel, get_task_spec("approx_msmarco"))
    assert all(r.label is None and r.label_text is None for r in lm_rows)
    with pytest.raises(UnknownNameError, match="Did you mean 'select'"):
        select("selekt", pool, 5, 0, {})


def test_select_command_end_to_end(tmp_path):
    from lm_eval_approx.commands.select import parse_options, run_select
    from lm_eval_approx.features.store import FeatureStore

    rng = np.random.default_rng(2)
    n, d = 25, 12
    corpus_path = tmp_path / "corpus.jsonl"
    corpus_path.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(n)))
    from lm_eval_approx.data.corpus import load_corpus

    corpus = load_corpus(str(corpus_path))
    store = FeatureStore.create(tmp_path / "feats", {"task": "approx_agnews"}, list(corpus.ids), d)
    store.write_rows(np.arange(n), rng.standard_normal((n, d)), rng.random(n), rng.integers(0, 4, n),
                     np.ones(n))
    store.set_target(rng.standard_normal(d))
    assert parse_options(["batch_size=3", "x=abc"]) == {"batch_size": 3, "x": "abc"}

    class Args:
        strategy, k, features, corpus, task, seed = "select_batched", 6, [str(tmp_path / "feats")], str(corpus_path), None, 0
        option, out = ["batch_size=3"], str(tmp_path / "sel.jsonl")

    assert run_select(Args) == 0
    rows = read_selection(tmp_path / "sel.jsonl")
    feats = FeatureStore.open(tmp_path / "feats").gradient_features()
    expected = direct_select(feats.matrix, feats.target, 6, batch_size=3)
    assert [r.id for r in rows] == [corpus.ids[i] for i in expected]
    assert rows[0].text == corpus.texts[expected[0]] and rows[0].label_text is not None
