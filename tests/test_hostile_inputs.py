"""Bad input everywhere a user can type or point (hypothesis): every case ends in a result or in a
named ApproxError whose message names the field and the value — never a raw KeyError, TypeError,
UnicodeDecodeError or IndexError, never a traceback from deep inside a library.

Covered: the corpus loader on generated JSONL/JSON/CSV/TXT files (empty corpora, empty and
whitespace-only documents, invalid UTF-8, mixed scripts, NUL bytes, lone surrogates, duplicate
ids, missing/extra columns, odd labels), the selection-file reader, TrainingRecipe and ApproxConfig,
the leaderboard config with --set overrides, and the CLI parsers of every subcommand but ``run``.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lm_eval_approx.data.corpus import load_corpus
from lm_eval_approx.errors import ApproxError, ConfigError
from lm_eval_approx.models.loading import load_model
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.data.selection_file import read_selection

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow])
MEGABYTE = 1 << 20
TEXT = st.text(st.characters(codec=None, exclude_categories=["Cs"]), max_size=30) | st.sampled_from(
    ["", "   ", "\t\n", "a\x00b", "Ω东京 مرحبا 🙂", "\ud800lone", "dup", "dup "])
SCALAR = st.none() | st.booleans() | st.integers(-5, 10**20) | st.floats(allow_nan=True) | TEXT
VALUE = SCALAR | st.lists(SCALAR, max_size=3) | st.dictionaries(TEXT, SCALAR, max_size=2)


def _named(exc: ApproxError) -> None:
    """A named error says which field and which value (ConfigError carries both)."""
    if isinstance(exc, ConfigError):
        assert str(exc.field) in str(exc) and repr(exc.value)[:20] in str(exc)
    assert str(exc).strip()


def _check_corpus(path: Path, limit=None, seed=0) -> None:
    try:
        corpus = load_corpus(str(path), limit=limit, seed=seed)
    except ApproxError as exc:
        _named(exc)
        return
    assert len(corpus) >= 1 and len(set(corpus.ids)) == len(corpus.ids)
    for text, label in zip(corpus.texts, corpus.labels):
        assert isinstance(text, str) and text.strip() and text.encode("utf-8")
        assert label is None or (isinstance(label, int) and not isinstance(label, bool))
    corpus.fingerprint()


ROWS = st.lists(st.dictionaries(st.sampled_from(["text", "content", "label", "id", "extra", "title"]), VALUE,
                                max_size=4), max_size=6)


@settings(max_examples=120, **SETTINGS)
@given(rows=ROWS, suffix=st.sampled_from([".jsonl", ".json", ".csv"]),
       limit=st.none() | st.integers(-2, 8), seed=st.integers(-1, 3))
@example(rows=[{"text": None}, {"text": "x"}], suffix=".jsonl", limit=None, seed=0)  # text null became "None"
@example(rows=[{"text": "a", "extra": 1, "id": 2}, {"label": 1}], suffix=".csv", limit=None, seed=0)  # extra and missing cells
@example(rows=[{"text": "a"}, {"text": "b"}], suffix=".jsonl", limit=1, seed=-1)  # negative seed: numpy ValueError
@example(rows=[{"text": "a", "label": 1.5}], suffix=".jsonl", limit=None, seed=0)  # label 1.5 silently became 1
def test_corpus_files_from_generated_rows(rows, suffix, limit, seed):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"corpus{suffix}"
        if suffix == ".jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8", errors="surrogatepass")
        elif suffix == ".json":
            path.write_text(json.dumps(rows), encoding="utf-8")
        else:
            columns = ["text", "label"]
            with path.open("w", newline="", encoding="utf-8", errors="surrogatepass") as fh:
                writer = csv.writer(fh)
                writer.writerow(columns)
                for row in rows:
                    writer.writerow([str(v) for v in row.values()])  # missing and extra cells
        _check_corpus(path, limit, seed)


@settings(max_examples=80, **SETTINGS)
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".parquet"]))
@example(data=b'{"text": "caf\xe9 \xff\xfe"}\n', suffix=".jsonl")  # invalid UTF-8
@example(data=b"content2,label\na,1,extra\n", suffix=".csv")  # extra cell, no text column: TypeError before
@example(data=b"[1, 2]", suffix=".json")  # rows that are not objects: TypeError before
@example(data=b"{not json", suffix=".json")  # raw JSONDecodeError before
@example(data=b"5", suffix=".json")  # a scalar: AttributeError before
@example(data=b"PAR1 not parquet", suffix=".parquet")  # raw ArrowInvalid before
def test_corpus_files_from_raw_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"raw{suffix}"
        path.write_bytes(data)
        _check_corpus(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_one_megabyte_document_loads_whole(tmp_path, suffix):
    text = ("word " * (MEGABYTE // 5)).strip()
    path = tmp_path / f"big{suffix}"
    if suffix == ".jsonl":
        path.write_text(json.dumps({"text": text}) + "\n")
    elif suffix == ".csv":  # csv's default 131 072-character field limit refused this before
        path.write_text("text\n" + text + "\n")
    else:
        path.write_text(text + "\n")
    assert load_corpus(str(path)).texts == [text]


def test_same_file_name_in_two_folders_keeps_ids_unique(tmp_path):
    for folder, text in (("a", "first"), ("b", "second")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "docs.jsonl").write_text(json.dumps({"text": text}) + "\n")
    corpus = load_corpus(f"{tmp_path / 'a' / 'docs.jsonl'}+{tmp_path / 'b' / 'docs.jsonl'}")
    assert len(set(corpus.ids)) == 2 and corpus.texts == ["first", "second"]


@settings(max_examples=60, **SETTINGS)
@given(spec=st.text(max_size=40) | st.sampled_from(["+", "a.jsonl+", "seed:", "x" * 5000 + ".jsonl",
                                                    "a\x00.jsonl", "ag_news:validation", "/"]))
@example(spec="~0")  # a home folder of a user that does not exist: expanduser raised RuntimeError
def test_corpus_specs(spec):
    try:
        load_corpus(spec)
    except ApproxError as exc:
        _named(exc)


RECIPE_FIELDS = [f for f in TrainingRecipe.__dataclass_fields__]


@settings(max_examples=150, **SETTINGS)
@given(record=st.dictionaries(st.sampled_from(RECIPE_FIELDS + ["bogus", 3]), VALUE, max_size=4),
       as_strings=st.booleans())
def test_training_recipe_validation(record, as_strings):
    try:
        if as_strings:
            recipe = TrainingRecipe.from_options({str(k): str(v) for k, v in record.items()})
        else:
            recipe = TrainingRecipe.from_dict(record)
    except ApproxError as exc:
        _named(exc)
        return
    assert TrainingRecipe.from_json(recipe.to_json()) == recipe


@settings(max_examples=100, **SETTINGS)
@given(overrides=st.dictionaries(st.sampled_from(["k", "dim", "corpus_size", "seed", "corpus_seed", "params",
                                                  "projection", "checkpoints", "strategy", "task",
                                                  "strategy_options", "extract_max_length", "base",
                                                  "target_source", "target_size"]),
                                 VALUE, max_size=3))
@example(overrides={"k": 10, "corpus_size": 5})  # k > corpus_size reached selection before
@example(overrides={"seed": -1})
@example(overrides={"target_source": "contrast", "target_size": 0})
def test_approx_config_validation(overrides):
    from lm_eval_approx.pipeline import ApproxConfig

    try:
        ApproxConfig(**{"base": "b", "finetuned": "f", **overrides}).resolve()  # task and strategy: at resolve
    except ApproxError as exc:
        _named(exc)


@settings(max_examples=100, **SETTINGS)
@given(lines=st.lists(st.dictionaries(st.sampled_from(["id", "text", "label", "weight", "order", "score",
                                                       "label_text", "source"]), VALUE, max_size=5)
                      | st.binary(max_size=40), max_size=4))
@example(lines=[b"\xff\xfe{"])  # invalid UTF-8: raw UnicodeDecodeError before
@example(lines=[{"text": "a", "order": "first"}])  # raw ValueError before
@example(lines=[{"text": "a", "order": None}])  # raw TypeError before
def test_selection_file_reader(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "selection.jsonl"
        path.write_bytes(b"".join(
            (line if isinstance(line, bytes) else json.dumps(line).encode("utf-8", "surrogatepass")) + b"\n"
            for line in lines))
        try:
            rows = read_selection(path)
        except ApproxError as exc:
            _named(exc)
            return
        for row in rows:
            assert isinstance(row.text, str) and row.weight > 0 and isinstance(row.order, int)


LEADERBOARD_KEYS = ["base", "task", "metric", "expert", "corpus", "strategies", "budgets", "seeds", "limit",
                    "recipe", "approx", "similarity", "device", "batch_size", "name", "expert.size", "expert.recipe",
                    "corpus.size", "corpus.seed", "approx.dim", "approx.params", "strategies", "recipe.epochs",
                    "retraining", "retraining.stop_on", "retraining.patience", "retraining.epochs",
                    "condition", "approx.target_source", "approx.target_size", "retraining.monitor_source"]
YAML_VALUES = st.sampled_from(["[", "{a: 1", "-1", "0", "[]", "[1, 1]", "null", "x", "{}", "[random]",
                               "task_agreement", "task_loss", "teacher_kl", "{stop_on: task_kl, patience: 0}",
                               "{stop_on: task_agreement, monitor_size: 1}", "{epochs: 2, stop_on: bogus}",
                               "[{name: random, options: {1: 2}}]", "[{name: select, options: {bogus: 1}}]",
                               "{dim: -3}", "{reference_size: 0, embed: maybe}", "1e3", "'\\x00'", "[0, -2]",
                               "weights", "task_texts", "true_data", "finetuned", "contrast", "base", "task",
                               "[{name: rds, options: {pooling: bogus}}]", "[{name: dsir, options: {buckets: 0}}]",
                               "[gen_knn]"]) | TEXT


@settings(max_examples=120, **SETTINGS)
@given(sets=st.lists(st.tuples(st.sampled_from(LEADERBOARD_KEYS), YAML_VALUES), max_size=3))
@example(sets=[("budgets", "[")])  # raw yaml.ParserError before
@example(sets=[("expert.recipe", "[1]")])  # TypeError in the recipe merge before
@example(sets=[("strategies", "[{name: random, options: {1: 2}}]")])  # TypeError: keywords must be strings
@example(sets=[("approx.dim", "-3")])  # found only when the first cell ran, before
@example(sets=[("retraining", "{stop_on: task_loss}")])  # a language-modelling signal on a choice task
def test_leaderboard_config_with_overrides(sets, tiny_gpt2):
    from lm_eval_approx.leaderboard.sources import load_config

    overrides = [f"base={tiny_gpt2}", *(f"{key}={value}" for key, value in sets)]
    try:
        config = load_config(preset="tiny", overrides=overrides)
    except ApproxError as exc:
        _named(exc)
        return
    assert config.cells()
    for strategy in config.strategies:
        recipe = config.retraining_for(strategy.label)
        assert recipe.epochs >= 1 and recipe.patience >= 0


FLAG_VALUES = st.sampled_from(["0", "-1", "3", "1.5", "abc", "", "head", "changed", "nope", "approx_agnews",
                               "seed:wikitext2", "random", "select", "k=1", "=", "x.jsonl", "\x00"]) | TEXT
COMMANDS = {
    "select": ["--strategy", "--k", "--features", "--corpus", "--task", "--seed", "--option", "--out"],
    "features": ["--base", "--finetuned", "--task", "--corpus", "--params", "--dim", "--out", "--checkpoints",
                 "--labels", "--limit", "--batch-size", "--max-length", "--projection", "--sqnorm", "--dtype"],
    "train": ["--base", "--task", "--data", "--out", "--limit", "--lora-rank", "--epochs", "--learning-rate",
              "--target-modules", "--recipe", "--max-length", "--retraining-rule", "--finetuned", "--stop-on"],
    "finetune": ["--base", "--task", "--data", "--out", "--limit", "--data-seed", "--lora-alpha"],
    "leaderboard": ["--config", "--preset", "--show", "--set", "--out", "--dry-run"],
    "strategies": ["--json"], "tasks": ["--json"], "plugins": ["--json"],
}


@pytest.fixture
def no_heavy_compute(monkeypatch):
    """The CLI tests check validation only: the long stages are replaced by recorders."""
    from lm_eval_approx.features import build as features
    from lm_eval_approx.training import loop as training
    from lm_eval_approx.commands import leaderboard as leaderboard_command

    calls = []
    monkeypatch.setattr(features, "build_feature_stores", lambda *a, **k: calls.append("features") or [])
    monkeypatch.setattr(training, "train_adapter", lambda *a, **k: calls.append("train") or (_ for _ in ()).throw(
        ConfigError("stub", "train_adapter", "reached")))
    monkeypatch.setattr(leaderboard_command, "run_leaderboard", lambda *a, **k: calls.append("leaderboard"))
    return calls


@settings(max_examples=150, **SETTINGS)
@given(command=st.sampled_from(sorted(COMMANDS)), data=st.data())
def test_cli_argument_validation(command, data, tiny_gpt2, tmp_path, no_heavy_compute, capsys):
    from lm_eval_approx.cli import main

    flags = data.draw(st.lists(st.sampled_from(COMMANDS[command]), max_size=6, unique=True))
    argv = [command]
    for flag in flags:
        argv.append(flag)
        if flag not in ("--json", "--dry-run", "--retraining-rule"):
            value = data.draw(FLAG_VALUES | st.sampled_from([tiny_gpt2, str(tmp_path / "out")]))
            argv.append(value)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code in (0, 2)
    capsys.readouterr()


@pytest.mark.parametrize("name", ["~0", "~no_such_user_xyz/model"])
def test_a_home_folder_of_an_unknown_user_is_a_named_error(name):
    from lm_eval_approx.models.loading import resolve_model

    with pytest.raises(ApproxError):
        resolve_model(name)
    with pytest.raises(ApproxError):
        load_corpus(name)


TARGET_CHOICES = ["all-linear", "lm_head", "q_proj", "v_proj", "c_attn", "c_fc", "up_proj", "no_such_module"]


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_lora_layers_resolve_to_the_top_blocks_or_a_named_error(data, tiny_llama, tiny_gpt2):
    """Any ``lora_layers`` (0 … beyond the model's depth) with any target list: the resolved modules
    are exactly the targeted ones in the top L blocks plus a targeted head, or a named error."""
    from lm_eval_approx.training.model import block_index, resolve_target_modules

    models = {path: load_model(path) for path in (tiny_llama, tiny_gpt2)}
    model = models[data.draw(st.sampled_from(sorted(models)))]
    targets = tuple(data.draw(st.lists(st.sampled_from(TARGET_CHOICES), min_size=1, max_size=3, unique=True)))
    depth = 1 + max(block_index(n) for n, _ in model.named_modules() if block_index(n) is not None)
    top = data.draw(st.integers(0, depth + 2))
    try:
        everything = set(resolve_target_modules(model, targets, 0))
        chosen = resolve_target_modules(model, targets, top)
    except ConfigError as exc:
        _named(exc)
        assert exc.field in ("target_modules", "lora_layers")
        return
    if top == 0:
        assert set(chosen) == everything
        return
    names = dict(model.named_modules())
    assert chosen and all(n in names for n in chosen)
    blocks = {block_index(n) for n in chosen} - {None}
    assert all(b >= depth - top for b in blocks)
    head = model.get_output_embeddings()
    expanded = {n for n in names if n in everything or n.rsplit(".", 1)[-1] in everything}
    expected = {n for n in expanded if (block_index(n) is not None and block_index(n) >= depth - top)
                or names[n] is head}
    assert set(chosen) == expected


@pytest.mark.parametrize("folder", ["\x00", "\ud800lone", "out\x00/x"])
def test_an_unencodable_results_folder_is_a_named_error(folder, capsys):
    """Found by test_cli_argument_validation: ``leaderboard --show`` (and every folder that goes
    through ``contained``) with a NUL byte or a lone surrogate said ValueError/UnicodeEncodeError."""
    from lm_eval_approx.cache.safe_paths import contained
    from lm_eval_approx.cli import main

    with pytest.raises(ConfigError) as raised:
        contained(folder, "results", field="leaderboard results folder")
    _named(raised.value)
    try:
        code = main(["leaderboard", "--show", folder])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "leaderboard results folder" in capsys.readouterr().err


GENERATION_FIELDS = ["source", "max_new_tokens", "temperature", "top_p", "repetition_penalty", "min_words",
                     "batch_size"]


@settings(max_examples=100, **SETTINGS)
@given(fields=st.dictionaries(st.sampled_from(GENERATION_FIELDS), VALUE | st.sampled_from(
    ["finetuned", "base", "contrast", 0, 1, 0.5, 1.0, 2])))
@example(fields={"top_p": 0.0})
@example(fields={"repetition_penalty": 0.9})
@example(fields={"source": "task"})  # the rule's task monitor is not a sampler
def test_generation_settings_validation(fields):
    """The sampler behind the weights condition's texts: every setting is valid or a named error."""
    from dataclasses import asdict

    from lm_eval_approx.features.generation import GenerationSettings

    try:
        settings_ = GenerationSettings(**fields)
    except ApproxError as exc:
        _named(exc)
        return
    assert GenerationSettings(**asdict(settings_)) == settings_
    assert 0 < settings_.top_p <= 1 and settings_.repetition_penalty >= 1 and settings_.min_words >= 1
