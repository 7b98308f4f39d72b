"""Corpus loading: named mirror corpora, mixtures, local files, deduplication, stable ids, errors."""

from __future__ import annotations

import json

import pytest

from lm_eval_approx.data.corpus import load_corpus
from lm_eval_approx.errors import ConfigError, DataNotFoundError


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def mini_mirror(tmp_path, monkeypatch):
    (tmp_path / "seed").mkdir()
    (tmp_path / "ag_news").mkdir()
    _write_jsonl(tmp_path / "seed" / "alpha.jsonl", [{"text": f"alpha document {i}"} for i in range(5)])
    _write_jsonl(tmp_path / "seed" / "beta.jsonl", [{"text": "alpha document 1"}, {"text": "beta only"}, {"text": "  "}])
    _write_jsonl(tmp_path / "ag_news" / "train.jsonl", [{"text": f"news {i}", "label": i % 4} for i in range(8)])
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(tmp_path))
    return tmp_path


def test_mixture_dedup_and_stable_ids(mini_mirror):
    corpus = load_corpus("seed:alpha+seed:beta")
    assert len(corpus) == 6
    assert corpus.ids[:2] == ["seed:alpha:0", "seed:alpha:1"]
    assert corpus.ids[-1] == "seed:beta:1", "ids keep the row of the source, after dropped rows"
    assert corpus.dropped_duplicates == 1 and corpus.dropped_empty == 1
    assert set(corpus.sources) == {"seed:alpha", "seed:beta"}


def test_limit_is_seeded_and_subset_keeps_fields(mini_mirror):
    a = load_corpus("ag_news:train", limit=4, seed=1)
    b = load_corpus("ag_news:train", limit=4, seed=1)
    c = load_corpus("ag_news:train", limit=4, seed=2)
    assert a.ids == b.ids and a.fingerprint() == b.fingerprint()
    assert a.ids != c.ids
    full = load_corpus("ag_news:train")
    assert all(full.labels[full.index()[i]] == label for i, label in zip(a.ids, a.labels))


def test_local_files(tmp_path):
    csv_path = tmp_path / "docs.csv"
    csv_path.write_text("content,label\nfirst row,1\nsecond row,0\nfirst row,1\n", encoding="utf-8")
    corpus = load_corpus(str(csv_path))
    assert corpus.texts == ["first row", "second row"] and corpus.labels == [1, 0]
    txt = tmp_path / "docs.txt"
    txt.write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    assert load_corpus(str(txt)).texts == ["one", "two", "three"]


def test_bad_specs_are_named_errors(mini_mirror, tmp_path):
    with pytest.raises(ConfigError, match="seed:alpha"):
        load_corpus("seed:nosuch")
    with pytest.raises(ConfigError, match="ag_news:train"):
        load_corpus("ag_news:validation")
    with pytest.raises(ConfigError, match="text field"):
        load_corpus(str(_write_jsonl(tmp_path / "bad.jsonl", [{"body": "x"}])))
    with pytest.raises(ConfigError, match="limit"):
        load_corpus("seed:alpha", limit=0)
    with pytest.raises(ConfigError, match="at least one non-empty"):
        load_corpus(str(_write_jsonl(tmp_path / "empty.jsonl", [{"text": " "}])))


def test_offline_without_mirror_names_the_variable(monkeypatch):
    monkeypatch.delenv("LM_EVAL_APPROX_DATA", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataNotFoundError) as info:
        load_corpus("ag_news:train")
    assert "LM_EVAL_APPROX_DATA" in str(info.value) and "ag_news/{train,test}.jsonl" in str(info.value)


@pytest.mark.slow
def test_real_mirror_corpora(mirror, monkeypatch):
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(mirror))
    corpus = load_corpus("seed:wikitext2+seed:dbpedia", limit=2000, seed=0)
    assert len(corpus) == 2000 and len(set(corpus.texts)) == 2000
    assert {"seed:wikitext2", "seed:dbpedia"} == set(corpus.sources)
    assert len(load_corpus("msmarco:test")) == 990
