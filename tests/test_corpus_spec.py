"""The one corpus-spec parser: a table of good and bad specs, and its two callers agreeing on it.

``parse_corpus_spec`` reads the grammar by syntax alone; ``load_corpus`` loads what it returns and
the leaderboard's ``check_corpus_spec`` reports its errors under a config key. A bad spec fails
the same way (same ``accepted`` text) in both callers, and before any file or the hub is reached.
"""

from __future__ import annotations

import pytest

from lm_eval_approx.data.corpus import HUB, LOCAL, MIRROR, SEED, SourceSpec, load_corpus, parse_corpus_spec
from lm_eval_approx.errors import ApproxError, ConfigError
from lm_eval_approx.leaderboard.checks import LeaderboardConfigError, check_corpus_spec

GOOD = [
    ("ag_news:train", [SourceSpec(MIRROR, "ag_news:train", "ag_news", "train")]),
    ("ag_news", [SourceSpec(MIRROR, "ag_news", "ag_news", "train")]),
    ("msmarco:test", [SourceSpec(MIRROR, "msmarco:test", "msmarco", "test")]),
    ("seed:wikitext2", [SourceSpec(SEED, "seed:wikitext2", "wikitext2")]),
    (" seed:wikitext2 + seed:dbpedia ", [SourceSpec(SEED, "seed:wikitext2", "wikitext2"),
                                         SourceSpec(SEED, "seed:dbpedia", "dbpedia")]),
    ("docs.jsonl", [SourceSpec(LOCAL, "docs.jsonl", "docs.jsonl")]),
    ("/data/corpus.CSV", [SourceSpec(LOCAL, "/data/corpus.CSV", "/data/corpus.CSV")]),
    ("~/rows.parquet", [SourceSpec(LOCAL, "~/rows.parquet", "~/rows.parquet")]),
    ("owner/data.json", [SourceSpec(LOCAL, "owner/data.json", "owner/data.json")]),
    ("owner/name", [SourceSpec(HUB, "owner/name", "owner/name", "train")]),
    ("owner/name:validation", [SourceSpec(HUB, "owner/name:validation", "owner/name", "validation")]),
    ("seed:alpha+ag_news:test+x.txt+o/n", [SourceSpec(SEED, "seed:alpha", "alpha"),
                                           SourceSpec(MIRROR, "ag_news:test", "ag_news", "test"),
                                           SourceSpec(LOCAL, "x.txt", "x.txt"),
                                           SourceSpec(HUB, "o/n", "o/n", "train")]),
]

BAD = [
    ("", "a non-empty corpus spec"),
    ("   ", "a non-empty corpus spec"),
    (None, "a non-empty corpus spec"),
    (["seed:wikitext2"], "a non-empty corpus spec"),
    ("+", "a non-empty source between '+' signs"),
    ("docs.jsonl+", "a non-empty source between '+' signs"),
    ("seed:alpha++seed:beta", "a non-empty source between '+' signs"),
    ("a\x00.jsonl", "without NUL"),
    ("ag_news:validation", "ag_news:train or ag_news:test"),
    ("msmarco:dev", "msmarco:train or msmarco:test"),
    ("seed:", "seed:<name>"),
    ("seed:a/b", "seed:<name>"),
    ("seed:wiki text", "seed:<name>"),
    ("/", "a local file ending in one of .jsonl"),
    ("~0", "a local file ending in one of .jsonl"),
    ("./notes.md", "a local file ending in one of .jsonl"),
    ("nothing", "a hub id owner/name[:split]"),
    ("seed:wikitext2+nothing", "a hub id owner/name[:split]"),
    ("a b/c", "a hub id owner/name[:split]"),
    ("owner/name:a:b", "a hub id owner/name[:split]"),
]


@pytest.mark.parametrize("spec, sources", GOOD)
def test_good_specs_parse_to_their_sources(spec, sources):
    assert parse_corpus_spec(spec) == sources
    check_corpus_spec("corpus.spec", spec)


@pytest.mark.parametrize("spec, accepted", BAD)
def test_bad_specs_fail_alike_in_both_callers(spec, accepted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing relative resolves to a real file
    with pytest.raises(ConfigError) as parsed:
        parse_corpus_spec(spec)
    assert accepted in parsed.value.accepted
    with pytest.raises(ConfigError) as loaded:
        load_corpus(spec)
    with pytest.raises(LeaderboardConfigError) as checked:
        check_corpus_spec("corpus.spec", spec)
    assert (loaded.value.value, loaded.value.accepted) == (parsed.value.value, parsed.value.accepted)
    assert checked.value.field == "corpus.spec"
    assert (checked.value.value, checked.value.accepted) == (parsed.value.value, parsed.value.accepted)


@pytest.mark.parametrize("spec", [spec for spec, _ in GOOD])
def test_load_corpus_never_fails_a_good_spec_on_syntax(spec, tmp_path, monkeypatch):
    """With no mirror and no hub, a good spec fails at loading only for a missing file or source."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(tmp_path / "empty-mirror"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ApproxError) as info:
        load_corpus(spec)
    if isinstance(info.value, ConfigError):
        assert "an existing local file" in info.value.accepted


def test_a_local_file_that_reads_like_a_hub_id_is_named_not_fetched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "notes").write_text("text\n")
    assert parse_corpus_spec("owner/notes")[0].kind == HUB
    with pytest.raises(ConfigError, match="a local file ending in one of"):
        load_corpus("owner/notes")


def test_two_local_files_of_one_name_keep_distinct_ids(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "docs.txt").write_text(f"from {folder}\n")
    corpus = load_corpus(f"{tmp_path / 'a' / 'docs.txt'}+{tmp_path / 'b' / 'docs.txt'}")
    assert corpus.ids == ["docs.txt:0", f"{tmp_path / 'b' / 'docs.txt'}:0"]
