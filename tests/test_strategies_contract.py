"""One table of cases driven through every registered strategy (built-in and third-party)."""

from __future__ import annotations

import numpy as np
import pytest

from lm_eval_approx.errors import ConfigError, SelectionError
from lm_eval_approx.strategies.registry import strategy_registry
from lm_eval_approx.strategies.base import FEATURES, LOSS_BASE, LOSS_FINETUNED

from _synthetic import make_pool

NAMES = strategy_registry().names()
N = 40


@pytest.fixture(autouse=True)
def _third_party_plugins_loaded(monkeypatch):
    """The table covers installed third-party strategies too, so plugins stay on here."""
    from lm_eval_approx.plugins.registry import reset_plugins

    monkeypatch.delenv("LM_EVAL_APPROX_LOAD_PLUGINS", raising=False)
    reset_plugins()
    yield
    reset_plugins()


def run(name, pool, k, seed=0, **options):
    return strategy_registry().get(name).obj(**options).run(pool, k, seed)


def check(sel, pool, k, cls):
    idx = sel.indices.tolist()
    assert len(set(idx)) == len(idx) and all(0 <= i < len(pool) for i in idx)
    assert len(idx) == k or (cls.allows_fewer and len(idx) < k)
    for arr in (sel.scores, sel.weights):
        assert arr is None or len(arr) == len(idx)


def test_builtins_are_registered():
    assert {"random", "topk", "topk_balanced", "likelihood_min", "likelihood_max", "likelihood_ratio",
            "select", "select_batched", "select_checkpoints", "select_omp"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [0, 1, 7, N])
def test_k_values(name, k):
    pool = make_pool(N)
    sel = run(name, pool, k)
    check(sel, pool, k, strategy_registry().get(name).obj)
    if k == N and not strategy_registry().get(name).obj.allows_fewer:
        assert sorted(sel.indices.tolist()) == list(range(N))


@pytest.mark.parametrize("name", NAMES)
def test_k_above_pool_is_an_error(name):
    with pytest.raises(SelectionError, match="out of range"):
        run(name, make_pool(N), N + 1)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_seed(name):
    pool = make_pool(N)
    assert run(name, pool, 10, seed=3).indices.tolist() == run(name, pool, 10, seed=3).indices.tolist()


@pytest.mark.parametrize("name", NAMES)
def test_duplicates_and_ties(name):
    pool = make_pool(N)
    half = N // 2
    for feats in pool.features:
        feats.matrix[half:] = feats.matrix[:half]
    pool.texts[half:] = pool.texts[:half]
    pool.loss_finetuned[half:] = pool.loss_finetuned[:half]
    pool.loss_base[half:] = pool.loss_base[:half]
    pool.labels[half:] = pool.labels[:half]
    sel = run(name, pool, 12)
    check(sel, pool, 12, strategy_registry().get(name).obj)
    if name not in ("random", "select_omp", "dsir"):  # random and dsir sample: chance breaks their ties
        picks = sel.indices.tolist()
        # ties go to the lowest id: a copy is never picked before its original
        assert all(picks.index(i - half) < picks.index(i) for i in picks if i >= half and (i - half) in picks)


@pytest.mark.parametrize("name", NAMES)
def test_one_class_only(name):
    pool = make_pool(N, labels=np.zeros(N, dtype=np.int64))
    check(run(name, pool, 15), pool, 15, strategy_registry().get(name).obj)


@pytest.mark.parametrize("name", NAMES)
def test_zero_target_is_a_clear_error(name):
    pool = make_pool(N, target=np.zeros(16, dtype=np.float32))
    cls = strategy_registry().get(name).obj
    if FEATURES in cls.requires:
        with pytest.raises(SelectionError, match="all zeros"):
            run(name, pool, 5)
    else:
        check(run(name, pool, 5), pool, 5, cls)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_inputs_are_clear_errors(name, bad):
    pool = make_pool(N)
    pool.features[0].matrix[3, 2] = bad
    pool.loss_finetuned[4] = bad
    pool.loss_base[5] = bad
    cls = strategy_registry().get(name).obj
    if cls.requires & {FEATURES, LOSS_FINETUNED, LOSS_BASE}:
        with pytest.raises(SelectionError, match="NaN or inf"):
            run(name, pool, 5)
    else:
        check(run(name, pool, 5), pool, 5, cls)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_a_config_error(name):
    with pytest.raises(ConfigError, match="accepted options"):
        strategy_registry().get(name).obj(no_such_option=1)


@pytest.mark.parametrize("name", ["topk", "select", "select_batched", "select_checkpoints", "select_omp"])
def test_min_cosine_allows_fewer_and_reports(name):
    pool = make_pool(N)
    sel = run(name, pool, N, min_cosine=0.3)
    assert len(sel.indices) < N and sel.info["stopped_early"] is True
    with pytest.raises(ConfigError, match="min_cosine"):
        run(name, pool, 3, min_cosine=2.0)


def test_select_checkpoints_uses_all_features_and_one_equals_select():
    pool = make_pool(N, checkpoints=3)
    assert run("select_checkpoints", pool, 10).info["checkpoints"] == [1 / 3, 2 / 3, 1.0]
    single = make_pool(N)
    assert run("select_checkpoints", single, 10).indices.tolist() == run("select", single, 10).indices.tolist()


def test_topk_balanced_quota_and_fill():
    labels = np.array([0] * 30 + [1] * 4 + [2] * 6)
    pool = make_pool(N, labels=labels)
    sel = run("topk_balanced", pool, 24)  # quota ceil(24/4) = 6; class 1 has 4, class 3 has none
    counts = np.bincount(labels[sel.indices], minlength=4)
    assert counts[1] == 4 and counts[2] == 6 and counts[0] == 14


def test_likelihood_rules():
    pool = make_pool(N)
    assert run("likelihood_min", pool, 5).indices.tolist() == np.argsort(pool.loss_finetuned)[:5].tolist()
    assert run("likelihood_max", pool, 5).indices.tolist() == np.argsort(-pool.loss_finetuned)[:5].tolist()
    gain = pool.loss_base - pool.loss_finetuned
    assert run("likelihood_ratio", pool, 5).indices.tolist() == np.argsort(-gain)[:5].tolist()


def test_select_batched_option_validation():
    with pytest.raises(ConfigError, match="batch_size"):
        strategy_registry().get("select_batched").obj(batch_size=0)


def test_planted_examples_select_beats_topk_beats_random():
    """t is the sum of 20 planted gradients among 3,000: greedy finds all of them, while one-shot
    topk is fooled by random rows that happen to align with t, and random finds almost none."""
    rng = np.random.default_rng(0)
    n, d, planted = 3000, 256, 20
    g = rng.standard_normal((n, d))
    hidden = rng.choice(n, planted, replace=False)
    t = g[hidden].sum(axis=0)
    pool = make_pool(matrix=g.astype(np.float16), target=t.astype(np.float32))
    recovered = {name: len(set(run(name, pool, planted).indices.tolist()) & set(hidden.tolist()))
                 for name in ("select", "topk", "random")}
    assert recovered["select"] == planted
    assert recovered["select"] > recovered["topk"] > recovered["random"]
