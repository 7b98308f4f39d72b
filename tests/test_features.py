"""build_feature_store end to end: oracle features, checkpoints, resume, mismatch, LoRA, CLI, 2 processes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_model
from test_gradients import _oracle

from lm_eval_approx.data.corpus import Corpus
from lm_eval_approx.errors import ConfigError, StoreMismatchError
from lm_eval_approx.features.config import FeatureConfig
from lm_eval_approx.features.build import (
    build_feature_store,
    build_feature_stores,
    open_feature_stores,
)
from lm_eval_approx.models.layers import linear_modules, oriented_weight, weight_delta
from lm_eval_approx.features.encoding import encode_examples, flatten
from lm_eval_approx.models.loading import load_model, load_tokenizer
from lm_eval_approx.features.projection import make_projector
from lm_eval_approx.features.store import FeatureStore
from _specs import AGNEWS

TEXTS = ["The team won the final match of the season.", "Stocks fell as the central bank raised rates.",
         "Leaders met in Geneva.", "A new chip doubles the speed of scientific computing.",
         "Peace talks resumed in the capital after a long pause.", "Shares of the chip maker rose.",
         "The striker scored twice.", "Scientists found water on a distant planet."]
F16 = {"rtol": 2e-3, "atol": 2e-4}


def _corpus(n=len(TEXTS)):
    return Corpus(ids=[f"doc:{i}" for i in range(n)], texts=TEXTS[:n], labels=[i % 4 for i in range(n)],
                  sources=["test"] * n)


@pytest.fixture(scope="module")
def tuned_gpt2(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tuned-gpt2"), "gpt2", seed=1)


def _config(base, tuned, **kw):
    return FeatureConfig(base=base, finetuned=tuned, task="approx_agnews", batch_size=3, max_length=48, **kw)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_long_passages_are_stored_as_their_windows_sum(tiny_gpt2, tuned_gpt2, tmp_path, batch_size):
    """Language modelling at max_length 8: every passage spans several rolling windows, and its row
    is the gradient, loss and exact ‖G‖² of the whole passage (the windows' plain backwards added),
    whatever the batch size (a document never spans two batches)."""
    from _specs import MSMARCO

    config = FeatureConfig(base=tiny_gpt2, finetuned=tuned_gpt2, task="approx_msmarco", batch_size=batch_size,
                           max_length=8, projection="identity", params="head")
    store = build_feature_stores(config, _corpus(), None, tmp_path / "out")[0]
    assert store.meta["lm_text"] == "rolling-windows"
    model_f, tokenizer = load_model(tuned_gpt2), load_tokenizer(tiny_gpt2)
    documents = encode_examples(tokenizer, MSMARCO, TEXTS, None, 8)
    assert min(len(d) for d in documents) > 1
    for i, windows in enumerate(documents):
        oracle = _oracle(model_f, windows, ["lm_head"])
        grad = sum(g["lm_head"] for _, g in oracle)
        assert store.loss[i] == pytest.approx(sum(loss for loss, _ in oracle), rel=1e-5)
        assert store.sqnorm[i] == pytest.approx(grad.pow(2).sum().item(), rel=1e-4)
        np.testing.assert_allclose(store.features[i].astype(np.float32), grad.reshape(-1), **F16)


def test_config_validates_and_round_trips():
    config = FeatureConfig(base="a", finetuned="b", params="x.y,z", checkpoints=4)
    assert FeatureConfig.from_json(config.to_json()) == config
    assert config.alphas == [0.25, 0.5, 0.75, 1.0] and config.param_names == ["x.y", "z"]
    for field, value in [("dim", 0), ("projection", "sjlt9"), ("labels", "gold"), ("task", "nope"),
                         ("base", ""), ("batch_size", True), ("device", "tpu"), ("params", " , ")]:
        with pytest.raises(ConfigError, match=field):
            FeatureConfig(**{"base": "a", "finetuned": "b", field: value})
    with pytest.raises(ConfigError, match="FeatureConfig.colour"):
        FeatureConfig.from_dict({"base": "a", "finetuned": "b", "colour": 1})


def test_head_features_match_oracle_at_theta_f_and_checkpoint(tiny_gpt2, tuned_gpt2, tmp_path):
    stores = build_feature_stores(_config(tiny_gpt2, tuned_gpt2, projection="identity", checkpoints=2),
                                  _corpus(), None, tmp_path / "out")
    assert [s.alpha for s in stores] == [0.5, 1.0] and [s.path.name for s in stores] == ["alpha-0.5000", "alpha-1.0000"]
    assert [s.alpha for s in open_feature_stores(tmp_path / "out")] == [0.5, 1.0]
    model0, model_f = load_model(tiny_gpt2), load_model(tuned_gpt2)
    tokenizer = load_tokenizer(tiny_gpt2)
    want_target = (oriented_weight(model0.lm_head) - oriented_weight(model_f.lm_head)).detach().reshape(-1)
    middle = copy.deepcopy(model_f)
    with torch.no_grad():
        for p0, pm in zip(model0.parameters(), middle.parameters()):
            pm.copy_(p0 + 0.5 * (pm - p0))
    np.testing.assert_array_equal(stores[0].labels, stores[1].labels)
    encoded, _ = flatten(encode_examples(tokenizer, AGNEWS, TEXTS, stores[1].labels, 48))
    for store, model in zip(stores, (middle, model_f)):
        np.testing.assert_allclose(store.target, want_target.numpy(), rtol=1e-6)
        for i, (loss, grads) in enumerate(_oracle(model, encoded, ["lm_head"])):
            assert store.loss[i] == pytest.approx(loss, rel=1e-5)
            assert store.sqnorm[i] == pytest.approx(grads["lm_head"].pow(2).sum().item(), rel=1e-4)
            np.testing.assert_allclose(store.features[i].astype(np.float32), grads["lm_head"].reshape(-1), **F16)


def test_kronecker_head_store_keeps_low_rank_factors(tiny_gpt2, tuned_gpt2, tmp_path):
    store = build_feature_store(_config(tiny_gpt2, tuned_gpt2, dim=256), _corpus(), None, tmp_path / "k")
    gf = store.gradient_features()
    a, b = gf.factors
    assert a.shape == (len(TEXTS), 3, 16) and b.shape == (len(TEXTS), 3, 16)
    rebuilt = np.einsum("nri,nrj->nij", a.astype(np.float32), b.astype(np.float32)).reshape(len(TEXTS), -1)
    np.testing.assert_allclose(gf.matrix.astype(np.float32), rebuilt, rtol=1e-2, atol=1e-3)


def test_interrupted_run_resumes_to_identical_features(tiny_gpt2, tuned_gpt2, tmp_path, monkeypatch):
    config = _config(tiny_gpt2, tuned_gpt2, params="changed", dim=200)
    reference = build_feature_store(config, _corpus(), None, tmp_path / "ref")
    real_write, calls = FeatureStore.write_rows, []

    def dying_write(self, *args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_rows", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build_feature_store(config, _corpus(), None, tmp_path / "run")
    monkeypatch.setattr(FeatureStore, "write_rows", real_write)
    partial = FeatureStore.open(tmp_path / "run")
    assert 0 < int(partial.done.sum()) < len(TEXTS)
    resumed = build_feature_store(config, _corpus(), None, tmp_path / "run")
    for column in ("features", "loss", "labels", "sqnorm", "target"):
        np.testing.assert_array_equal(getattr(resumed, column), getattr(reference, column))
    with pytest.raises(StoreMismatchError, match="seed"):
        build_feature_store(_config(tiny_gpt2, tuned_gpt2, params="changed", dim=200, seed=1),
                            _corpus(), None, tmp_path / "run")


def test_true_labels_and_errors(tiny_gpt2, tuned_gpt2, tmp_path):
    store = build_feature_store(_config(tiny_gpt2, tuned_gpt2, labels="true", dim=64), _corpus(), None, tmp_path / "t")
    np.testing.assert_array_equal(store.labels, [i % 4 for i in range(len(TEXTS))])
    with pytest.raises(ConfigError, match="identical"):
        build_feature_store(_config(tiny_gpt2, tiny_gpt2, params="changed"), _corpus(), None, tmp_path / "same")


def test_lora_adapter_target_equals_materialised_delta(tiny_gpt2, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                      init_lora_weights=False)
    get_peft_model(load_model(tiny_gpt2), lora).save_pretrained(tmp_path / "adapter")
    config = _config(tiny_gpt2, str(tmp_path / "adapter"), params="changed", dim=300, seed=2)
    store = build_feature_store(config, _corpus(4), None, tmp_path / "lora")
    names = store.meta["params"]
    assert len(names) == 6 and all(n.endswith(("c_attn", "c_proj")) for n in names)
    base, merged = load_model(tiny_gpt2), load_model(str(tmp_path / "adapter")).merge_and_unload()
    mods0, mods_m = linear_modules(base), linear_modules(merged)
    projector = make_projector("kronecker", {n: tuple(oriented_weight(mods0[n]).shape) for n in names}, 300, 2)
    want = projector.project_delta({n: weight_delta(mods0[n], mods_m[n]) for n in names})
    assert all(weight_delta(mods0[n], mods_m[n]).terms[0][1] is None for n in names), "materialised here"
    np.testing.assert_allclose(store.target, want.numpy(), rtol=1e-4, atol=1e-5)


def _cli(args, env, nproc=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(29500 + os.getpid() % 1000), "-m"] if nproc > 1 else [sys.executable, "-m"]
    return subprocess.run(launcher + ["lm_eval_approx.cli", "features"] + args, env=env, capture_output=True,
                          text=True, timeout=240)


def test_two_process_run_equals_one_process(tiny_gpt2, tuned_gpt2, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    args = ["--base", tiny_gpt2, "--finetuned", tuned_gpt2, "--task", "approx_agnews", "--corpus", str(corpus),
            "--params", "changed", "--dim", "200", "--batch-size", "3", "--max-length", "48", "--checkpoints", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", LM_EVAL_APPROX_LOAD_PLUGINS="",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    from lm_eval_approx.cli import main

    assert main(["features"] + args + ["--out", str(tmp_path / "one")]) == 0
    two = _cli(args + ["--out", str(tmp_path / "two")], env, nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    for a, b in zip(open_feature_stores(tmp_path / "one"), open_feature_stores(tmp_path / "two")):
        assert a.ids == b.ids and a.alpha == b.alpha and b.complete
        np.testing.assert_allclose(a.features.astype(np.float32), b.features.astype(np.float32), **F16)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.target, b.target)
    assert main(["features"] + args[:-2] + ["--checkpoints", "0", "--out", str(tmp_path / "bad")]) == 2


def test_lora_checkpoint_scales_the_update_and_restores(tiny_tokenizer):
    from conftest import build_tiny_model
    from test_gradients import _lora

    from lm_eval_approx.models.interpolation import interpolated

    base = build_tiny_model("gpt2", len(tiny_tokenizer), seed=0)
    tuned = _lora(base)
    name = "transformer.h.0.attn.c_attn"
    full = weight_delta(linear_modules(base)[name], linear_modules(tuned)[name]).materialise()
    with interpolated(base, tuned, 0.25):
        quarter = weight_delta(linear_modules(base)[name], linear_modules(tuned)[name]).materialise()
    torch.testing.assert_close(quarter, 0.25 * full, atol=1e-6, rtol=1e-5)
    after = weight_delta(linear_modules(base)[name], linear_modules(tuned)[name]).materialise()
    torch.testing.assert_close(after, full)
    with pytest.raises(ConfigError, match="alpha"):
        with interpolated(base, tuned, 1.5):
            pass


def test_sqnorm_exact_and_projected(tiny_gpt2, tuned_gpt2, tmp_path):
    exact = build_feature_store(_config(tiny_gpt2, tuned_gpt2, params="changed", projection="identity",
                                        sqnorm="exact"), _corpus(4), None, tmp_path / "exact")
    flat = exact.features.astype(np.float32)
    assert exact.meta["sqnorm"] == "exact"
    np.testing.assert_allclose(exact.sqnorm, (flat ** 2).sum(axis=1), rtol=5e-3)
    auto = build_feature_store(_config(tiny_gpt2, tuned_gpt2, params="changed", dim=100), _corpus(4), None,
                               tmp_path / "auto")
    assert auto.meta["sqnorm"] == "projected"
    np.testing.assert_allclose(auto.sqnorm, (auto.features.astype(np.float32) ** 2).sum(axis=1), rtol=5e-3)


def test_cli_features_then_select_reads_the_recorded_corpus(tiny_gpt2, tuned_gpt2, tmp_path):
    """`features` records the corpus spec and draw in the store; `select` reloads the texts from it."""
    from lm_eval_approx.cli import main
    from lm_eval_approx.data.selection_file import read_selection

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    assert main(["features", "--base", tiny_gpt2, "--finetuned", tuned_gpt2, "--task", "approx_agnews",
                 "--corpus", str(corpus), "--limit", str(len(TEXTS) - 1), "--corpus-seed", "3",
                 "--dim", "64", "--out", str(tmp_path / "feats")]) == 0
    store = open_feature_stores(tmp_path / "feats")[-1]
    assert store.meta["corpus"] == str(corpus) and store.meta["corpus_limit"] == len(TEXTS) - 1
    assert main(["select", "--strategy", "select", "--k", "3", "--features", str(tmp_path / "feats"),
                 "--out", str(tmp_path / "sel.jsonl")]) == 0
    rows = read_selection(tmp_path / "sel.jsonl")
    assert len(rows) == 3 and all(r.text in TEXTS and r.id in store.ids for r in rows)
    assert all(r.label_text == AGNEWS.choices[r.label] for r in rows)


def test_checkpoint_picks_one_alpha_of_m():
    assert FeatureConfig(base="a", finetuned="b", checkpoints=3, checkpoint=2).alphas == [2 / 3]
    assert FeatureConfig(base="a", finetuned="b", checkpoints=3).alphas == [1 / 3, 2 / 3, 1.0]
    for bad in (0, 4, True, "2"):
        with pytest.raises(ConfigError, match="checkpoint"):
            FeatureConfig(base="a", finetuned="b", checkpoints=3, checkpoint=bad)
