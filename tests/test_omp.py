"""select_omp agrees with a direct float64 non-negative OMP and recovers sparse non-negative targets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls

from lm_eval_approx.errors import SelectionError
from lm_eval_approx.strategies.omp import select_omp
from lm_eval_approx.features.gradient_features import GradientFeatures

from _synthetic import make_pool


def direct_omp(g, t, k):
    """The textbook loop: full correlations, argmax of the normalised one, NNLS on the chosen set."""
    g, t = np.asarray(g, dtype=np.float64), np.asarray(t, dtype=np.float64)
    r, chosen, w = t.copy(), [], np.zeros(0)
    for _ in range(k):
        corr = g @ r / np.linalg.norm(g, axis=1)
        corr[chosen] = -np.inf
        j = int(np.argmax(corr))
        if corr[j] <= 0:
            break
        chosen.append(j)
        w, _ = nnls(g[chosen].T, t)
        r = t - g[chosen].T @ w
    return chosen, w


def test_matches_direct_definition():
    rng = np.random.default_rng(0)
    g, t = rng.standard_normal((400, 30)).astype(np.float16), rng.standard_normal(30)
    ours = select_omp(GradientFeatures(g, t), 15, block_rows=37)
    picks, w = direct_omp(g, t, 15)
    keep = w > 0
    assert ours.indices.tolist() == np.asarray(picks)[keep].tolist()
    np.testing.assert_allclose(ours.weights, w[keep], rtol=1e-10)
    assert (ours.weights > 0).all()


def test_recovers_planted_non_negative_combination():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((2000, 200))
    hidden = rng.choice(2000, 10, replace=False)
    true_w = rng.uniform(0.5, 2.0, 10)
    t = true_w @ g[hidden]
    result = select_omp(GradientFeatures(g, t), 10)
    assert sorted(result.indices.tolist()) == sorted(hidden.tolist())
    order = {j: w for j, w in zip(hidden.tolist(), true_w)}
    np.testing.assert_allclose(result.weights, [order[j] for j in result.indices.tolist()], rtol=1e-8)
    assert result.residual_norm < 1e-8 * np.linalg.norm(t)


def test_stops_when_no_candidate_helps():
    g = np.array([[1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
    result = select_omp(GradientFeatures(g, np.array([1.0, 1.0])), 3)
    assert result.indices.tolist() == [0] and result.stopped_early


def test_strategy_weights_have_mean_one_and_report_nnls():
    pool = make_pool(80)
    from lm_eval_approx.strategies.registry import strategy_registry

    sel = strategy_registry().get("select_omp").obj().run(pool, 10, 0)
    assert sel.weights.mean() == pytest.approx(1.0)
    assert len(sel.info["nnls_weights"]) == len(sel.indices)


def test_k_out_of_range():
    with pytest.raises(SelectionError, match="out of range"):
        select_omp(GradientFeatures(np.ones((3, 2)), np.ones(2)), 4)
