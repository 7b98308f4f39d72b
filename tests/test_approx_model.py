"""The cached pipeline behind ``--model approx``: stage reuse/invalidation and the lm-eval run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lm_eval_approx.errors import ConfigError, UnknownNameError
from lm_eval_approx.pipeline import ApproxConfig, run_approximation
from lm_eval_approx.training.recipe import TrainingRecipe
from lm_eval_approx.data.selection_file import SelectedExample, read_selection
from lm_eval_approx.cache.stages import run_stage, stage_key
from _specs import AGNEWS

TOPICS = ["peace talks in the capital", "the team won the match", "stocks and profits rose", "a new chip and software"]
FAST = TrainingRecipe(epochs=1, batch_size=8, validation_fraction=0.0)


@pytest.fixture(scope="module")
def expert_and_corpus(tiny_llama, tmp_path_factory):
    """θf = tiny Llama + a LoRA trained on labelled toy news; a 40-document candidate file."""
    from lm_eval_approx.training.loop import train_adapter

    root = tmp_path_factory.mktemp("approx")
    rows = [SelectedExample(id=str(i), text=f"{TOPICS[i % 4]} number {i}", label=i % 4) for i in range(32)]
    expert = train_adapter(tiny_llama, AGNEWS, rows, TrainingRecipe(epochs=2, batch_size=8, learning_rate=1e-2),
                           root / "expert", progress=False)
    corpus = root / "candidates.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{TOPICS[(i * 3) % 4]} candidate {i}"}) + "\n" for i in range(40)))
    return str(expert), str(corpus)


def _config(tiny_llama, expert, corpus, **overrides):
    return ApproxConfig(**{"base": tiny_llama, "finetuned": expert, "corpus": corpus, "strategy": "select",
                           "k": 8, "dim": 64, **overrides})


def test_stage_cache_reuses_and_invalidates(tiny_llama, expert_and_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    expert, corpus = expert_and_corpus
    first = run_approximation(_config(tiny_llama, expert, corpus), FAST)
    assert [s.name for s in first.stages] == ["labels", "features", "selection", "training"]
    assert not any(s.cached for s in first.stages)
    again = run_approximation(_config(tiny_llama, expert, corpus), FAST)
    assert all(s.cached for s in again.stages) and again.adapter == first.adapter
    other_k = run_approximation(_config(tiny_llama, expert, corpus, k=6), FAST)
    cached = {s.name: s.cached for s in other_k.stages}
    assert cached == {"labels": True, "features": True, "selection": False, "training": False}
    assert len(read_selection(other_k.selection)) == 6
    other_recipe = run_approximation(_config(tiny_llama, expert, corpus), TrainingRecipe(epochs=1, batch_size=4, validation_fraction=0.0))
    assert {s.name: s.cached for s in other_recipe.stages} == {"labels": True, "features": True, "selection": True, "training": False}
    ratio = run_approximation(_config(tiny_llama, expert, corpus, strategy="likelihood_ratio"), FAST)
    assert [s.name for s in ratio.stages] == ["labels", "base_loss", "selection", "training"]
    assert ratio.stages[0].cached


def test_selection_file_has_pseudo_labels(tiny_llama, expert_and_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    expert, corpus = expert_and_corpus
    result = run_approximation(_config(tiny_llama, expert, corpus, strategy="random", k=5), FAST, out_dir=tmp_path / "out")
    rows = read_selection(tmp_path / "out" / "selection.jsonl")
    assert len(rows) == 5 and all(r.label in range(4) and r.label_text == AGNEWS.choices[r.label] for r in rows)
    assert [r.order for r in rows] == list(range(5))
    assert rows == read_selection(result.selection)


def test_stage_key_depends_on_inputs_only():
    assert stage_key("x", {"a": 1, "b": 2}) == stage_key("x", {"b": 2, "a": 1})
    assert stage_key("x", {"a": 1}) != stage_key("x", {"a": 2}) != stage_key("y", {"a": 2})


def test_interrupted_stage_is_not_reported_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    calls = []

    def crashing(folder):
        calls.append(folder)
        (folder / "partial.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage("demo", {"n": 1}, crashing)
    record = run_stage("demo", {"n": 1}, lambda folder: {"ok": True})
    assert not record.cached and record.info == {"ok": True} and len(calls) == 1
    assert run_stage("demo", {"n": 1}, crashing).cached


def test_bad_config_is_named_before_compute(tiny_llama):
    with pytest.raises(UnknownNameError, match="select"):
        ApproxConfig(base=tiny_llama, finetuned=tiny_llama, strategy="selct").resolve()
    with pytest.raises(ConfigError, match="k"):
        ApproxConfig(base=tiny_llama, finetuned=tiny_llama, k=-1)
    with pytest.raises(UnknownNameError, match="approx_agnews"):
        ApproxConfig(base=tiny_llama, finetuned=tiny_llama, task="agnews").resolve()
    from lm_eval_approx.harness.approx_model import split_model_args

    with pytest.raises(ConfigError, match="train_epochz"):
        split_model_args({"base": "a", "finetuned": "b", "train_epochz": 2})
    with pytest.raises(ConfigError, match="finetuned"):
        split_model_args({"base": "a"})
    config, recipe, rest = split_model_args({"base": tiny_llama, "finetuned": tiny_llama, "k": 3, "train_epochs": 2,
                                             "strategy_batch_size": 4, "strategy": "select_batched", "batch_size": 8,
                                             "train_target_modules": "all-linear+head"})
    assert config.k == 3 and recipe.epochs == 2 and config.strategy_options == {"batch_size": 4}
    assert rest == {"batch_size": 8} and recipe.target_modules == ("all-linear", "head")
    config, _, _ = split_model_args({"base": tiny_llama, "finetuned": tiny_llama,
                                     "params": "model.layers.0.mlp.up_proj+lm_head"})
    assert config.params == "model.layers.0.mlp.up_proj,lm_head"


def test_unknown_model_arg_is_a_named_error_before_any_compute(tiny_llama, monkeypatch):
    """A key HFLM and from_pretrained do not take used to reach the model class as a bare TypeError
    after the whole pipeline; now it is an UnknownModelArgError listing the accepted keys, raised
    before anything runs. HFLM's, from_pretrained's and θ0's config keys still pass through."""
    from lm_eval.api.registry import get_model

    from lm_eval_approx.harness import approx_model
    from lm_eval_approx.harness.approx_model import split_model_args
    from lm_eval_approx.harness.model_args import UnknownModelArgError
    from lm_eval_approx.harness.registration import APPROX_MODEL, register_models

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the pipeline ran before the model args were checked")

    monkeypatch.setattr(approx_model, "run_approximation", must_not_run)
    register_models()
    with pytest.raises(UnknownModelArgError, match="include_path") as caught:
        get_model(APPROX_MODEL).create_from_arg_string(
            f"base={tiny_llama},finetuned={tiny_llama},include_path=/tmp/tasks", {"batch_size": 4, "device": "cpu"})
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError) and "--include_path" in message
    for key in ("finetuned", "strategy", "train_<recipe field>", "batch_size", "add_bos_token", "attn_implementation"):
        assert key in message, key
    with pytest.raises(UnknownModelArgError, match="Did you mean 'max_length'"):
        split_model_args({"base": tiny_llama, "finetuned": tiny_llama, "max_lenght": 64})
    _, _, rest = split_model_args({"base": tiny_llama, "finetuned": tiny_llama, "batch_size": 4, "dtype": "float32",
                                   "attn_implementation": "eager", "use_cache": False, "verify_packing": True})
    assert set(rest) == {"batch_size", "dtype", "attn_implementation", "use_cache", "verify_packing"}


