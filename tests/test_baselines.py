"""The target-matching baselines rds, dsir and gen_knn against by-definition loops, and RDS+'s pooled embedding.

Strategies get fake encoders (fixed vectors, or vectors seeded by a text's hash) so they run in
milliseconds; ``pooled_hidden_states`` is checked on tiny random models against a one-text loop.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections import Counter

import numpy as np
import pytest

from lm_eval_approx.errors import ConfigError, SelectionError
from lm_eval_approx.strategies import nearest
from lm_eval_approx.strategies.base import CandidatePool
from lm_eval_approx.strategies.dsir import DsirStrategy, bucket, log_importance_weights
from lm_eval_approx.strategies.gen_knn import GenKnnStrategy
from lm_eval_approx.strategies.rds import RdsStrategy
from lm_eval_approx.strategies.registry import strategy_registry

from _synthetic import hashed_encoder


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# Pool documents and targets as 2-D unit vectors at these angles (degrees), so cosines are cos(Δangle).
DOC_ANGLES = {"d0": 0, "d1": 10, "d2": 75, "d3": 90, "d4": 45, "d5": 5}
TARGET_ANGLES = {"tA": 0, "tB": 90}
EXACT = {"d0": [1.0, 0.0], "d3": [0.0, 1.0], "tA": [1.0, 0.0], "tB": [0.0, 1.0]}  # exact ties at cos = 1


def angle_encoder(texts):
    angles = {**DOC_ANGLES, **TARGET_ANGLES}
    return np.asarray([EXACT.get(t, unit(angles[t])) for t in texts], dtype=np.float32)


def angle_pool(**fields) -> CandidatePool:
    docs = list(DOC_ANGLES)
    values = dict(ids=docs, texts=docs, target_texts=list(TARGET_ANGLES), base_encoder=angle_encoder,
                  sentence_encoder=angle_encoder)
    return CandidatePool(**{**values, **fields})


def hashed_pool(n: int, targets: list[str], seed: int = 0) -> CandidatePool:
    texts = [f"doc {seed} {i}" for i in range(n)]
    return CandidatePool(ids=texts, texts=texts, target_texts=targets, base_encoder=hashed_encoder,
                         sentence_encoder=hashed_encoder)


def naive_round_robin(docs: np.ndarray, targets: np.ndarray, k: int) -> list[int]:
    """The definition: targets in turn, each the argmax cosine among documents not picked yet."""
    docs = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    targets = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    cos = docs.astype(np.float64) @ targets.astype(np.float64).T
    picks: list[int] = []
    while len(picks) < k:
        for t in range(len(targets)):
            if len(picks) == k:
                break
            free = [i for i in range(len(docs)) if i not in picks]
            picks.append(max(free, key=lambda i: (cos[i, t], -i)))
    return picks


def test_the_three_baselines_are_registered():
    names = set(strategy_registry().names())
    assert {"rds", "dsir", "gen_knn"} <= names
    for name, cls in (("rds", RdsStrategy), ("dsir", DsirStrategy), ("gen_knn", GenKnnStrategy)):
        assert strategy_registry().get(name).obj is cls and "\n" not in cls.description


# --- rds ----------------------------------------------------------------------------------------


def test_rds_round_robin_hand_checked():
    """tA ranks d0 d5 d1 d4 d2 d3, tB ranks d3 d2 d4 d1 d5 d0; they alternate, tA first."""
    sel = RdsStrategy().run(angle_pool(), 6)
    assert sel.indices.tolist() == [0, 3, 5, 2, 1, 4]
    assert np.allclose(sel.scores, [1, 1, math.cos(math.radians(5)), math.cos(math.radians(15)),
                                    math.cos(math.radians(10)), math.cos(math.radians(45))], atol=1e-6)
    assert sel.info["aggregate"] == "round_robin" and sel.info["targets"] == 2
    assert sel.info["max_picks_per_target"] == 3


def test_rds_max_and_mean_hand_checked():
    # max cosine: d0 = d3 = 1 (tie to the lower position), d5 .996, d1 .985, d2 .966, d4 .707
    assert RdsStrategy(aggregate="max").run(angle_pool(), 5).indices.tolist() == [0, 3, 5, 1, 2]
    # mean cosine: d4 .707, d2 .612, d1 .579, d5 .542, d0 = d3 = .5
    assert RdsStrategy(aggregate="mean").run(angle_pool(), 6).indices.tolist() == [4, 2, 1, 5, 0, 3]


def test_rds_embeds_raw_texts_with_the_base_encoder_only():
    seen = []

    def recording(texts):
        seen.append(list(texts))
        return angle_encoder(texts)

    def never(texts):
        raise AssertionError("rds must not use the sentence encoder")

    RdsStrategy().run(angle_pool(base_encoder=recording, sentence_encoder=never), 2)
    assert sorted(map(tuple, seen)) == sorted([tuple(DOC_ANGLES), tuple(TARGET_ANGLES)])


@pytest.mark.parametrize("strategy", [RdsStrategy, GenKnnStrategy])
@pytest.mark.parametrize("n,num_targets,k", [(30, 4, 30), (25, 7, 11), (12, 20, 9), (40, 1, 17)])
def test_round_robin_equals_the_naive_loop(strategy, n, num_targets, k):
    pool = hashed_pool(n, [f"target {j}" for j in range(num_targets)], seed=n)
    expected = naive_round_robin(hashed_encoder(pool.texts), hashed_encoder(pool.target_texts), k)
    assert strategy().run(pool, k).indices.tolist() == expected


def test_round_robin_blocks_and_refills_agree_with_the_naive_loop(monkeypatch):
    """Tiny blocks and no slack: near-identical targets use up each other's ranked prefixes."""
    monkeypatch.setattr(nearest, "BLOCK_ENTRIES", 7)
    monkeypatch.setattr(nearest, "PREFIX_SLACK", 0)
    rng = np.random.default_rng(1)
    docs = rng.standard_normal((50, 6)).astype(np.float32)
    base = rng.standard_normal(6)
    targets = (base + 0.01 * rng.standard_normal((6, 6))).astype(np.float32)
    picks, scores, owners = nearest.round_robin_nearest(nearest.embed(lambda t: docs, list("x" * 50), "d"),
                                                        nearest.embed(lambda t: targets, list("y" * 6), "t"), 40)
    assert picks.tolist() == naive_round_robin(docs, targets, 40)
    assert owners.tolist() == [i % 6 for i in range(40)]
    unit_docs = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    unit_targets = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    assert np.allclose(scores, (unit_docs[picks] * unit_targets[owners]).sum(axis=1), atol=1e-5)


