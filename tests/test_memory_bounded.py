"""Pseudo-labels and feature extraction stream the corpus in bounded chunks.

Memory is measured with tracemalloc (Python and numpy allocations; the store is a memmap and torch
tensors use their own allocator, both untraced): growing the corpus 4× may add only the per-document
outputs (labels, losses, log-probs, ids), a few hundred bytes each — not the token lists of every
document. Chunked runs equal one-chunk runs. benchmarks/load.py measures peak RSS at 20k and 200k.
"""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest
from conftest import build_tiny_model, save_tiny_model

from lm_eval_approx.features import build as features_module
from lm_eval_approx.features import losses as labels_module
from lm_eval_approx.data.corpus import Corpus
from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.config import FeatureConfig
from lm_eval_approx.features.build import build_feature_store
from lm_eval_approx.features.losses import example_losses
from lm_eval_approx.features.pseudo_labels import pseudo_label
from lm_eval_approx.features.store import FeatureStore
from _specs import AGNEWS, MSMARCO

WORDS = "the team won match stocks fell bank rates leaders met peace talks chip speed science planet".split()
CHUNK = 32
SMALL, LARGE = 64, 256
# Outputs kept per document: pseudo-labels ~30 B (label, loss, 4 log-probs), the feature path adds
# ids, labels and pending-row arrays (~300 B). Without streaming, each document's token lists cost
# several KB. Fixed slack covers allocator noise that does not depend on N.
LABEL_BYTES_PER_DOC = 256
FEATURE_BYTES_PER_DOC = 1024
SLACK_BYTES = 256 * 1024
F16 = {"rtol": 2e-3, "atol": 2e-4}


def _texts(n: int, seed: int = 0):
    """A generator of n short documents of random words (10–40 words)."""
    rng = random.Random(seed)
    return (" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40))) for _ in range(n))


def _peak_bytes(run) -> int:
    """Peak traced allocation of ``run()`` above what was allocated when it started."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return build_tiny_model("gpt2", len(tiny_tokenizer), seed=3)


@pytest.fixture(scope="module")
def tuned_gpt2(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tuned-gpt2"), "gpt2", seed=1)


def test_pseudo_label_memory_does_not_grow_with_the_corpus(model, tiny_tokenizer, one_torch_thread):
    def run(n):
        return lambda: pseudo_label(model, tiny_tokenizer, AGNEWS, _texts(n), batch_size=16, max_length=64,
                                    chunk_size=CHUNK)

    run(SMALL)()
    small, large = _peak_bytes(run(SMALL)), _peak_bytes(run(LARGE))
    assert large - small <= (LARGE - SMALL) * LABEL_BYTES_PER_DOC + SLACK_BYTES, (small, large)


def test_feature_path_memory_does_not_grow_with_the_corpus(tiny_gpt2, tuned_gpt2, tmp_path, monkeypatch,
                                                           one_torch_thread):
    monkeypatch.setattr(labels_module, "STREAM_CHUNK", CHUNK)
    monkeypatch.setattr(features_module, "STREAM_CHUNK", CHUNK)
    config = FeatureConfig(base=tiny_gpt2, finetuned=tuned_gpt2, task=AGNEWS.name, dim=64, batch_size=16,
                           max_length=64)

    def peak(n, name):
        texts = list(_texts(n, seed=n))
        corpus = Corpus(ids=[f"doc:{i}" for i in range(n)], texts=texts, labels=[None] * n, sources=["t"] * n)
        found = _peak_bytes(lambda: build_feature_store(config, corpus, None, tmp_path / name))
        assert FeatureStore.open(tmp_path / name).complete
        return found

    peak(SMALL, "warm-up")
    small, large = peak(SMALL, "small"), peak(LARGE, "large")
    assert large - small <= (LARGE - SMALL) * FEATURE_BYTES_PER_DOC + SLACK_BYTES, (small, large)


def test_chunked_runs_equal_one_chunk(model, tiny_tokenizer, tiny_gpt2, tuned_gpt2, tmp_path, monkeypatch,
                                      one_torch_thread):
    texts = list(_texts(11, seed=7))
    whole = pseudo_label(model, tiny_tokenizer, AGNEWS, texts, batch_size=4)
    streamed = pseudo_label(model, tiny_tokenizer, AGNEWS, iter(texts), batch_size=4, chunk_size=3)
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    np.testing.assert_allclose(streamed.logprobs, whole.logprobs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed.loss, whole.loss, rtol=1e-5, atol=1e-6)
    for spec, given in ((AGNEWS, whole.labels), (MSMARCO, None)):
        one = example_losses(model, tiny_tokenizer, spec, texts, given, batch_size=4)
        many = example_losses(model, tiny_tokenizer, spec, iter(texts), None if given is None else iter(given),
                              batch_size=4, chunk_size=2)
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-6)
    corpus = Corpus(ids=[f"doc:{i}" for i in range(len(texts))], texts=texts, labels=[None] * len(texts),
                    sources=["t"] * len(texts))
    config = FeatureConfig(base=tiny_gpt2, finetuned=tuned_gpt2, task=AGNEWS.name, dim=64, batch_size=4,
                           max_length=64)
    reference = build_feature_store(config, corpus, None, tmp_path / "whole")
    monkeypatch.setattr(labels_module, "STREAM_CHUNK", 3)
    monkeypatch.setattr(features_module, "STREAM_CHUNK", 3)
    chunked = build_feature_store(config, corpus, None, tmp_path / "chunked")
    np.testing.assert_array_equal(chunked.labels, reference.labels)
    for column in ("features", "loss", "sqnorm"):
        np.testing.assert_allclose(np.asarray(getattr(chunked, column), dtype=np.float32),
                                   np.asarray(getattr(reference, column), dtype=np.float32), **F16)


def test_streaming_inputs_are_checked(model, tiny_tokenizer):
    with pytest.raises(ConfigError, match="chunk_size"):
        pseudo_label(model, tiny_tokenizer, AGNEWS, ["a b"], chunk_size=0)
    with pytest.raises(ConfigError, match="labels"):
        example_losses(model, tiny_tokenizer, AGNEWS, iter(["a", "b", "c"]), iter([0, 1]), chunk_size=2)
    with pytest.raises(ConfigError, match="more than 2 labels"):
        example_losses(model, tiny_tokenizer, AGNEWS, iter(["a", "b"]), iter([0, 1, 2]))
    with pytest.raises(ConfigError, match="3 labels"):
        example_losses(model, tiny_tokenizer, AGNEWS, ["a", "b"], [0, 1, 2])
    assert pseudo_label(model, tiny_tokenizer, AGNEWS, iter([])).logprobs.shape == (0, AGNEWS.num_classes)
