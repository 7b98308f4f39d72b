"""One short hash and one cache-schema version behind every key (``cache/keys.py``).

The pinned values below were computed by the code as it was before the keys went through
``cache/keys.py`` (its own ``hashlib`` call at each site, the special cases written where each key
was made); they must not move, since caches hours deep and the published ``results/cpu`` cells are
found by them. ``KEY_RULES`` holds those special cases now: a record with every field written out
must give the key that the older code gave without them, and a bumped schema must give new keys.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import pytest

from lm_eval_approx.cache import keys
from lm_eval_approx.cache.keys import (
    CACHE_SCHEMA,
    CELL_KIND,
    CELL_RECIPE_KIND,
    FIRST_SCHEMA,
    KEY_RULES,
    TASK_KIND,
    keyed_fields,
    keyed_name,
    record_key,
    short_hash,
    text_key,
)
from lm_eval_approx.cache.stages import stage_key
from lm_eval_approx.data.corpus import Corpus
from lm_eval_approx.data.selection_file import SelectedExample
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.projection import layer_seed
from lm_eval_approx.features.store import ids_fingerprint
from lm_eval_approx.tasks.kinds import CLASSIFICATION, task_key
from lm_eval_approx.training.recipe import OLD_TRAINING_PATH, TrainingRecipe
from _specs import AGNEWS, MSMARCO

BUMPED = CACHE_SCHEMA + 1
LABELS = {"finetuned": "abc", "task": "approx_agnews", "corpus": "0123", "max_length": 256}
FEATURES = {"base": "b", "finetuned": "f", "labels": "l", "params": "head", "dim": 8192, "projection": "kronecker",
            "projection_seed": 0, "checkpoints": 1, "max_length": 256}
SELECTION = {"upstream": ["a", "b"], "strategy": "select", "options": {}, "k": 300, "seed": 0, "labels_needed": True}
TRAINING = {"base": "b", "task": "approx_agnews", "selection": "s", "recipe": "r"}
# (stage, inputs as the older code passed them, its key)
PINNED_STAGES = [
    ("labels", LABELS, "33a21586b66def79"),
    ("labels", {**LABELS, "add_bos_token": True}, "5ba50ab16c8ffdb9"),
    ("base_loss", {"base": "b", "labels": "l", "max_length": 256}, "e30319692a3d05f3"),
    ("features", FEATURES, "73dd8c60b07e4bb6"),
    ("features", {**FEATURES, "checkpoints": 2, "checkpoint": 1}, "d499c7abcbf889d7"),
    ("selection", SELECTION, "64797eda78aaf8b8"),
    ("selection", {**SELECTION, "targets": "t"}, "97828450475dab47"),
    ("training", TRAINING, "69e3795d1f426632"),
    ("training", {**TRAINING, "monitor": {"corpus": "c", "finetuned": "f"}}, "2b28a138db43793c"),
]
ROWS = [SelectedExample(id=f"d{i}", text=f"text {i}", label=i % 4, label_text=None, score=0.5, weight=1.0, order=i,
                        source="s") for i in range(5)]
# A grid written out in full: a target-matching row (target_source), a row with its own recipe that
# states one pass per batch, the retraining rule, seeded retraining and the old training path.
PINNED_GRID = """
name: pinned
base: smollm2-135m
task: approx_agnews
condition: task_texts
expert: {data: "ag_news:train", size: 1000, seed: 0}
corpus: {spec: "seed:wikitext2+seed:dbpedia", size: 3000, seed: 0}
strategies:
  - {name: rds, label: rds_rule}
  - {name: select_quota, label: quota_2ep, recipe: {epochs: 2, micro_batch_size: 0}}
