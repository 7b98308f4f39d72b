"""Constrained SELECT (select_quota, select_likely): the engine's eligible/quota constraints pick
exactly what the greedy written from its definition picks under the same constraints, quotas are
computed as documented, and bad constraint inputs are named errors."""

from __future__ import annotations

import numpy as np
import pytest

from lm_eval_approx.errors import ConfigError, SelectionError
from lm_eval_approx.features.gradient_features import GradientFeatures
from lm_eval_approx.strategies import greedy
from lm_eval_approx.strategies.base import CandidatePool
from lm_eval_approx.strategies.constrained import SelectLikelyStrategy, SelectQuotaStrategy, class_quotas
from lm_eval_approx.strategies.registry import strategy_registry


def constrained_direct(g, t, k, allowed, groups=None, quotas=None) -> list[int]:
    """The definition: k times argmax over allowed, untaken rows of cos(s + g_i, t) in float64,
    a group closed once it holds its quota; stop when nothing is allowed."""
    g, t = np.asarray(g, dtype=np.float64), np.asarray(t, dtype=np.float64)
    s, picks, counts = np.zeros(g.shape[1]), [], {}
    for _ in range(k):
        best, best_score = None, -np.inf
        for i in range(len(g)):
            if i in picks or not allowed[i]:
                continue
            if groups is not None and counts.get(int(groups[i]), 0) >= quotas[int(groups[i])]:
                continue
            v = s + g[i]
            norm = np.linalg.norm(v) * np.linalg.norm(t)
            score = v @ t / norm if norm > 0 else 0.0
            if score > best_score:
                best, best_score = i, score
        if best is None:
            break
        picks.append(best)
        s = s + g[best]
        if groups is not None:
            counts[int(groups[best])] = counts.get(int(groups[best]), 0) + 1
    return picks


def _problem(n=400, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, d)) * 2
    labels = rng.integers(0, 4, n)
    g = (centres[labels] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    t = (3 * centres[0] + 0.5 * centres[1]).astype(np.float32)
    return g, t, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quota_constrained_greedy_equals_the_definition(seed):
    g, t, labels = _problem(seed=seed)
    quotas = np.array([5, 5, 4, 6])
    result = greedy.greedy_select(GradientFeatures(g, t), 20, groups=labels, quotas=quotas)
    assert result.indices.tolist() == constrained_direct(g, t, 20, np.ones(len(g), bool), labels, quotas)
    assert np.bincount(labels[result.indices], minlength=4).tolist() == quotas.tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_eligible_constrained_greedy_equals_the_definition(seed):
    g, t, _ = _problem(seed=seed)
    allowed = np.random.default_rng(seed).random(len(g)) < 0.3
    result = greedy.greedy_select(GradientFeatures(g, t), 25, eligible=allowed)
    assert result.indices.tolist() == constrained_direct(g, t, 25, allowed)
    assert allowed[result.indices].all()


def test_the_picks_stop_when_nothing_allowed_is_left():
    g, t, labels = _problem(n=60)
    allowed = np.zeros(60, bool)
    allowed[:3] = True
    result = greedy.greedy_select(GradientFeatures(g, t), 10, eligible=allowed)
    assert sorted(result.indices.tolist()) == [0, 1, 2] and result.stopped_early


@pytest.mark.parametrize("labels, k, shares, expected", [
    ([0] * 50 + [1] * 30 + [2] * 20, 10, "uniform", [4, 3, 3]),
    ([0] * 50 + [1] * 30 + [2] * 20, 10, "pool", [5, 3, 2]),
    ([0] * 50 + [1] * 2 + [2] * 48, 30, "uniform", [14, 2, 14]),   # class 1 has 2: its surplus moves
    ([0] * 3 + [1] * 2, 10, "uniform", [3, 2]),                    # fewer candidates than k
])
def test_class_quotas(labels, k, shares, expected):
    quotas = class_quotas(np.array(labels), 3 if max(labels) == 2 else 2, k, shares)
    assert quotas.tolist() == expected
    assert quotas.sum() == min(k, len(labels))


def test_strategies_run_through_the_registry_with_their_options():
    g, t, labels = _problem()
    loss = np.random.default_rng(4).random(len(g))
    pool = CandidatePool(ids=[str(i) for i in range(len(g))], labels=labels, num_classes=4,
                         loss_finetuned=loss, features=[GradientFeatures(g, t)])
    registry = strategy_registry()
    quota = registry.get("select_quota").obj().run(pool, 40)
    assert np.bincount(labels[quota.indices], minlength=4).tolist() == [10, 10, 10, 10]
    assert quota.info["quotas"] == "10 10 10 10"
    plain = registry.get("select").obj().run(pool, 40)
    assert np.bincount(labels[plain.indices], minlength=4).max() > 10  # the unconstrained greedy skews
    likely = SelectLikelyStrategy(keep=0.25).run(pool, 40)
    kept = set(np.argsort(loss, kind="stable")[:100].tolist())
    assert set(likely.indices.tolist()) <= kept
    assert likely.indices.tolist() == constrained_direct(g, t, 40, np.isin(np.arange(len(g)), list(kept)))
    assert SelectLikelyStrategy(keep=1.0).run(pool, 40).indices.tolist() == plain.indices.tolist()


def test_bad_constraints_are_named_errors():
    g, t, labels = _problem(n=50)
    feats = GradientFeatures(g, t)
    with pytest.raises(SelectionError, match="eligible"):
        greedy.greedy_select(feats, 5, eligible=np.ones(49, bool))
    with pytest.raises(SelectionError, match="go together"):
        greedy.greedy_select(feats, 5, groups=labels)
    with pytest.raises(SelectionError, match="groups must hold"):
        greedy.greedy_select(feats, 5, groups=labels, quotas=[1, 1])
    with pytest.raises(ConfigError, match="shares"):
        SelectQuotaStrategy(shares="skewed")
    with pytest.raises(ConfigError, match="keep"):
        SelectLikelyStrategy(keep=0)
    pool = CandidatePool(ids=[str(i) for i in range(50)], features=[feats])
    with pytest.raises(SelectionError, match="labels"):
        SelectQuotaStrategy().run(pool, 5)
