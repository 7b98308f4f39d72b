"""The incremental greedy engine picks exactly what the direct float64 definition picks."""

from __future__ import annotations

import numpy as np
import pytest

from lm_eval_approx.strategies import greedy
from lm_eval_approx.errors import SelectionError
from lm_eval_approx.features.gradient_features import GradientFeatures

from _synthetic import direct_select


def clustered(n, d, clusters, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)) * 3
    rows = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, d))
    return rows.astype(np.float16), (centres[0] + centres[1]).astype(np.float32)


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_select_equals_direct_definition(kind):
    rng = np.random.default_rng(1)
    if kind == "random":
        g, t = rng.standard_normal((3000, 64)).astype(np.float16), rng.standard_normal(64).astype(np.float32)
    else:
        g, t = clustered(3000, 64, 12, 2)
    result = greedy.greedy_select(GradientFeatures(g, t), 60)
    assert result.indices.tolist() == direct_select(g, t, 60)


def test_float64_input_and_small_blocks_match_direct():
    rng = np.random.default_rng(3)
    g, t = rng.standard_normal((500, 40)), rng.standard_normal(40)
    result = greedy.greedy_select(GradientFeatures(g, t), 40, block_rows=7)
    assert result.indices.tolist() == direct_select(g, t, 40)


def test_factored_equals_direct_on_dense_rows():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((800, 3, 8)), rng.standard_normal((800, 3, 6))
    dense = np.einsum("nrp,nrq->npq", a, b).reshape(800, -1)
    t = rng.standard_normal(48)
    feats = GradientFeatures(dense, t, factors=(a, b))
    factored = greedy.greedy_select(feats, 50)
    assert factored.indices.tolist() == direct_select(dense, t, 50)
    assert factored.indices.tolist() == greedy.greedy_select(feats, 50, use_factors=False).indices.tolist()


def test_batched_resets_running_sum():
    rng = np.random.default_rng(5)
    g, t = rng.standard_normal((400, 24)).astype(np.float16), rng.standard_normal(24)
    result = greedy.greedy_select(GradientFeatures(g, t), 30, batch_size=7)
    assert result.indices.tolist() == direct_select(g, t, 30, batch_size=7)


@pytest.mark.parametrize("view", ["_DenseView", "_FactoredView"])
def test_batched_computes_no_gram_column_it_discards(monkeypatch, view):
    """A Gram column costs one pass over the features: none for the last pick of a batch (s resets)."""
    rng = np.random.default_rng(4)
    n, r, d1, d2 = 400, 2, 4, 4
    a, b = rng.standard_normal((n, r, d1)), rng.standard_normal((n, r, d2))
    g = np.einsum("nri,nrj->nij", a, b).reshape(n, d1 * d2).astype(np.float16)
    t = rng.standard_normal(d1 * d2).astype(np.float32)
    feats = GradientFeatures(g, t, factors=(a.astype(np.float32), b.astype(np.float32)))
    calls = []
    cls = getattr(greedy, view)
    original = cls.gram_column
    monkeypatch.setattr(cls, "gram_column", lambda self, j: calls.append(j) or original(self, j))
    result = greedy.greedy_select(feats, 10, batch_size=4, use_factors=view == "_FactoredView")
    assert result.indices.tolist() == direct_select(g, t, 10, batch_size=4)
    # picks 1..10 in batches of 4: columns for picks 1-3, 5-7 and 9; none for 4, 8 (batch ends) or 10 (last)
    assert calls == [int(result.indices[i]) for i in (0, 1, 2, 4, 5, 6, 8)]


def test_checkpoints_average_and_single_checkpoint_is_select():
    rng = np.random.default_rng(6)
    views = [(rng.standard_normal((300, 20)).astype(np.float16), rng.standard_normal(20)) for _ in range(3)]
    feats = [GradientFeatures(g, t, alpha=(m + 1) / 3) for m, (g, t) in enumerate(views)]
    assert greedy.greedy_select(feats, 25).indices.tolist() == direct_select(None, None, 25, views=views)
    assert greedy.greedy_select(feats[:1], 25).indices.tolist() == greedy.greedy_select(feats[0], 25).indices.tolist()


def test_duplicate_rows_tie_to_lowest_index():
    rng = np.random.default_rng(7)
    base = rng.standard_normal((50, 12))
    g = np.vstack([base, base])  # row i and row i + 50 are identical
    t = rng.standard_normal(12)
    picks = greedy.greedy_select(GradientFeatures(g, t), 100).indices.tolist()
    assert picks == direct_select(g, t, 100)
    assert all(picks.index(i) < picks.index(i + 50) for i in range(50))


def test_min_cosine_stops_early_and_scores_are_exact():
    rng = np.random.default_rng(8)
    g, t = rng.standard_normal((200, 16)), rng.standard_normal(16)
    full = greedy.greedy_select(GradientFeatures(g, t), 50)
    cut = 0.5 * (full.scores[5] + full.scores[6]) if full.scores[5] > full.scores[6] else full.scores[6] - 1
    stopped = greedy.greedy_select(GradientFeatures(g, t), 50, min_cosine=float(cut))
    assert stopped.stopped_early and stopped.indices.tolist() == full.indices[: len(stopped.indices)].tolist()
    s = g[full.indices[:3]].sum(axis=0) + g[full.indices[3]]
    assert full.scores[3] == pytest.approx(s @ t / np.linalg.norm(s) / np.linalg.norm(t), rel=1e-12)


@pytest.mark.parametrize("factored", [False, True])
def test_exact_refresh_path_stays_exact(monkeypatch, factored):
    monkeypatch.setattr(greedy, "MAX_RECHECK", 0)  # every pick takes the float64 refresh path
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((300, 2, 4)), rng.standard_normal((300, 2, 5))
    g = np.einsum("nrp,nrq->npq", a, b).reshape(300, -1) * 1e3 + 5e3  # nearly parallel rows
    t = rng.standard_normal(20)
    if factored:
        g = np.einsum("nrp,nrq->npq", a * 1e3, b).reshape(300, -1)
    feats = GradientFeatures(g, t, factors=(a * 1e3, b) if factored else None)
    result = greedy.greedy_select(feats, 40)
    assert result.refreshes > 0
    assert result.indices.tolist() == direct_select(g, t, 40)


def test_bad_arguments():
    g = GradientFeatures(np.ones((5, 3)), np.ones(3))
    with pytest.raises(SelectionError, match="out of range"):
        greedy.greedy_select(g, 6)
    with pytest.raises(SelectionError, match="batch_size"):
        greedy.greedy_select(g, 2, batch_size=0)
    with pytest.raises(SelectionError, match="at least one"):
        greedy.greedy_select([], 1)