budgets: [300]
seeds: [0]
seed_retraining: true
limit: 1000
approx: {params: head}
device: cpu
recipe: {micro_batch_size: 0, mixed_precision: "no", batch_order: shuffled, dropout_sampler: torch}
batch_size: 16
"""
PINNED_CELLS = {"theta0": "5bd4078fef6af332", "expert": "6a384eee7b9669ca", "rds_rule-k300-s0": "e29c57fcbab6a789",
                "quota_2ep-k300-s0": "7f74441b63844ecf"}


@pytest.mark.parametrize(("stage", "inputs", "key"), PINNED_STAGES)
def test_stage_keys_are_the_ones_made_before(stage, inputs, key):
    assert stage_key(stage, inputs) == key
    assert stage_key(stage, inputs, schema=FIRST_SCHEMA) == key


def test_fingerprints_and_seeds_are_the_ones_made_before(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    from lm_eval_approx.models.loading import _file_key

    assert ids_fingerprint(["a", "b", "c:1"]) == "006ee87604e39d3c"
    assert layer_seed(7, "model.layers.0.mlp", "out") == 47401586449170805
    corpus = Corpus(["a:0", "b:1"], ["one text", "two é"], [None, None], ["a", "b"])
    assert corpus.fingerprint() == "f4f3d81c7e5dbcd5"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-one")
    assert _file_key(gguf) == "80eb46d3c40d"


def test_training_keys_are_the_ones_made_before(monkeypatch):
    from lm_eval_approx.training import loop

    monkeypatch.setattr(loop, "resolve_model", lambda name: "/models/base")
    recipe = TrainingRecipe(micro_batch_size=0, **OLD_TRAINING_PATH)
    assert loop.training_key("base", AGNEWS, ROWS, recipe) == "37de39d8bdfffd4f"
    assert loop.training_key("base", AGNEWS, ROWS, recipe, add_bos_token=False, monitor="task") == "7da00bdcc142df73"
    assert loop.training_key("base", MSMARCO, ROWS, recipe) == "19d3cefe6b8d1162"


def test_model_fingerprint_is_path_size_and_mtime(tmp_path):
    """The slow twin: the fingerprint written out from its definition (its value never changes)."""
    from lm_eval_approx.models.loading import model_fingerprint

    folder = tmp_path / "model"
    folder.mkdir()
    for name, data in (("config.json", b"{}"), ("model.safetensors", b"weights"), ("notes.txt", b"not hashed")):
        (folder / name).write_bytes(data)
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for name in ("model.safetensors", "config.json"):  # FINGERPRINT_FILES order: weights first
        stat = (folder / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    assert model_fingerprint(str(folder)) == digest.hexdigest()[:16]


def test_cell_hashes_are_the_ones_made_before(tmp_path, mirror):
    from lm_eval_approx.leaderboard.cell_keys import cell_hash
    from lm_eval_approx.leaderboard.sources import load_config

    (tmp_path / "pinned.yaml").write_text(PINNED_GRID)
    config = load_config(str(tmp_path / "pinned.yaml"))
    assert {cell.id: cell_hash(config, cell) for cell in config.cells()} == PINNED_CELLS


def test_short_hash_is_sha256_cut_and_streams():
    text = "a key\N{GREEK SMALL LETTER ALPHA}"
    twin = hashlib.sha256(text.encode()).hexdigest()
    assert short_hash(text) == short_hash(text.encode()) == twin[:16]
    assert short_hash(text, 12) == twin[:12] and short_hash(text, 64) == twin
    assert short_hash(["a k", b"ey", "\N{GREEK SMALL LETTER ALPHA}"]) == twin[:16]
    assert short_hash(part for part in (text,)) == twin[:16]
    assert short_hash([]) == hashlib.sha256(b"").hexdigest()[:16]


def test_the_rules_turn_records_written_in_full_into_the_keys_made_before():
    """The callers now pass every field; the table leaves out what the older keys never had."""
    assert stage_key("labels", {**LABELS, "add_bos_token": None}) == "33a21586b66def79"
    assert stage_key("training", {**TRAINING, "add_bos_token": None}) == "69e3795d1f426632"
    assert stage_key("features", {**FEATURES, "add_bos_token": None, "checkpoint": None}) == "73dd8c60b07e4bb6"
    assert stage_key("labels", {**LABELS, "add_bos_token": False}) != "33a21586b66def79"
    # a stage the table does not name keeps every field, None included (probes and generations
    # always recorded add_bos_token)
    assert stage_key("generations", {"n": 1, "add_bos_token": None}) != stage_key("generations", {"n": 1})


def test_the_table_resolves_the_legacy_names_and_fields():
    assert keyed_name(TASK_KIND, "approx_agnews@57ff6a8c4570f56b") == "approx_agnews"
    assert keyed_name(TASK_KIND, "approx_msmarco_last@438d1e7cec95817d") == "approx_msmarco"
    assert keyed_name(TASK_KIND, "approx_agnews@0000000000000000") == "approx_agnews@0000000000000000"
    recipe = {"epochs": 2, "micro_batch_size": 0, **OLD_TRAINING_PATH}
    assert keyed_fields(CELL_RECIPE_KIND, recipe) == {"epochs": 2}
    assert keyed_fields(CELL_RECIPE_KIND, {"micro_batch_size": 2, "mixed_precision": "bf16"}) == {
        "micro_batch_size": 2, "mixed_precision": "bf16"}
    full = {"cell": "theta0", "seed_retraining": False, "target_source": None, "micro_batches": {},
            "training_path": {"expert": {"batch_order": "bucketed"}}}
    assert keyed_fields(CELL_KIND, full) == {"cell": "theta0", "training_path": {"expert": {"batch_order": "bucketed"}}}


def test_the_table_is_history_with_a_reason_per_entry():
    from lm_eval_approx import pipeline

    stages = {pipeline.LABEL_STAGE, pipeline.BASE_LOSS_STAGE, pipeline.FEATURE_STAGE, pipeline.TRAINING_STAGE}
    assert {(FIRST_SCHEMA, stage) for stage in stages} <= set(KEY_RULES)
    for (schema, kind), rule in KEY_RULES.items():
        assert schema == FIRST_SCHEMA and kind and rule.reason and "\n" not in rule.reason
        assert rule.omitted or rule.renamed
        with pytest.raises(TypeError):
            rule.omitted["x"] = 1  # type: ignore[index]


class _PromptSpec:
    """A spec with a prompt identity, as an lm-eval task has."""

    name, kind, choices = "approx_agnews", CLASSIFICATION, ("a", "b")

    def prompt_identity(self) -> str:
        return "57ff6a8c4570f56b"


def test_a_bumped_schema_gives_new_keys():
    for stage, inputs, key in PINNED_STAGES:
        assert stage_key(stage, inputs, schema=BUMPED) != key
        assert stage_key(stage, inputs, schema=BUMPED) == stage_key(stage, inputs, schema=BUMPED)
    # from the bump on, no field is left out and no task goes by its older name
    assert stage_key("labels", {**LABELS, "add_bos_token": None}, schema=BUMPED) != stage_key("labels", LABELS,
                                                                                              schema=BUMPED)
    assert task_key(_PromptSpec()) == "approx_agnews"
    assert task_key(_PromptSpec(), schema=BUMPED) == "approx_agnews@57ff6a8c4570f56b"
    assert text_key("a\nb") == short_hash("a\nb") != text_key("a\nb", schema=BUMPED)
    record = {"a": 1}
    assert record_key("recipe", record, separators=(",", ":")) == short_hash(json.dumps(record, separators=(",", ":")))
    assert record_key("recipe", record, schema=BUMPED) != record_key("recipe", record)


def test_a_bumped_schema_gives_every_cell_a_new_hash(tmp_path, mirror, monkeypatch):
    from lm_eval_approx.leaderboard import cell_keys
    from lm_eval_approx.leaderboard.sources import load_config

    (tmp_path / "pinned.yaml").write_text(PINNED_GRID)
    config = load_config(str(tmp_path / "pinned.yaml"))
    monkeypatch.setattr(cell_keys, "record_key", functools.partial(keys.record_key, schema=BUMPED))
    bumped = {cell.id: cell_keys.cell_hash(config, cell) for cell in config.cells()}
    assert set(bumped) == set(PINNED_CELLS) and not set(bumped.values()) & set(PINNED_CELLS.values())


@pytest.mark.parametrize("schema", [0, -1, True, "1", 1.0, None])
def test_a_schema_that_is_not_a_number_from_the_first_is_a_named_error(schema):
    with pytest.raises(ConfigError, match="schema") as info:
        stage_key("labels", LABELS, schema=schema)
    assert info.value.field == "schema" and str(FIRST_SCHEMA) in info.value.accepted


def test_every_key_site_goes_through_cache_keys():
    """No module cuts its own SHA-256 any more: ``short_hash`` is the one place."""
    package = Path(__file__).resolve().parents[1] / "lm_eval_approx"
    cut = [str(path.relative_to(package)) for path in package.rglob("*.py")
           if "hexdigest()[:" in path.read_text(encoding="utf-8") and path.name != "keys.py"]
    assert cut == []
