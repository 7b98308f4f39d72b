"""Cache keys and result hashes are a contract with every cache and results folder already on disk.

The pinned values below were computed by the code before the package was restructured into role
subpackages (and again after it: they agree), so a change that alters any of them invalidates
users' caches and must be deliberate. The published runs in ``results/cpu`` must stay "finished"
for ``leaderboard --resume``: every recorded cell's hash still matches its config.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lm_eval_approx.cache.stages import stage_key
from lm_eval_approx.data.corpus import load_corpus
from lm_eval_approx.data.selection_file import SelectedExample, selection_hash
from lm_eval_approx.leaderboard.runner import RESULTS_DIR, finished_cells
from lm_eval_approx.leaderboard.sources import load_config
from lm_eval_approx.cache.paths import cache_path
from lm_eval_approx.models.loading import DIGESTS_DIR, MODELS_DIR, _file_key
from lm_eval_approx.training.recipe import OLD_TRAINING_PATH, TrainingRecipe

RESULTS = Path(__file__).resolve().parents[1] / "results" / "cpu"


def test_recipe_hashes_are_unchanged():
    """Micro-batches of 2 and then the fast training path became defaults after these were pinned: a
    recipe that spells out one pass per batch (``micro_batch_size=0``) and the old training path
    keeps its old hash, the new defaults have their own."""
    assert TrainingRecipe(micro_batch_size=0, **OLD_TRAINING_PATH).recipe_hash() == "4ebcc1be9804088f"
    custom = TrainingRecipe(epochs=2, lora_rank=8, learning_rate=1e-4, batch_size=8, max_length=64,
                            micro_batch_size=0, **OLD_TRAINING_PATH)
    assert custom.recipe_hash() == "50c11ba02b690353"
    assert TrainingRecipe().recipe_hash() != "4ebcc1be9804088f"
    assert TrainingRecipe(micro_batch_size=0).recipe_hash() != "4ebcc1be9804088f"


def test_a_gguf_file_is_keyed_by_its_bytes_not_its_place(tmp_path):
    """The converted folder (and so every stage keyed by it) follows the file's content: the same
    GGUF in a second venv or checkout reuses the conversion; other bytes never do."""
    first, second, other = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf", tmp_path / "c.gguf"
    for path, data in ((first, b"GGUF-one"), (second, b"GGUF-one"), (other, b"GGUF-two")):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    key = _file_key(first)
    assert len(key) == 12 and _file_key(second) == key and _file_key(other) != key
    assert _file_key(first) == key  # from the remembered digest, as the first time


def test_a_damaged_digest_memo_is_recomputed(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF-one")
    key = _file_key(path)
    for memo in cache_path(MODELS_DIR, DIGESTS_DIR).iterdir():
        memo.write_text("not a digest")
    assert _file_key(path) == key


def test_a_micro_batch_that_splits_no_batch_is_one_pass():
    """Slices as large as the batch change nothing the loop computes, so nothing cached re-keys."""
    one_pass = TrainingRecipe(batch_size=4, micro_batch_size=0).recipe_hash()
    assert TrainingRecipe(batch_size=4, micro_batch_size=4).recipe_hash() == one_pass
    assert TrainingRecipe(batch_size=4, micro_batch_size=9).recipe_hash() == one_pass
    assert TrainingRecipe(batch_size=4, micro_batch_size=2).recipe_hash() != one_pass


def test_stage_and_selection_keys_are_unchanged():
    inputs = {"finetuned": "abc", "task": "approx_agnews", "corpus": "0123", "max_length": 256}
    assert stage_key("labels", inputs) == "33a21586b66def79"
    rows = [SelectedExample(id=f"d{i}", text=f"text {i}", label=i % 4, label_text=None, score=0.5,
                            weight=1.0, order=i, source="s") for i in range(5)]
    assert selection_hash(rows) == "c50f99a2037a3fad"


def test_corpus_fingerprint_is_unchanged(mirror):
    corpus = load_corpus("seed:wikitext2+seed:dbpedia", limit=50, seed=3)
    assert corpus.fingerprint() == "ef8c7e9332d7cbf1"


@pytest.mark.parametrize("name", ["agnews", "dbpedia", "sst2", "demo_candidate", "demo_search/b4/config",
                                  "demo_search/bal/config"])
def test_published_cpu_results_stay_finished(mirror, name):
    """Every results JSON of results/cpu/<name> whose cell is still in the config counts as finished
    (these configs pin ``micro_batch_size: 0``, the one pass their cells were trained with)."""
    config = load_config(str(RESULTS / f"{name}.yaml"))
    out = RESULTS / name.removesuffix("/config")
    recorded = {p.stem for p in (out / RESULTS_DIR).glob("*.json")}
    expected = {cell.id for cell in config.cells()} & recorded
    assert expected and finished_cells(out, config) == expected


def test_cells_trained_in_slices_are_not_the_one_pass_cells(mirror):
    """Without the pin, the default's micro-batches split the batches of 16 these cells were trained
    with in one pass: ``--resume`` must recompute them, not keep scores of another computation."""
    config = load_config(str(RESULTS / "dbpedia.yaml"))
    config.recipe.pop("micro_batch_size")
    assert finished_cells(RESULTS / "dbpedia", config) == {"theta0"}


@pytest.mark.parametrize("name", ["msmarco", "msmarco_indomain"])
def test_language_modelling_results_reopen_under_rolling_windows(mirror, name):
    """The MS MARCO grids were trained and featurised with passages cut at max_length; since long
    passages are rolling windows (``tasks.kinds.LM_TEXT_RULE``) none of their cells counts as
    finished, so ``--resume`` recomputes them instead of mixing the two rules in one table."""
    config = load_config(str(RESULTS / f"{name}.yaml"))
    assert list((RESULTS / name / RESULTS_DIR).glob("*.json"))
    assert finished_cells(RESULTS / name, config) == set()