def test_model_approx_through_lm_eval_cli(tiny_llama, expert_and_corpus, tmp_path):
    expert, corpus = expert_and_corpus
    mirror = tmp_path / "mirror" / "ag_news"
    mirror.mkdir(parents=True)
    for split in ("train", "test"):
        (mirror / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": f"{TOPICS[i % 4]} number {i}", "label": i % 4}) + "\n" for i in range(12)))
    env = {**os.environ, "LM_EVAL_APPROX_DATA": str(tmp_path / "mirror"), "LM_EVAL_APPROX_CACHE": str(tmp_path / "cache")}
    args = ["run", "--model", "approx", "--model_args",
            f"base={tiny_llama},finetuned={expert},strategy=select_batched,strategy_batch_size=4,k=8,corpus={corpus},"
            "dim=64,train_epochs=1,train_validation_fraction=0.0",
            "--tasks", "approx_agnews", "--limit", "6", "--device", "cpu", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-m", "lm_eval_approx.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    approx = result["config"]["approx"]
    assert approx["strategy"] == "select_batched" and approx["k"] == 8 and approx["selected"] == 8
    assert set(approx["stage_keys"]) == {"labels", "features", "selection", "training"}
    assert "acc,none" in result["results"]["approx_agnews"]
    assert os.path.isdir(approx["adapter"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_model_approx_end_to_end_on_smollm2(mirror, tmp_path, monkeypatch):
    """The real model: a LoRA expert on 16 AG News documents, 24 wiki candidates, k = 8, 10 test documents.
    It takes ~3.5 min alone on a slow 2-core machine and passed the suite's 600 s limit only when
    the machine was quiet, so it gets room for a loaded one (its subprocess still stops at 900 s)."""
    import time

    from lm_eval_approx.data.corpus import load_corpus
    from lm_eval_approx.training.loop import train_adapter

    env = {**os.environ, "LM_EVAL_APPROX_DATA": str(mirror), "LM_EVAL_APPROX_CACHE": str(tmp_path / "cache")}
    monkeypatch.setenv("LM_EVAL_APPROX_DATA", str(mirror))
    news = load_corpus("ag_news:train", limit=16, seed=0)
    rows = [SelectedExample(id=i, text=t, label=y) for i, t, y in zip(news.ids, news.texts, news.labels)]
    expert = train_adapter("smollm2-135m", AGNEWS, rows, TrainingRecipe(epochs=1, batch_size=8, validation_fraction=0.0),
                           tmp_path / "expert", progress=False)
    start = time.perf_counter()
    args = ["run", "--model", "approx", "--model_args",
            f"base=smollm2-135m,finetuned={expert},strategy=select,k=8,corpus=seed:dbpedia,corpus_size=24,"
            "train_epochs=1,train_batch_size=8,train_validation_fraction=0.0",
            "--tasks", "approx_agnews", "--limit", "10", "--device", "cpu", "--batch_size", "16",
            "--output_path", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-m", "lm_eval_approx.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"--model approx on SmolLM2 (24 candidates, k=8, 10 test documents): {time.perf_counter() - start:.0f} s")
    result = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    approx = result["config"]["approx"]
    assert approx["selected"] == 8 and approx["stage_cached"]["training"] is False
    assert 0.0 <= result["results"]["approx_agnews"]["acc,none"] <= 1.0
    selected = read_selection(approx["selection_file"])
    assert all(row.source == "seed:dbpedia" and row.label in range(4) for row in selected)


def test_checkpoint_features_are_one_stage_per_alpha_shared_across_m(tiny_llama, expert_and_corpus, tmp_path,
                                                                      monkeypatch):
    import numpy as np

    from lm_eval_approx.data.corpus import load_corpus
    from lm_eval_approx.features.config import FeatureConfig
    from lm_eval_approx.features.build import build_feature_stores, open_feature_stores
    from lm_eval_approx.pipeline import FEATURE_DIR, LABELS_FILE

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    expert, corpus = expert_and_corpus
    plain = run_approximation(_config(tiny_llama, expert, corpus), FAST)
    two = run_approximation(_config(tiny_llama, expert, corpus, strategy="select_checkpoints", checkpoints=2), FAST)
    assert two.labels() == ["labels", "features@1/2", "features", "selection", "training"]
    assert [s.cached for s in two.stages[:3]] == [True, False, True]
    assert two.stages[2].key == plain.stages[1].key  # θf's own features: select's stage, not recomputed
    four = run_approximation(_config(tiny_llama, expert, corpus, strategy="select_checkpoints", checkpoints=4), FAST)
    assert four.labels()[1:5] == ["features@1/4", "features@1/2", "features@3/4", "features"]
    assert [s.cached for s in four.stages[1:5]] == [False, True, False, True]
    assert set(four.info()["stage_keys"]) == {"labels", "features@1/4", "features@1/2", "features@3/4", "features",
                                              "selection", "training"}
    # oracle: the per-α stages hold exactly the stores one M = 4 extraction builds in one folder
    config = _config(tiny_llama, expert, corpus)
    whole = build_feature_stores(
        FeatureConfig(base=tiny_llama, finetuned=expert, task=config.task, params=config.params, dim=config.dim,
                      projection=config.projection, seed=config.projection_seed, checkpoints=4,
                      batch_size=config.extract_batch_size, max_length=config.extract_max_length, corpus=corpus,
                      corpus_limit=config.corpus_size, corpus_seed=config.corpus_seed),
        load_corpus(corpus, config.corpus_size, config.corpus_seed), np.load(four.stages[0].path / LABELS_FILE),
        tmp_path / "whole")
    staged = [store for stage in four.stages[1:5] for store in open_feature_stores(stage.path / FEATURE_DIR)]
    assert [s.alpha for s in staged] == [s.alpha for s in whole] == [0.25, 0.5, 0.75, 1.0]
    for mine, oracle in zip(staged, whole):
        np.testing.assert_allclose(np.asarray(mine.features, dtype=np.float32),
                                   np.asarray(oracle.features, dtype=np.float32), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(mine.target, oracle.target, rtol=1e-5, atol=1e-7)


def test_add_bos_token_reaches_every_stage_and_its_keys(tiny_llama, expert_and_corpus, tmp_path, monkeypatch):
    """``--model_args ...,add_bos_token=True`` goes to HFLM *and* to the pipeline: every encoding
    of labels, features, teacher probes and training uses it, and each stage's key records it (an
    unset value keeps the keys stages always had)."""
    from lm_eval_approx.features import encoding
    from lm_eval_approx.harness.approx_model import split_model_args

    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path / "cache"))
    expert, corpus = expert_and_corpus
    config, _, rest = split_model_args({"base": tiny_llama, "finetuned": expert, "add_bos_token": "True"})
    assert config.add_bos_token is True and rest["add_bos_token"] is True  # HFLM gets the same boolean
    with pytest.raises(ConfigError, match="add_bos_token"):
        split_model_args({"base": tiny_llama, "finetuned": expert, "add_bos_token": "maybe"})
    seen = []
    real = encoding.tok_encode

    def spy(tokenizer, text, add_bos_token=encoding.HFLM_ADD_BOS_TOKEN):
        seen.append(add_bos_token)
        return real(tokenizer, text, add_bos_token)

    monkeypatch.setattr(encoding, "tok_encode", spy)
    recipe = TrainingRecipe(epochs=1, batch_size=8, validation_fraction=0.0, stop_on="teacher_kl", monitor_size=8)
    plain = run_approximation(_config(tiny_llama, expert, corpus), recipe)
    assert seen and set(seen) == {None}
    seen.clear()
    with_bos = run_approximation(_config(tiny_llama, expert, corpus, add_bos_token=False), recipe)
    assert seen and set(seen) == {False}
    assert all(a.key != b.key for a, b in zip(plain.stages, with_bos.stages))