def test_max_and_mean_cosines_by_blocks(monkeypatch):
    monkeypatch.setattr(nearest, "BLOCK_ENTRIES", 5)
    rng = np.random.default_rng(2)
    docs, targets = rng.standard_normal((9, 4)).astype(np.float32), rng.standard_normal((7, 4)).astype(np.float32)
    cos = docs.astype(np.float64) @ targets.astype(np.float64).T
    assert np.allclose(nearest.max_cosines(docs, targets), cos.max(axis=1), atol=1e-6)
    assert np.allclose(nearest.mean_cosines(docs, targets), cos.mean(axis=1), atol=1e-6)


def test_top_order_breaks_ties_to_the_lowest_position():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5])
    assert nearest.top_order(scores, 3).tolist() == [1, 3, 0]
    assert nearest.top_order(scores, 4).tolist() == [1, 3, 0, 2]
    assert nearest.top_order(scores, 6).tolist() == [1, 3, 0, 2, 5, 4]


def test_more_targets_than_picks_gives_the_first_targets_one_each():
    pool = hashed_pool(10, [f"t{j}" for j in range(8)])
    sel = GenKnnStrategy().run(pool, 3)
    assert sel.info["targets_with_picks"] == 3 and sel.info["max_picks_per_target"] == 1


# --- gen_knn ------------------------------------------------------------------------------------


def test_gen_knn_uses_the_sentence_encoder_and_is_deterministic():
    pool = angle_pool(base_encoder=None)
    first = GenKnnStrategy().run(pool, 4, seed=0)
    assert first.indices.tolist() == [0, 3, 5, 2]
    assert GenKnnStrategy().run(pool, 4, seed=9).indices.tolist() == first.indices.tolist()
    with pytest.raises(SelectionError, match="sentence_encoder"):
        GenKnnStrategy().run(angle_pool(sentence_encoder=None), 2)
    with pytest.raises(SelectionError, match="base_encoder"):
        RdsStrategy().run(angle_pool(base_encoder=None), 2)


# --- errors shared by rds and gen_knn -----------------------------------------------------------


