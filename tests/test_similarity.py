"""Dataset similarity: Sinkhorn agrees with a hand-written twin, overlaps are hand-checked, and the
offline MiniLM embeddings put paraphrases closer than unrelated text."""

from __future__ import annotations

import numpy as np
import pytest

from lm_eval_approx.data import similarity
from lm_eval_approx.errors import ConfigError


def plain_sinkhorn_cost(cost, reg, iters=1000):
    """Textbook Sinkhorn scaling with uniform masses (the slow twin)."""
    a = np.full(cost.shape[0], 1 / cost.shape[0])
    b = np.full(cost.shape[1], 1 / cost.shape[1])
    kernel = np.exp(-cost / reg)
    u = np.ones_like(a)
    for _ in range(iters):
        v = b / (kernel.T @ u)
        u = a / (kernel @ v)
    plan = u[:, None] * kernel * v[None, :]
    return float((plan * cost).sum())


def test_sinkhorn_matches_plain_twin():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((9, 5))
    ours = similarity.sinkhorn_distance(x, y, reg=0.1)
    assert ours == pytest.approx(plain_sinkhorn_cost(similarity.cosine_cost(x, y), 0.1), rel=1e-6)


def test_sinkhorn_orders_near_before_far_and_rejects_bad_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 8))
    near = x + 0.05 * rng.standard_normal(x.shape)
    far = rng.standard_normal((20, 8))
    assert similarity.sinkhorn_distance(x, near) < similarity.sinkhorn_distance(x, far)
    with pytest.raises(ConfigError, match="non-empty"):
        similarity.sinkhorn_distance(x[:0], far)
    with pytest.raises(ConfigError, match="reg"):
        similarity.sinkhorn_distance(x, far, reg=0.0)


def test_vocabulary_overlap_and_sources():
    jaccard, containment = similarity.vocabulary_overlap(["The cat sat", "a dog"], ["the Cat ran", "dog"])
    # selection {the, cat, sat, a, dog}; reference {the, cat, ran, dog}; shared {the, cat, dog}
    assert jaccard == pytest.approx(3 / 6) and containment == pytest.approx(3 / 4)
    assert similarity.source_fractions(["a", "b", "a", None]) == {"a": 0.5, "b": 0.25, "unknown": 0.25}
    report = similarity.dataset_similarity(["x y"], ["y z"], sources=["s"], embed=False)
    assert report.ot_distance is None and report.to_dict()["vocab_jaccard"] == pytest.approx(1 / 3)


def test_minilm_embeddings_offline():
    assert (similarity.embedding_model_dir() / "model.safetensors").is_file()
    emb = similarity.sentence_embeddings([
        "The football team won the championship final.",
        "The soccer club claimed the league title in the last match.",
        "Interest rates were raised by the central bank.",
    ])
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
    sports = ["A striker scored twice in the cup.", "The tennis star won in straight sets."]
    finance = ["Stocks slid after weak earnings.", "Bond yields rose on inflation data."]
    query = ["The goalkeeper saved a penalty in the derby."]
    assert similarity.dataset_similarity(query, sports).ot_distance < similarity.dataset_similarity(query, finance).ot_distance


def test_a_reference_set_is_embedded_once_per_run(monkeypatch):
    """Every leaderboard cell compares its selection with the same true documents: the second cell
    reuses their embeddings and gets the same distance; another reference set is embedded anew."""
    embedded: list[int] = []
    real = similarity.sentence_embeddings

    def counting(texts, batch_size=similarity.EMBED_BATCH):
        embedded.append(len(texts))
        return real(texts, batch_size)

    monkeypatch.setattr(similarity, "sentence_embeddings", counting)
    similarity._remembered_embeddings.cache_clear()
    truth = ["A striker scored twice in the cup.", "The tennis star won in straight sets.", "Rain fell."]
    first = similarity.dataset_similarity(["The goalkeeper saved a penalty."], truth).ot_distance
    again = similarity.dataset_similarity(["The goalkeeper saved a penalty."], truth).ot_distance
    assert again == first and embedded == [1, 3, 1]
    similarity.dataset_similarity(["Stocks slid."], truth[:2])
    assert embedded == [1, 3, 1, 1, 2]
    with pytest.raises(ValueError):
        similarity.reference_embeddings(truth)[0, 0] = 0.0  # shared between cells: read-only