@pytest.mark.parametrize("strategy", [RdsStrategy, GenKnnStrategy])
@pytest.mark.parametrize("encoder,match", [
    (lambda texts: np.zeros((len(texts) + 1, 3)), r"shape \(3, 3\) for 2 target texts"),
    (lambda texts: np.ones(len(texts)), "expected"),
    (lambda texts: np.full((len(texts), 2), np.nan), "NaN or inf"),
    (lambda texts: np.ones((len(texts), 2 if len(texts) == 6 else 3)), "one dimension"),
    (lambda texts: np.array([["a", "b"]] * len(texts)), "real numbers"),
])
def test_bad_encoder_output_is_a_clear_error(strategy, encoder, match):
    with pytest.raises(SelectionError, match=match):
        strategy().run(angle_pool(base_encoder=encoder, sentence_encoder=encoder), 2)


@pytest.mark.parametrize("strategy", [RdsStrategy, GenKnnStrategy, DsirStrategy])
@pytest.mark.parametrize("targets,match", [
    ([], "non-empty list"), ("one string", "non-empty list"), (["ok", 3], "strings only"), (["ok", None], "strings only"),
    (None, "lacks"),
])
def test_bad_target_texts_are_clear_errors(strategy, targets, match):
    with pytest.raises(SelectionError, match=match):
        strategy().run(angle_pool(target_texts=targets), 2)


def test_rds_bad_aggregate_is_a_config_error():
    with pytest.raises(ConfigError, match="round_robin, max, mean"):
        RdsStrategy(aggregate="min")


def test_a_pool_without_texts_is_a_clear_error():
    for strategy in (RdsStrategy, GenKnnStrategy, DsirStrategy):
        with pytest.raises(SelectionError, match="'texts'"):
            strategy().run(angle_pool(texts=None), 2)


# --- dsir ---------------------------------------------------------------------------------------

TARGETS = ["The match ended 2-1, a late goal!", "Goal after goal: the team won the match.",
           "A tense match; the keeper saved a penalty."]
RAW = ["Stocks fell as rates rose.", "The team won the match with a late goal.", "", "goal goal goal",
       "Rates, rates and more rates: the bank decided.", "The keeper saved it!", "A penalty. A goal. A win.",
       "Leaders met in Geneva.", "the the the the"]


def dsir_by_counters(texts: list[str], targets: list[str], buckets: int) -> list[float]:
    """The definition with Counters: hashed unigram+bigram counts, add-one smoothed distributions,
    w_i = Σ_b count_i(b) (log p_target(b) − log p_raw(b))."""
    def grams(text):
        words = re.findall(r"\w+|[^\w\s]+", text.lower())
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    def hashed(text):
        return Counter(int(hashlib.sha256(g.encode("utf-8")).hexdigest(), 16) % buckets for g in grams(text))

    target, raw = Counter(), Counter()
    for t in targets:
        target.update(hashed(t))
    for t in texts:
        raw.update(hashed(t))
    t_total, r_total = sum(target.values()), sum(raw.values())

    def log_ratio(b):
        return math.log((target[b] + 1) / (t_total + buckets)) - math.log((raw[b] + 1) / (r_total + buckets))

    return [sum(c * log_ratio(b) for b, c in hashed(t).items()) for t in texts]


@pytest.mark.parametrize("buckets", [10000, 7])
def test_dsir_weights_equal_the_counter_definition(buckets):
    weights, target_ngrams = log_importance_weights(RAW, TARGETS, buckets)
    assert np.allclose(weights, dsir_by_counters(RAW, TARGETS, buckets), atol=1e-9)
    assert target_ngrams == sum(len(re.findall(r"\w+|[^\w\s]+", t.lower())) * 2 - 1 for t in TARGETS)
    assert weights[2] == 0.0  # an empty text has no features


def test_dsir_topk_and_gumbel_picks_by_definition():
    pool = CandidatePool(ids=RAW, texts=RAW, target_texts=TARGETS)
    expected = np.asarray(dsir_by_counters(RAW, TARGETS, 10000))
    topk = DsirStrategy(sampling="topk").run(pool, 4)
    assert topk.indices.tolist() == sorted(range(len(RAW)), key=lambda i: (-expected[i], i))[:4]
    assert np.allclose(topk.scores, expected[topk.indices])
    keys = expected + np.random.default_rng(5).gumbel(size=len(RAW))
    sampled = DsirStrategy().run(pool, 4, seed=5)
    assert sampled.indices.tolist() == sorted(range(len(RAW)), key=lambda i: (-keys[i], i))[:4]
    assert sampled.indices.tolist() == DsirStrategy().run(pool, 4, seed=5).indices.tolist()
    assert sampled.info["sampling"] == "gumbel" and sampled.info["num_buckets"] == 10000


def test_dsir_gumbel_samples_in_proportion_to_exp_weight():
    """k = 1 from three documents: P(i) = exp(w_i) / Σ exp(w)."""
    texts = ["goal match", "match", "bank rates"]
    pool = CandidatePool(ids=texts, texts=texts, target_texts=["goal match goal", "match"])
    weights, _ = log_importance_weights(texts, pool.target_texts)
    expected = np.exp(weights) / np.exp(weights).sum()
    draws = np.bincount([DsirStrategy().run(pool, 1, seed=s).indices[0] for s in range(3000)], minlength=3)
    assert np.allclose(draws / 3000, expected, atol=0.03)


def test_dsir_hash_is_stable_and_not_pythons():
    assert bucket("the", 10000) == int(hashlib.sha256(b"the").hexdigest(), 16) % 10000 == 8288
    assert bucket("late goal", 10000) == 6325


@pytest.mark.parametrize("options,match", [
    ({"num_buckets": 0}, "num_buckets"), ({"num_buckets": 2.5}, "num_buckets"), ({"ngrams": 0}, "ngrams"),
    ({"sampling": "softmax"}, "gumbel, topk"),
])
def test_dsir_bad_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        DsirStrategy(**options)


def test_dsir_targets_without_words_are_a_clear_error():
    pool = CandidatePool(ids=RAW, texts=RAW, target_texts=["", "   "])
    with pytest.raises(SelectionError, match="no words"):
        DsirStrategy().run(pool, 2)


def test_dsir_longer_ngrams_option():
    weights, target_ngrams = log_importance_weights(["a b c"], ["a b c d"], 100, n=3)
    assert target_ngrams == 4 + 3 + 2 and weights.shape == (1,)


# --- pooled_hidden_states -----------------------------------------------------------------------

POOL_TEXTS = ["The team won the final match of the season.", "", "Stocks fell.",
              "Leaders met in Geneva to discuss the peace treaty, and then they met again and again.",
              "A new chip doubles the speed.", "x"]


def pooled_one_by_one(model, tokenizer, texts, max_length, add_bos_token):
    """The definition, one text at a time and no padding: Σ_j j·h_j / Σ_j j, L2-normalised."""
    import torch

    from lm_eval_approx.features.encoding import prefix_token_id, tok_encode

    rows = []
    for text in texts:
        ids = tok_encode(tokenizer, text, add_bos_token)[:max_length] or [prefix_token_id(tokenizer)]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].double()
        weights = torch.arange(1, len(ids) + 1, dtype=torch.float64)
        pooled = (weights[:, None] * hidden).sum(0) / weights.sum()
        rows.append((pooled / max(float(pooled.norm()), 1e-12)).numpy())  # a zero vector stays zero
    return np.asarray(rows)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("add_bos_token", [None, True])
def test_pooled_hidden_states_equal_the_one_text_loop(one_torch_thread, tiny_tokenizer, kind, side, add_bos_token):
    from conftest import build_tiny_model

    from lm_eval_approx.features.pooled import pooled_hidden_states

    model = build_tiny_model(kind, len(tiny_tokenizer))
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.padding_side = side
    got = pooled_hidden_states(model, tokenizer, POOL_TEXTS, batch_size=4, max_length=12, add_bos_token=add_bos_token)
    want = pooled_one_by_one(model, tokenizer, POOL_TEXTS, 12, add_bos_token)
    assert got.dtype == np.float32 and got.shape == (len(POOL_TEXTS), model.config.hidden_size)
    assert np.allclose(got, want, atol=1e-5)
    # the tiny Llama's token 0 (BOS = EOS = pad, the prefix of the empty text) embeds to zeros
    norms = np.linalg.norm(got, axis=1)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-5) and (norms > 0).sum() >= len(POOL_TEXTS) - 1


def test_pooled_hidden_states_without_a_pad_token(one_torch_thread, tiny_tokenizer):
    from conftest import build_tiny_model

    from lm_eval_approx.features.pooled import pooled_hidden_states

    model = build_tiny_model("llama", len(tiny_tokenizer))
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    got = pooled_hidden_states(model, tokenizer, POOL_TEXTS, batch_size=3, max_length=64)
    assert tokenizer.pad_token is None  # the caller's tokenizer is left as it was
    assert np.allclose(got, pooled_one_by_one(model, tokenizer, POOL_TEXTS, 64, None), atol=1e-5)
    assert pooled_hidden_states(model, tokenizer, []).shape == (0, model.config.hidden_size)
    with pytest.raises(ConfigError, match="batch_size"):
        pooled_hidden_states(model, tokenizer, ["a"], batch_size=0)
    with pytest.raises(ConfigError, match="texts"):
        pooled_hidden_states(model, tokenizer, ["a", None])
